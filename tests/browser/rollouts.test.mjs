// Releases and rollouts in the dashboard, in Debian's Chromium against a live
// `pifleet-controller demo` with two real agents. Their agent.toml allowlists no app, so a
// rollout to them is refused by the plan (they report no apps) or, once the test writes an
// allowlisted app into the database as their report, by the agent itself; a device
// inserted into the database with no agent behind it stays queued. One demo and one
// browser for the file; the tests run in order and build on each other.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDemo, browser, sql } from './demo.mjs';

const PASSWORD = 'rollout-walnut-harbour-93';
const VIEWER_PASSWORD = 'viewer-pebble-orchard-41';
const SECOND_ADMIN_PASSWORD = 'second-admin-cobalt-lagoon-26';
const WAIT = 30_000;
const shots = join(import.meta.dirname, 'screenshots');
/** The apps an agent would report for an allowlisted `web` app with nothing installed. */
const WEB_APP = JSON.stringify([{ app: 'web', unit: 'web.service', current: null, current_dir: null, kept: [] }]);

let demo;
let chrome;
let context;
let page;
let releaseId;
/** Every dialog (alert, confirm) a page opened: there must be none. */
const dialogs = [];

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

/** Signs in, changing the one-time password when asked to. */
async function signIn(p, user, password, next) {
  await p.goto(`${demo.url}/login`);
  await byId(p, 'login-username').fill(user);
  await byId(p, 'login-password').fill(password);
  await byId(p, 'login-submit').click();
  const first = byId(p, 'first-password-current');
  await Promise.race([first.waitFor(), byId(p, 'device-table').waitFor()]);
  if (await first.isVisible()) {
    await first.fill(password);
    await byId(p, 'first-password-new').fill(next);
    await byId(p, 'first-password-repeat').fill(next);
    await byId(p, 'first-password-submit').click();
  }
  await byId(p, 'device-table').waitFor();
}

/** A user made by the admin on the Users page, signed in in a context of its own. */
async function otherUser(name, role, password) {
  await page.goto(`${demo.url}/users`);
  await byId(page, 'user-name').fill(name);
  await byId(page, 'user-role').selectOption(role);
  await byId(page, 'user-password').fill(password);
  await byId(page, 'user-create').click();
  await page.locator(`[data-testid="user-row"][data-user="${name}"]`).waitFor();
  const ctx = await chrome.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const p = await newPage(ctx);
  await signIn(p, name, password, `${password}-x`);
  return { ctx, p };
}

