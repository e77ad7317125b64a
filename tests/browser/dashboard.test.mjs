// The dashboard in a real browser (Debian's Chromium driven by playwright-core) against a
// live `pifleet-controller demo` with three real agents. One demo and one browser for the
// whole file; the tests run in order and build on each other (the admin's password is
// changed by the first one). A screenshot of every page goes to screenshots/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import * as OTPAuth from 'otpauth';
import { startDemo, browser, sql } from './demo.mjs';

const PASSWORD = 'correct-horse-battery-staple-42';
const VIEWER_PASSWORD = 'viewer-quiet-lantern-77';
const SECOND_ADMIN_PASSWORD = 'second-admin-amber-kettle-58';
const XSS = '<img src=x onerror=alert(1)>';
const WAIT = 30_000;
const shots = join(import.meta.dirname, 'screenshots');

let demo;
let chrome;
let context;
let page;
/** Every dialog (alert, confirm) a page opened: there must be none. */
const dialogs = [];
let mfaSecret;

async function newPage(ctx) {
  const p = await ctx.newPage();
  p.setDefaultTimeout(WAIT);
  p.on('dialog', async (d) => {
    dialogs.push(d.message());
    await d.dismiss();
  });
  return p;
}

async function shot(p, name) {
  await p.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

const byId = (p, id) => p.getByTestId(id);

async function signIn(p, user, password) {
  await p.goto(`${demo.url}/login`);
  await byId(p, 'login-username').fill(user);
  await byId(p, 'login-password').fill(password);
  await byId(p, 'login-submit').click();
}

before(async () => {
  mkdirSync(shots, { recursive: true });
  demo = await startDemo(3);
  chrome = await browser();
  context = await chrome.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  page = await newPage(context);
});

after(async () => {
  await chrome?.close();
  await demo?.stop();
});

test('first sign-in: the one-time password must be changed, then the fleet shows', async () => {
  await signIn(page, 'admin', demo.password);
  await shot(page, 'login-first-password');
  await byId(page, 'first-password-current').fill(demo.password);
  await byId(page, 'first-password-new').fill(PASSWORD);
  await byId(page, 'first-password-repeat').fill(PASSWORD);
  await byId(page, 'first-password-submit').click();
  await byId(page, 'device-table').waitFor();
  assert.equal(await byId(page, 'page-heading').textContent(), 'Fleet');
});

test('the demo devices appear and their values change without reloading', async () => {
  const rows = byId(page, 'device-row');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="device-row"]').length === 3);
  const ids = await rows.evaluateAll((els) => els.map((e) => e.dataset.deviceId).sort());
  assert.deepEqual(ids, ['demo-pi-1', 'demo-pi-2', 'demo-pi-3']);
  await page.waitForFunction(
    () => document.querySelector('[data-testid="total-online"]')?.textContent?.includes('3'),
  );
  // Live: the CPU and temperature of a row change while the page stays as it is.
  await page.evaluate(() => {
    window.__notReloaded = true;
  });
  const row = page.locator('[data-testid="device-row"][data-device-id="demo-pi-1"]');
  await page.waitForFunction(
    () => !/—|^\s*$/.test(document.querySelector('[data-device-id="demo-pi-1"] [data-testid="cell-temp"]')?.textContent ?? ''),
  );
  const before = (await row.getByTestId('cell-cpu').textContent()) + (await row.getByTestId('cell-temp').textContent());
  await page.waitForFunction(
    (was) => {
      const r = document.querySelector('[data-device-id="demo-pi-1"]');
      const now =
        (r?.querySelector('[data-testid="cell-cpu"]')?.textContent ?? '') +
        (r?.querySelector('[data-testid="cell-temp"]')?.textContent ?? '');
      return now !== was;
    },
    before,
    { timeout: WAIT },
  );
  assert.equal(await page.evaluate(() => window.__notReloaded), true, 'the page was reloaded');
  await shot(page, 'fleet');
});

test('a device page shows history charts with data points', async () => {
  await page.locator('[data-device-id="demo-pi-1"]').getByTestId('device-link').click();
  await byId(page, 'inventory').waitFor();
  const chart = byId(page, 'chart-cpu');
  await page.waitForFunction(
    () => Number(document.querySelector('[data-testid="chart-cpu"]')?.dataset.points ?? 0) > 0,
  );
  // uPlot is loaded on demand, then draws into a canvas.
  await chart.locator('canvas').first().waitFor();
  assert.ok(Number(await byId(page, 'chart-temperature').getAttribute('data-points')) > 0);
  // The watchdog's section is there; the demo's units run steadily, so it has nothing to say.
  await byId(page, 'watchdog').getByTestId('empty').waitFor();
  await shot(page, 'device');
});

