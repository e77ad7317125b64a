// Starts `pifleet-controller demo` (the README's main command) for the browser tests and
// benchmarks, reads what it prints, and opens Debian's Chromium with Playwright.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const repo = resolve(import.meta.dirname, '../..');

/** Where the built binaries are: $PIFLEET_BIN_DIR, else $CARGO_TARGET_DIR/debug, else target/debug. */
export function binDir() {
  if (process.env.PIFLEET_BIN_DIR) return process.env.PIFLEET_BIN_DIR;
  const target = process.env.CARGO_TARGET_DIR ?? join(repo, 'target');
  return join(target, 'debug');
}

/**
 * Runs the demo with `agents` agents; resolves once it printed its banner.
 * @returns {Promise<{url: string, data: string, db: string, agents: Map<string, number>, password: string, stop: () => Promise<void>}>}
 */
export async function startDemo(agents = 3) {
  const bin = join(binDir(), 'pifleet-controller');
  if (!existsSync(bin)) {
    throw new Error(`${bin} not found: build the binaries first (cargo build --workspace)`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'pifleet-browser-'));
  // The demo refuses an existing directory: give it a new one inside ours.
  const child = spawn(bin, ['demo', '--agents', String(agents), '--interval', '1', '--dir', join(dir, 'demo')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout });
  const banner = [];
  await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`demo did not start:\n${banner.join('\n')}`)), 60_000);
    child.on('exit', (code) => fail(new Error(`demo exited (${code}):\n${banner.join('\n')}`)));
    lines.on('line', (line) => {
      if (line.startsWith('Press Ctrl-C')) {
        clearTimeout(timer);
        ok();
      } else {
        banner.push(line);
      }
    });
  });
  const field = (name) =>
    banner.map((l) => l.trim()).filter((l) => l.startsWith(name)).map((l) => l.slice(name.length).trim());
  const controller = field('controller')[0].split(/\s+/);
  const url = controller[controller.indexOf('https') + 1];
  const data = field('data dir')[0];
  const db = field('database')[0];
  const agentPids = new Map(
    field('agent').map((l) => {
      const [id, , pid] = l.split(/\s+/);
      return [id, Number(pid)];
    }),
  );
  const signIn = field("sign in as")[0].split(/\s+/);
  const password = signIn[signIn.indexOf('password') + 1];
  const stop = async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((ok) => {
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          for (const pid of agentPids.values()) {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // already gone
            }
          }
          ok();
        }, 30_000);
        child.on('exit', () => {
          clearTimeout(timer);
          ok();
        });
      });
    }
    rmSync(dir, { recursive: true, force: true });
  };
  return { url, data, db, agents: agentPids, password, stop };
}

/** Runs SQL against the demo's database with Debian's sqlite3 (waiting for the writer). */
export function sql(db, statement) {
  return execFileSync('sqlite3', ['-cmd', '.timeout 10000', db, statement], { encoding: 'utf8' });
}

/** Debian's Chromium, headless, with the flags this sandbox needs (no network beyond loopback). */
export async function browser() {
  const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
  if (!existsSync(executablePath)) {
    throw new Error(`${executablePath} not found: install Chromium (Debian: apt-get install chromium)`);
  }
  return chromium.launch({
    executablePath,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