/** A small .tar.gz of an app. */
function archive() {
  const dir = mkdtempSync(join(tmpdir(), 'pifleet-release-'));
  try {
    mkdirSync(join(dir, 'app'));
    writeFileSync(join(dir, 'app', 'index.html'), '<h1>web 1.0.0</h1>\n');
    writeFileSync(join(dir, 'app', 'run.sh'), '#!/bin/sh\nexec busybox httpd -f -p 8080\n', { mode: 0o755 });
    execFileSync('tar', ['-czf', join(dir, 'web.tar.gz'), '-C', join(dir, 'app'), 'index.html', 'run.sh']);
    return readFileSync(join(dir, 'web.tar.gz'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The rollout page's status badge (in the heading's subtitle). */
const status = (p) => p.locator('.page-subtitle [data-testid="rollout-status"]');

async function waitStatus(p, want) {
  await p.locator(`.page-subtitle [data-testid="rollout-status"][data-status="${want}"]`).waitFor();
}

/** Fills the creation form for device ids (the release is already chosen). */
async function target(p, ids) {
  await byId(p, 'rollout-target-devices').check();
  await byId(p, 'rollout-target').fill(ids);
}

before(async () => {
  mkdirSync(shots, { recursive: true });
  demo = await startDemo(2);
  chrome = await browser();
  context = await chrome.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  page = await newPage(context);
  await signIn(page, 'admin', demo.password, PASSWORD);
});

after(async () => {
  await chrome?.close();
  await demo?.stop();
});

test('an archive uploaded on the Releases page becomes a signed release', async () => {
  await byId(page, 'nav-releases').click();
  await byId(page, 'empty').waitFor();
  await byId(page, 'release-file').setInputFiles({
    name: 'web-1.0.0.tar.gz',
    mimeType: 'application/gzip',
    buffer: archive(),
  });
  await byId(page, 'release-app').fill('web');
  await byId(page, 'release-version').fill('1.0.0');
  await byId(page, 'release-upload-submit').click();
  await byId(page, 'release-detail').waitFor();
  assert.equal(await byId(page, 'page-heading').textContent(), 'web#1');
  releaseId = Number(new URL(page.url()).pathname.split('/').pop());
  assert.ok(releaseId > 0);
  assert.match(await byId(page, 'release-manifest').textContent(), /[0-9a-f]{64}/);
  assert.match(await byId(page, 'release-key').textContent(), /[0-9a-f]{8,}/);
  await shot(page, 'release');
  await byId(page, 'nav-releases').click();
  const row = page.locator(`[data-testid="release-row"][data-release-id="${releaseId}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), /1\.0\.0/);
  await shot(page, 'releases');
});

test('the preview names the devices that cannot take the release, and why', async () => {
  await page.locator(`[data-testid="release-row"][data-release-id="${releaseId}"]`).getByTestId('release-rollout').click();
  await byId(page, 'rollout-form').waitFor();
  // Prefilled with the release it was opened from.
  assert.equal(await byId(page, 'rollout-release').inputValue(), String(releaseId));
  await target(page, 'demo-pi-1, demo-pi-2');
  await byId(page, 'rollout-preview').click();
  const plan = byId(page, 'rollout-plan');
  await plan.waitFor();
  assert.equal(await plan.getAttribute('data-count'), '0');
  assert.equal(await page.locator('[data-testid="plan-row"][data-compatible="false"]').count(), 2);
  assert.match(await byId(page, 'plan-reason').first().textContent(), /does not allowlist the app \(\[apps\.web\]\)/);
  await shot(page, 'rollout-preview');
  // Creating it anyway: the controller refuses, and its reason shows.
  await byId(page, 'rollout-create').click();
  const error = byId(page, 'rollout-form-error');
  await error.waitFor();
  assert.match(await error.textContent(), /none of the 2 targeted devices can take release 1 of web/);
  // A setting the form can check itself.
  await byId(page, 'rollout-batches').fill('10, 50');
  await byId(page, 'rollout-preview').click();
  await page.waitForFunction(() =>
    document.querySelector('[data-testid="rollout-form-error"]')?.textContent?.startsWith('Batches:'),
  );
});

test('a rollout to a device that never answers stays queued; pause, resume and abort change it', async () => {
  // A device enrolled earlier whose agent is off, but which reported an allowlisted `web`.
  const now = Date.now();
  sql(
    demo.db,
    `INSERT INTO devices (id, labels, enrolled_at, hostname, arch, apps, apps_at)
     VALUES ('shelf-pi', '{"demo":"true","site":"shelf"}', ${now}, 'shelf', 'x86_64', '${WEB_APP}', ${now})`,
  );
  await page.goto(`${demo.url}/rollouts`);
  await byId(page, 'rollout-new').click();
  await byId(page, 'rollout-form').waitFor();
  await byId(page, 'rollout-release').selectOption(String(releaseId));
  await target(page, 'shelf-pi demo-pi-1');
  await byId(page, 'rollout-bake').fill('10m');
  await byId(page, 'rollout-preview').click();
  await page.locator('[data-testid="rollout-plan"][data-count="1"]').waitFor();
  await page.locator('[data-testid="plan-row"][data-device-id="shelf-pi"][data-compatible="true"]').waitFor();
  await byId(page, 'rollout-create').click();

  // The rollout page: running, its canary batch holds the one device, which waits for it.
  await byId(page, 'rollout-summary').waitFor();
  await waitStatus(page, 'running');
  const rolloutId = Number(new URL(page.url()).pathname.split('/').pop());
  assert.equal(await byId(page, 'page-heading').textContent(), `Rollout #${rolloutId}`);
  assert.match(await byId(page, 'rollout-current-batch').textContent(), /batch 1 \(canary\)/);
  const canary = page.locator('[data-testid="batch-row"][data-batch="0"]');
  await page.waitForFunction(() =>
    document.querySelector('[data-testid="batch-row"][data-batch="0"]')?.textContent?.includes('1 queued'),
  );
  assert.match(await canary.textContent(), /1 device/);
  await page.locator('[data-testid="rollout-device-row"][data-device-id="shelf-pi"][data-state="queued"]').waitFor();
  const incompatible = page.locator('[data-testid="rollout-device-row"][data-device-id="demo-pi-1"]');
  assert.equal(await incompatible.getAttribute('data-state'), 'incompatible');
  assert.match(await incompatible.textContent(), /does not allowlist the app/);
  assert.ok((await byId(page, 'rollout-event').count()) >= 1);
  await shot(page, 'rollout-running');

  await byId(page, 'rollout-pause').click();
  await waitStatus(page, 'paused');
  assert.equal(await byId(page, 'rollout-pause-cause').textContent(), 'Paused by an operator.');
  assert.equal(await byId(page, 'rollout-pause').count(), 0);
  await byId(page, 'rollout-resume').click();
  await waitStatus(page, 'running');

  await byId(page, 'rollout-abort').click();
  await byId(page, 'rollout-abort-revert').check();
  await byId(page, 'confirm-submit').click();
  await waitStatus(page, 'aborted');
  // It was never sent anything, so there is nothing to revert: it stays as it was.
  await page.locator('[data-testid="rollout-device-row"][data-device-id="shelf-pi"][data-state="untouched"]').waitFor();
  assert.equal(await byId(page, 'rollout-abort').count(), 0, 'an aborted rollout offers abort');
  assert.equal(await byId(page, 'rollout-resume').count(), 0);
  await page.waitForFunction(() =>
    [...document.querySelectorAll('[data-testid="rollout-event"]')].some((e) => /abort/i.test(e.textContent)),
  );
  await shot(page, 'rollout-aborted');

  // The list, filtered by status, and the device's own page.
  await byId(page, 'nav-rollouts').click();
  await byId(page, 'rollouts-filter-status').selectOption('running');
  await byId(page, 'empty').waitFor();
  await byId(page, 'rollouts-filter-status').selectOption('aborted');
  const row = page.locator(`[data-testid="rollout-row"][data-rollout-id="${rolloutId}"][data-status="aborted"]`);
  await row.waitFor();
  assert.match(await row.getByTestId('rollout-batch').textContent(), /batch 1/);
  await page.goto(`${demo.url}/devices/shelf-pi`);
  await byId(page, 'device-apps').waitFor();
  await page.locator('[data-testid="device-app-row"][data-app="web"]').waitFor();
  const mine = page.locator(`[data-testid="device-rollout-row"][data-rollout-id="${rolloutId}"]`);
  await mine.waitFor();
  assert.match(await mine.textContent(), /web#1/);
  assert.match(await mine.textContent(), /aborted/);
  assert.equal(await mine.getAttribute('data-state'), 'untouched');
  await shot(page, 'device-apps');
});

test('a device that refuses the release fails the canary, and the rollout pauses itself', async () => {
  // demo-pi-1's agent now seems to allowlist `web`; its real agent.toml does not.
  sql(demo.db, `UPDATE devices SET apps = '${WEB_APP}', apps_at = ${Date.now()} WHERE id = 'demo-pi-1'`);
  await page.goto(`${demo.url}/rollouts/new?release=${releaseId}`);
  await byId(page, 'rollout-form').waitFor();
  await page.waitForFunction(
    (id) => document.querySelector('[data-testid="rollout-release"]')?.value === String(id),
    releaseId,
  );
  await target(page, 'demo-pi-1');
  await byId(page, 'rollout-create').click();
  await byId(page, 'rollout-summary').waitFor();
  const device = page.locator('[data-testid="rollout-device-row"][data-device-id="demo-pi-1"]');
  await page.locator('[data-testid="rollout-device-row"][data-device-id="demo-pi-1"][data-state="failed"]').waitFor();
  assert.match(await device.getByTestId('rollout-device-reason').textContent(), /refused by the device/);
  await waitStatus(page, 'paused');
  assert.equal(await byId(page, 'rollout-pause-cause').getAttribute('data-cause'), 'batch_failed');
  // A refusal comes with no journal; one that failed its health gate brings the unit's last
  // lines, which the page folds under the reason (written here as the runner would).
  const rolloutId = Number(new URL(page.url()).pathname.split('/').pop());
  sql(
    demo.db,
    `UPDATE rollout_devices SET journal = 'web[812]: bind 0.0.0.0:8080: address in use'
     WHERE rollout_id = ${rolloutId} AND device_id = 'demo-pi-1'`,
  );
  const journal = device.getByTestId('journal-tail');
  await journal.waitFor();
  await journal.locator('summary').click();
  await journal.getByText('address in use').waitFor();
  await shot(page, 'rollout-failed');
  // Resuming after a health pause asks first; abort instead, without revert.
  await byId(page, 'rollout-resume').click();
  await byId(page, 'rollout-resume-dialog').waitFor();
  await page.keyboard.press('Escape');
  await byId(page, 'rollout-abort').click();
  await byId(page, 'confirm-submit').click();
  await waitStatus(page, 'aborted');
  // The device's page tells the same story.
  await page.goto(`${demo.url}/devices/demo-pi-1`);
  const mine = page.locator(`[data-testid="device-rollout-row"][data-rollout-id="${rolloutId}"][data-state="failed"]`);
  await mine.waitFor();
  assert.match(await mine.getByTestId('device-rollout-reason').textContent(), /refused by the device/);
  await mine.getByTestId('journal-tail').waitFor();
});

test('a viewer sees no actions; a second admin approves; a release in use cannot be deleted', async () => {
  const viewer = await otherUser('vera', 'viewer', VIEWER_PASSWORD);
  const v = viewer.p;
  await v.getByTestId('nav-rollouts').click();
  await v.getByTestId('rollout-table').waitFor();
  assert.equal(await v.getByTestId('rollout-new').count(), 0);
  await v.getByTestId('rollout-link').first().click();
  await v.getByTestId('rollout-summary').waitFor();
  assert.equal(await v.locator('[data-testid="rollout-actions"] button').count(), 0);
  await v.getByTestId('nav-releases').click();
  await v.getByTestId('release-table').waitFor();
  assert.equal(await v.getByTestId('release-upload').count(), 0);
  assert.equal(await v.getByTestId('release-rollout').count(), 0);
  await v.getByTestId('release-link').first().click();
  await v.getByTestId('release-detail').waitFor();
  assert.equal(await v.getByTestId('release-delete').count(), 0);
  await viewer.ctx.close();

  // The whole fleet (every device has demo=true): it waits for a second admin. Only
  // shelf-pi can take it, and it never answers, so the rollout keeps running.
  sql(demo.db, `UPDATE devices SET apps = '[]' WHERE id = 'demo-pi-1'`);
  const alma = await otherUser('alma', 'admin', SECOND_ADMIN_PASSWORD);
  await page.goto(`${demo.url}/rollouts/new?release=${releaseId}`);
  await byId(page, 'rollout-form').waitFor();
  await page.waitForFunction(
    (id) => document.querySelector('[data-testid="rollout-release"]')?.value === String(id),
    releaseId,
  );
  await byId(page, 'rollout-target').fill('demo=true');
  await byId(page, 'rollout-create').click();
  await byId(page, 'rollout-summary').waitFor();
  await waitStatus(page, 'awaiting_approval');
  await byId(page, 'rollout-own-request').waitFor();
  assert.equal(await byId(page, 'rollout-approve').count(), 0, 'the requester is offered approval');
  const url = page.url();

  const a = alma.p;
  await a.goto(url);
  await a.getByTestId('rollout-approve').click();
  await a.getByTestId('confirm-submit').click();
  await waitStatus(a, 'running');
  await shot(a, 'rollout-approved');
  await alma.ctx.close();
  await page.reload();
  await waitStatus(page, 'running');
  assert.equal(await status(page).textContent(), 'running');
  await page.locator('[data-testid="rollout-device-row"][data-device-id="shelf-pi"][data-state="queued"]').waitFor();
  // Download progress, as an agent's progress events would record it.
  const approved = Number(new URL(page.url()).pathname.split('/').pop());
  sql(
    demo.db,
    `UPDATE rollout_devices SET state = 'downloading', phase = 'downloading', bytes = 1536, total = 3072,
     started_at = ${Date.now()} WHERE rollout_id = ${approved} AND device_id = 'shelf-pi'`,
  );
  const progress = page
    .locator('[data-testid="rollout-device-row"][data-device-id="shelf-pi"][data-state="downloading"]')
    .getByTestId('download-progress');
  await progress.waitFor();
  assert.match(await progress.textContent(), /1\.5 KiB of 3 KiB/);
  assert.equal(await progress.locator('progress').getAttribute('value'), '50');
  await page.waitForFunction(() =>
    document.querySelector('[data-testid="batch-row"][data-batch="0"]')?.textContent?.includes('1 downloading'),
  );
  await shot(page, 'rollout-downloading');
  // The same page at phone width.
  await page.setViewportSize({ width: 390, height: 844 });
  await byId(page, 'rollout-device-table').waitFor();
  await shot(page, 'rollout-phone');
  await page.setViewportSize({ width: 1280, height: 900 });

  // The running rollout uses the release: deleting it is refused, with the reason.
  await page.goto(`${demo.url}/releases/${releaseId}`);
  await byId(page, 'release-delete').click();
  await byId(page, 'confirm-submit').click();
  const refusal = byId(page, 'release-delete-dialog').getByRole('alert');
  await refusal.waitFor();
  assert.match(await refusal.textContent(), /is used by a rollout/);
  await shot(page, 'release-delete-refused');
  await page.keyboard.press('Escape');
  await byId(page, 'release-detail').waitFor();
  assert.deepEqual(dialogs, []);
});