test('ping and a restart of the allowlisted unit run, and their results appear', async () => {
  const panel = byId(page, 'command-panel');
  await panel.waitFor();
  // Only what the device allows: its one unit, no reboot (not allowlisted by the demo).
  assert.equal(await byId(page, 'action-reboot').count(), 0);
  await byId(page, 'action-ping').click();
  await page.waitForSelector('[data-testid="command-row"][data-status="succeeded"]');
  const restart = page.locator('[data-testid="action-service-restart"][data-unit="demo-kiosk.service"]');
  await restart.click();
  const confirm = byId(page, 'confirm-submit');
  if (await confirm.isVisible().catch(() => false)) await confirm.click();
  try {
    await page.waitForFunction(
      () => document.querySelectorAll('[data-testid="command-row"][data-status="succeeded"]').length >= 2,
    );
  } finally {
    await shot(page, 'device-commands');
  }
  // The output of a command sent from this page opens by itself.
  await page.waitForFunction(() =>
    [...document.querySelectorAll('[data-testid="command-stdout"]')].some((e) =>
      e.textContent.includes('restart demo-kiosk.service: done'),
    ),
  );
});

test('a hostname with markup is shown as text and runs nothing', async () => {
  sql(demo.db, `UPDATE devices SET hostname = '${XSS}' WHERE id = 'demo-pi-3'`);
  await page.goto(`${demo.url}/devices/demo-pi-3`);
  await byId(page, 'inventory').waitFor();
  await page.waitForFunction((x) => document.body.innerText.includes(x), XSS);
  assert.equal(await page.locator('img[src="x"]').count(), 0, 'markup became an element');
  await page.goto(`${demo.url}/`);
  await page.waitForFunction((x) => document.querySelector('[data-testid="device-table"]')?.innerText.includes(x), XSS);
  assert.equal(await page.locator('img[src="x"]').count(), 0);
  assert.deepEqual(dialogs, [], 'a dialog opened');
});

