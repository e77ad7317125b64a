// Dashboard benchmark (prints numbers, passes or fails nothing): the transfer size of the
// first load (JS + CSS as sent, gzip) and the time until the fleet page is usable with
// 10,000 devices in the database, in Debian's Chromium against a demo controller.
//
//   cargo build --release --workspace
//   PIFLEET_BIN_DIR=target/release node tests/browser/bench.mjs [devices]

import { startDemo, browser, sql } from './demo.mjs';

const devices = Number(process.argv[2] ?? 10_000);
const RUNS = 7;
const PASSWORD = 'correct-horse-battery-staple-42';

const demo = await startDemo(3);
let chrome;
try {
  // Devices written straight into SQLite, each with a latest sample and labels, like the
  // admin API benchmark.
  const now = Date.now();
  sql(
    demo.db,
    `WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ${devices})
     INSERT INTO devices (id, labels, enrolled_at, first_seen, last_seen, online, agent_version,
       hostname, os, kernel, arch, model, uptime_s, hello_at, last_seq)
     SELECT printf('pi-%05d', i), json_object('site', 'site-' || (i % 20), 'rack', '' || (i % 7)),
       ${now - 86_400_000}, ${now - 86_400_000}, ${now} - (i % 600) * 1000, i % 10 != 0, '0.1.0',
       'host-' || i, 'Debian 13', '6.12', 'aarch64', 'Raspberry Pi 4 Model B', 1000, ${now}, 1
     FROM n;
     WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ${devices})
     INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_pct, load1, load5, load15,
       mem_total, mem_used, swap_total, swap_used, temp_c, throttled, uptime_s, spool_dropped,
       spool_backlog, disks, nets, disk_used, disk_total, net_rx, net_tx)
     SELECT printf('pi-%05d', i), 1, ${now}, ${now}, i % 100, 0.5, 0.4, 0.3, 4000000000,
       1000000000 + (i % 1000) * 1000000, 0, 0, 40 + (i % 30), 0, 1000, 0, 0,
       json_array(json_object('mount', '/', 'fs', 'ext4', 'total_bytes', 32000000000,
         'used_bytes', 8000000000 + i)), '[]', 8000000000 + i, 32000000000, 0, 0
     FROM n;`,
  );
  chrome = await browser();
  const context = await chrome.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  // Sign in once (the one-time password is changed); later loads restore the session from
  // the refresh cookie, as a returning user's would.
  await page.goto(`${demo.url}/login`);
  await page.getByTestId('login-username').fill('admin');
  await page.getByTestId('login-password').fill(demo.password);
  await page.getByTestId('login-submit').click();
  await page.getByTestId('first-password-current').fill(demo.password);
  await page.getByTestId('first-password-new').fill(PASSWORD);
  await page.getByTestId('first-password-repeat').fill(PASSWORD);
  await page.getByTestId('first-password-submit').click();
  await page.getByTestId('device-table').waitFor();

  // First load in a fresh context (empty cache): what JS and CSS cost on the wire.
  const fresh = await chrome.newContext({ ignoreHTTPSErrors: true });
  const first = await fresh.newPage();
  const sizes = [];
  first.on('requestfinished', async (req) => {
    const url = new URL(req.url());
    if (/\.(js|css)$/.test(url.pathname)) {
      const s = await req.sizes();
      sizes.push([url.pathname, s.responseBodySize]);
    }
  });
  await first.goto(`${demo.url}/login`, { waitUntil: 'networkidle' });
  const total = sizes.reduce((a, [, n]) => a + n, 0);
  for (const [path, n] of sizes) console.log(`  ${path}  ${(n / 1024).toFixed(1)} KiB`);
  console.log(`first load, JS + CSS as transferred (gzip): ${(total / 1024).toFixed(1)} KiB`);
  await fresh.close();

  // Time until the fleet page is usable: navigation start to the totals and a full first
  // page of rows on screen, with ${devices} devices.
  const times = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = Date.now();
    await page.goto(`${demo.url}/`);
    await page.waitForFunction(
      (n) =>
        document.querySelectorAll('[data-testid="device-row"]').length === 50 &&
        document.querySelector('[data-testid="total-enrolled"]')?.textContent?.replace(/\D/g, '') === String(n),
      devices + 3,
      { timeout: 30_000, polling: 'raf' },
    );
    times.push(Date.now() - t0);
  }
  times.sort((a, b) => a - b);
  console.log(
    `fleet page usable with ${devices + 3} devices: median ${times[Math.floor(RUNS / 2)]} ms, ` +
      `min ${times[0]} ms, max ${times[RUNS - 1]} ms (${RUNS} loads)`,
  );
} finally {
  await chrome?.close();
  await demo.stop();
}