test('a viewer sees no command controls, and the API refuses the command anyway', async () => {
  // Created by the admin through the Users page.
  await page.goto(`${demo.url}/users`);
  await byId(page, 'user-name').fill('vera');
  await byId(page, 'user-role').selectOption('viewer');
  await byId(page, 'user-password').fill(VIEWER_PASSWORD);
  await byId(page, 'user-create').click();
  await page.locator('[data-testid="user-row"][data-user="vera"]').waitFor();
  await shot(page, 'users');

  const viewerContext = await chrome.newContext({ ignoreHTTPSErrors: true });
  const v = await newPage(viewerContext);
  await signIn(v, 'vera', VIEWER_PASSWORD);
  const first = v.getByTestId('first-password-current');
  await Promise.race([first.waitFor(), v.getByTestId('device-table').waitFor()]);
  if (await first.isVisible()) {
    await first.fill(VIEWER_PASSWORD);
    await v.getByTestId('first-password-new').fill(`${VIEWER_PASSWORD}-x`);
    await v.getByTestId('first-password-repeat').fill(`${VIEWER_PASSWORD}-x`);
    await v.getByTestId('first-password-submit').click();
  }
  await v.getByTestId('device-table').waitFor();
  await v.goto(`${demo.url}/devices/demo-pi-1`);
  await v.getByTestId('inventory').waitFor();
  assert.equal(await v.getByTestId('command-panel').count(), 0, 'viewer sees a command panel');
  assert.equal(await v.getByTestId('action-ping').count(), 0);
  assert.equal(await v.getByTestId('nav-users').count(), 0);
  // The API, asked directly from the viewer's browser with a fresh viewer token.
  const status = await v.evaluate(async (password) => {
    const login = await fetch('/api/v1/auth/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'vera', password }),
    });
    const { access_token } = await login.json();
    const r = await fetch('/api/v1/commands', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${access_token}` },
      body: JSON.stringify({ devices: ['demo-pi-1'], action: { kind: 'ping' } }),
    });
    return r.status;
  }, `${VIEWER_PASSWORD}-x`);
  assert.equal(status, 403);
  await viewerContext.close();
});

test('a whole-fleet command waits until a second admin approves it on the Approvals page', async () => {
  // A second admin, created on the Users page.
  await page.goto(`${demo.url}/users`);
  await byId(page, 'user-name').fill('alma');
  await byId(page, 'user-role').selectOption('admin');
  await byId(page, 'user-password').fill(SECOND_ADMIN_PASSWORD);
  await byId(page, 'user-create').click();
  await page.locator('[data-testid="user-row"][data-user="alma"]').waitFor();

  // The first admin pings every demo device: the whole fleet, so it is held, not sent.
  const held = await page.evaluate(async (password) => {
    const login = await fetch('/api/v1/auth/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'admin', password }),
    });
    const { access_token } = await login.json();
    const r = await fetch('/api/v1/commands', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${access_token}` },
      body: JSON.stringify({ selector: { demo: 'true' }, action: { kind: 'ping' } }),
    });
    return { status: r.status, body: await r.json() };
  }, PASSWORD);
  assert.equal(held.status, 202);
  assert.deepEqual(held.body.commands, []);
  assert.equal(held.body.approval.status, 'pending');
  const id = held.body.approval.id;

  // The one who asked cannot approve it: the controller refuses, and it stays pending.
  await page.goto(`${demo.url}/approvals`);
  const mine = page.locator(`[data-testid="approval-row"][data-approval-id="${id}"]`);
  await mine.waitFor();
  await mine.getByTestId('approval-approve').click();
  await byId(page, 'confirm-submit').click();
  await page.getByRole('alert').filter({ hasText: 'own request' }).waitFor();
  await page.keyboard.press('Escape');
  assert.equal(await mine.getAttribute('data-status'), 'pending');

  // The second admin approves it; the pings go to every demo device.
  const ctx = await chrome.newContext({ ignoreHTTPSErrors: true });
  const a = await newPage(ctx);
  await signIn(a, 'alma', SECOND_ADMIN_PASSWORD);
  const first = a.getByTestId('first-password-current');
  await Promise.race([first.waitFor(), a.getByTestId('device-table').waitFor()]);
  if (await first.isVisible()) {
    await first.fill(SECOND_ADMIN_PASSWORD);
    await a.getByTestId('first-password-new').fill(`${SECOND_ADMIN_PASSWORD}-x`);
    await a.getByTestId('first-password-repeat').fill(`${SECOND_ADMIN_PASSWORD}-x`);
    await a.getByTestId('first-password-submit').click();
  }
  await a.getByTestId('device-table').waitFor();
  await a.getByTestId('nav-approvals').click();
  const row = a.locator(`[data-testid="approval-row"][data-approval-id="${id}"]`);
  await row.getByTestId('approval-approve').click();
  await a.getByTestId('confirm-submit').click();
  await a.locator(`[data-testid="approval-row"][data-approval-id="${id}"][data-status="done"]`).waitFor();
  await shot(a, 'approvals');
  await ctx.close();
});

test('set up MFA, sign out, sign in again with a TOTP code', async () => {
  await page.goto(`${demo.url}/profile`);
  await byId(page, 'mfa-start').click();
  await byId(page, 'mfa-qr').waitFor();
  mfaSecret = (await byId(page, 'mfa-secret').textContent()).replace(/\s+/g, '');
  const totp = new OTPAuth.TOTP({ secret: OTPAuth.Secret.fromBase32(mfaSecret), digits: 6, period: 30 });
  await shot(page, 'profile-mfa');
  await byId(page, 'mfa-confirm-code').fill(totp.generate());
  await byId(page, 'mfa-confirm').click();
  await byId(page, 'recovery-codes').waitFor();
  await byId(page, 'mfa-done').click();
  await byId(page, 'sign-out').click();
  await byId(page, 'login-form').waitFor();

  await byId(page, 'login-username').fill('admin');
  await byId(page, 'login-password').fill(PASSWORD);
  await byId(page, 'login-submit').click();
  await byId(page, 'mfa-code').waitFor();
  await shot(page, 'login-mfa');
  // A code of the next step: the one used to confirm may not be replayed.
  const next = totp.generate({ timestamp: Date.now() + 30_000 });
  await byId(page, 'mfa-code').fill(next);
  await byId(page, 'mfa-submit').click();
  await byId(page, 'device-table').waitFor();
});

test('a provisioning token for an SD-card image is made on the Enrollment page', async () => {
  await page.goto(`${demo.url}/enrollment`);
  await byId(page, 'token-uses').fill('25');
  await byId(page, 'token-create').click();
  const command = await byId(page, 'enroll-command').textContent();
  assert.ok(command.includes('pifleet-agent enroll') && !command.includes('--device-id'), command);
  await page.waitForFunction(() =>
    [...document.querySelectorAll('[data-testid="token-uses-count"]')].some((e) =>
      e.textContent.includes('0 of 25 devices'),
    ),
  );
  const rows = sql(demo.db, 'SELECT max_uses, uses FROM enrollment_tokens WHERE max_uses IS NOT NULL');
  assert.match(rows, /25\|0/);
  // Many devices and one fixed id do not go together: refused before anything is sent.
  await page.getByRole('button', { name: 'Done' }).click();
  await byId(page, 'token-name').fill('lobby-kiosk-1');
  await byId(page, 'token-uses').fill('3');
  await byId(page, 'token-create').click();
  await page.getByRole('alert').filter({ hasText: 'cannot name one device id' }).waitFor();
});

test('devices that wait for approval are accepted or rejected on the Enrollment page', async () => {
  await page.goto(`${demo.url}/enrollment`);
  await byId(page, 'token-uses').fill('5');
  await byId(page, 'token-approval').check();
  await byId(page, 'token-create').click();
  await byId(page, 'enroll-command').waitFor();
  const token = sql(demo.db, 'SELECT id FROM enrollment_tokens WHERE require_approval = 1').trim();
  assert.match(token, /^[0-9a-f]{12}$/);
  // Two devices asked (as the enrollment endpoint records them).
  const now = Date.now();
  for (const [id, device, key] of [
    ['00000000000000a1', 'raspberrypi', 'a'.repeat(64)],
    ['00000000000000b2', 'raspberrypi-0000000b', 'b'.repeat(64)],
  ]) {
    sql(
      demo.db,
      `INSERT INTO enrollment_requests (id, token_id, device_id, key_fingerprint, source, created_at, last_seen_at, status) VALUES ('${id}', '${token}', '${device}', '${key}', '192.0.2.7', ${now}, ${now}, 'pending')`,
    );
  }
  await page.reload();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="request-row"]').length === 2);
  await shot(page, 'enrollment-requests');
  await page.locator('[data-device-id="raspberrypi"]').getByTestId('request-accept').click();
  await page.locator('[data-device-id="raspberrypi"][data-status="accepted"]').waitFor();
  await page.locator('[data-device-id="raspberrypi-0000000b"]').getByTestId('request-reject').click();
  await page.waitForFunction(() => !document.querySelector('[data-device-id="raspberrypi-0000000b"]'));
  const decided = sql(demo.db, 'SELECT device_id, status, decided_by FROM enrollment_requests ORDER BY id');
  assert.match(decided, /raspberrypi\|accepted\|user:admin/);
  assert.match(decided, /raspberrypi-0000000b\|rejected\|user:admin/);
});

test('every other page renders (screenshots for the docs)', async () => {
  for (const [path, name] of [
    ['/commands', 'commands'],
    ['/enrollment', 'enrollment'],
    ['/audit', 'audit'],
  ]) {
    await page.goto(`${demo.url}${path}`);
    await byId(page, 'page-heading').waitFor();
    await page.waitForFunction(() => !document.querySelector('[data-testid="loading"]'));
    assert.equal(await byId(page, 'error').count(), 0, `${path} shows an error`);
    await shot(page, name);
  }
  assert.equal(await byId(page, 'audit-verify').getAttribute('data-intact'), 'true');
  // The fleet-wide history filtered by action: the restart, not the pings.
  await page.goto(`${demo.url}/commands`);
  await byId(page, 'commands-filter-action').selectOption('service');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('[data-testid="command-row"]')];
    return rows.length === 1 && rows[0].textContent.includes('restart');
  });
  // Phone width: the navigation folds into a menu.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${demo.url}/`);
  await byId(page, 'menu-button').waitFor();
  await byId(page, 'device-row').first().waitFor();
  await shot(page, 'fleet-phone');
  assert.deepEqual(dialogs, []);
});
