// Rollouts as the dashboard shows them: status and device-state tones, progress bars, the
// actions a role may take, and the creation form turned into a request (pure functions, so
// they are unit-tested). The controller checks everything again.

import type { ApprovalView, NewRollout, Role, RolloutSettings } from '../api/types';
import { canOperate, isAdmin } from './commands';
import { formatBytes, formatDuration, formatPercent, plural, share } from './format';
import { DEVICE_ID_RULE, isDeviceId } from './ids';
import { type Parsed, parseSelector } from './labels';

export type Tone = 'ok' | 'bad' | 'warn' | 'busy' | 'muted';

/** Every rollout status, in lifecycle order (for the list's filter). */
export const ROLLOUT_STATUSES = [
  'draft',
  'awaiting_approval',
  'running',
  'paused',
  'completed',
  'aborted',
] as const;
export type RolloutStatus = (typeof ROLLOUT_STATUSES)[number];

export function isRolloutStatus(s: string): s is RolloutStatus {
  return (ROLLOUT_STATUSES as readonly string[]).includes(s);
}

/** Completed and aborted rollouts never change again. */
export function isFinal(status: string): boolean {
  return status === 'completed' || status === 'aborted';
}

/** A status or state as words: `awaiting_approval` → `awaiting approval`. */
export function stateText(s: string): string {
  return s.replace(/_/g, ' ');
}

export function rolloutTone(status: string): Tone {
  switch (status) {
    case 'running':
      return 'busy';
    case 'paused':
    case 'awaiting_approval':
      return 'warn';
    case 'completed':
      return 'ok';
    case 'aborted':
      return 'bad';
    default:
      return 'muted';
  }
}

/** Device states in the order progress bars and counts show them: done, in flight, waiting,
 * then the failures and the devices that never ran the release. */
export const DEVICE_STATES = [
  'healthy',
  'installing',
  'downloading',
  'queued',
  'pending',
  'reverting',
  'reverted',
  'rolled_back',
  'failed',
  'failed_unrecoverable',
  'timed_out',
  'unreachable',
  'untouched',
  'incompatible',
] as const;

export function deviceTone(state: string): Tone {
  switch (state) {
    case 'healthy':
      return 'ok';
    case 'queued':
    case 'downloading':
    case 'installing':
    case 'reverting':
      return 'busy';
    case 'rolled_back':
    case 'failed':
    case 'failed_unrecoverable':
    case 'timed_out':
      return 'bad';
    case 'unreachable':
      return 'warn';
    default:
      return 'muted';
  }
}

/** Failed outcomes: their reason and journal tail are worth opening. */
export function isFailure(state: string): boolean {
  return deviceTone(state) === 'bad';
}

function stateOrder(s: string): number {
  const i = (DEVICE_STATES as readonly string[]).indexOf(s);
  return i < 0 ? DEVICE_STATES.length : i;
}

export interface Segment {
  state: string;
  count: number;
  /** Share of all devices counted, 0–100. */
  pct: number;
  tone: Tone;
}

/** The parts of a progress bar: one per state with devices, in [`DEVICE_STATES`] order
 * (states the dashboard does not know go last, by name). */
export function progressSegments(counts: Record<string, number>): Segment[] {
  const entries = Object.entries(counts).filter(([, n]) => n > 0);
  const total = entries.reduce((sum, [, n]) => sum + n, 0);
  return entries
    .sort(([a], [b]) => stateOrder(a) - stateOrder(b) || a.localeCompare(b))
    .map(([state, count]) => ({ state, count, pct: (count / total) * 100, tone: deviceTone(state) }));
}

/** Counts as one line: `1 healthy · 2 queued`; `no devices` when empty. */
export function countsText(counts: Record<string, number>): string {
  const parts = progressSegments(counts).map((s) => `${s.count} ${stateText(s.state)}`);
  return parts.length === 0 ? 'no devices' : parts.join(' · ');
}

const PAUSE_CAUSES: Record<string, string> = {
  operator: 'Paused by an operator.',
  batch_failed: 'Paused: the current batch can no longer reach its success threshold.',
  no_results: 'Paused: every device of the current batch finished without a result (all unreachable).',
  abort_rule: 'Paused: the abort rule tripped (too many failures across the rollout).',
};

/** Why a paused rollout is paused, in a sentence; null when it is not paused. */
export function pauseCauseText(cause: string | null | undefined): string | null {
  if (!cause) return null;
  return PAUSE_CAUSES[cause] ?? `Paused: ${stateText(cause)}.`;
}

/** A device's download progress while it downloads: `1.5 KiB of 3 KiB` and the share. */
export function downloadProgress(d: {
  state: string;
  bytes: number | null;
  total: number | null;
}): { text: string; pct: number | null } | null {
  if (d.state !== 'downloading' || d.bytes === null) return null;
  const pct = d.total ? Math.min(100, share(d.bytes, d.total) ?? 0) : null;
  const text = d.total ? `${formatBytes(d.bytes)} of ${formatBytes(d.total)}` : formatBytes(d.bytes);
  return { text, pct };
}

export interface RolloutActions {
  pause: boolean;
  resume: boolean;
  abort: boolean;
  approve: boolean;
  /** The signed-in admin asked for it, so another admin must approve. */
  ownRequest: boolean;
}

/** What the signed-in user may do to a rollout now: operators pause, resume and abort;
 * admins approve one that waits, unless they asked for it themselves. */
export function rolloutActions(
  user: { role: Role; name: string },
  r: { status: string; created_by: string },
): RolloutActions {
  const operate = canOperate(user.role);
  const waiting = r.status === 'awaiting_approval';
  const own = r.created_by === `user:${user.name}`;
  return {
    pause: operate && r.status === 'running',
    resume: operate && r.status === 'paused',
    abort: operate && !isFinal(r.status),
    approve: isAdmin(user.role) && waiting && !own,
    ownRequest: waiting && own,
  };
}

/** `web#3`. */
export function releaseName(app: string, release: number): string {
  return `${app}#${release}`;
}

/** A rollout's settings in words, as label and value pairs. */
export function settingsFacts(s: RolloutSettings): [string, string][] {
  const duration = (secs: number | null | undefined, zero: string) =>
    secs === null || secs === undefined ? '—' : secs === 0 ? zero : formatDuration(secs);
  const pct = (n: number | null | undefined) => (n === null || n === undefined ? '—' : formatPercent(n));
  return [
    ['Canary', s.canary === 0 ? 'none' : s.canary == null ? '—' : plural(s.canary, 'device')],
    ['Batches', s.batches?.map((b) => formatPercent(b)).join(', ') ?? '—'],
    ['Success threshold', pct(s.success_threshold_pct)],
    ['Bake time', duration(s.bake_s, 'none')],
    [
      'Abort rule',
      s.abort_failure_pct == null || s.abort_min_results == null
        ? '—'
        : `pause at ${formatPercent(s.abort_failure_pct)} failures, once ${plural(s.abort_min_results, 'result')}`,
    ],
    ['Delivery deadline', duration(s.delivery_deadline_s, '—')],
    ['Install deadline', duration(s.install_deadline_s, '—')],
    [
      'Download cap',
      s.max_concurrent_downloads === 0
        ? 'no cap'
        : s.max_concurrent_downloads == null
          ? '—'
          : `${s.max_concurrent_downloads} at once`,
    ],
    ['Maintenance window', s.maintenance_window || 'any time'],
  ];
}

// The creation form.

/** Cumulative percentages: `10, 50, 100` (commas or blanks between), each 1–100, increasing,
 * the last 100. */
export function parseBatches(text: string): Parsed<number[]> {
  const items = text
    .split(/[\s,;]+/)
    .map((s) => s.replace(/%$/, ''))
    .filter((s) => s !== '');
  if (items.length === 0) return { ok: false, error: 'give at least one percentage, the last 100' };
  const out: number[] = [];
  for (const item of items) {
    const n = Number(item);
    if (!/^\d+$/.test(item) || n < 1 || n > 100) {
      return { ok: false, error: `"${item}" is not a whole percentage from 1 to 100` };
    }
    const prev = out[out.length - 1];
    if (prev !== undefined && n <= prev) {
      return { ok: false, error: `each percentage must be above the one before (${prev}, then ${n})` };
    }
    out.push(n);
  }
  if (out[out.length - 1] !== 100) return { ok: false, error: 'the last batch must reach 100 %' };
  return { ok: true, value: out };
}

/** Device ids separated by commas, blanks or new lines; duplicates dropped. */
export function parseDeviceIds(text: string): Parsed<string[]> {
  const ids = text.split(/[\s,]+/).filter((s) => s !== '');
  if (ids.length === 0) return { ok: false, error: 'name at least one device id' };
  if (ids.length > 1000) return { ok: false, error: 'at most 1000 device ids' };
  for (const id of ids) {
    if (!isDeviceId(id)) return { ok: false, error: `"${id}": ${DEVICE_ID_RULE}` };
  }
  return { ok: true, value: [...new Set(ids)] };
}

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, min: 60, h: 3_600, d: 86_400 };

/** Seconds from `90`, `90s`, `10m`, `10 min`, `2h`, `1d` or `1h 30m`. */
export function parseDuration(text: string): Parsed<number> {
  const t = text.trim().toLowerCase();
  if (t === '') return { ok: false, error: 'empty duration' };
  if (/^\d+$/.test(t)) return { ok: true, value: Number(t) };
  const re = /(\d+)\s*(min|s|m|h|d)/y;
  let total = 0;
  let pos = 0;
  while (pos < t.length) {
    re.lastIndex = pos;
    const m = re.exec(t);
    const unit = m?.[2];
    if (!m || unit === undefined)
      return { ok: false, error: `"${text.trim()}" is not a duration like 90s, 10m, 2h or 1d` };
    total += Number(m[1]) * (UNIT_SECONDS[unit] ?? 1);
    pos = re.lastIndex;
    while (t[pos] === ' ') pos++;
  }
  return { ok: true, value: total };
}

function parseWhole(text: string, min: number, max: number): Parsed<number> {
  const t = text.trim().replace(/\s*%$/, '');
  const n = Number(t);
  if (!/^\d+$/.test(t) || n < min || n > max) {
    return { ok: false, error: `a whole number from ${min} to ${max}` };
  }
  return { ok: true, value: n };
}

export type TargetKind = 'selector' | 'devices';

/** The creation form's fields, as typed; an empty setting takes the controller's default. */
export interface RolloutFields {
  release: string;
  targetKind: TargetKind;
  target: string;
  canary: string;
  batches: string;
  threshold: string;
  bake: string;
  abortPct: string;
  abortMin: string;
  delivery: string;
  install: string;
  downloads: string;
  window: string;
}

export const EMPTY_ROLLOUT_FIELDS: RolloutFields = {
  release: '',
  targetKind: 'selector',
  target: '',
  canary: '',
  batches: '',
  threshold: '',
  bake: '',
  abortPct: '',
  abortMin: '',
  delivery: '',
  install: '',
  downloads: '',
  window: '',
};

/** The controller's defaults, shown as placeholders. */
export const ROLLOUT_DEFAULTS: Record<
  Exclude<keyof RolloutFields, 'release' | 'targetKind' | 'target'>,
  string
> = {
  canary: '1',
  batches: '10, 50, 100',
  threshold: '100',
  bake: '0',
  abortPct: '20',
  abortMin: '10',
  delivery: '1d',
  install: '30m',
  downloads: '50',
  window: 'any time',
};

const MAX_U32 = 4_294_967_295;
const MAX_DURATION = 30 * 86_400;

/** The request the form describes, or the first problem (named after its field). */
export function buildRollout(f: RolloutFields, preview = false): Parsed<NewRollout> {
  const release = Number(f.release);
  if (f.release === '' || !Number.isInteger(release) || release < 1) {
    return { ok: false, error: 'Release: choose a release' };
  }
  const body: NewRollout = { release_id: release, preview };
  if (f.targetKind === 'selector') {
    const sel = parseSelector(f.target);
    if (!sel.ok) return { ok: false, error: `Selector: ${sel.error}` };
    body.selector = sel.value;
  } else {
    const ids = parseDeviceIds(f.target);
    if (!ids.ok) return { ok: false, error: `Devices: ${ids.error}` };
    body.devices = ids.value;
  }
  const settings: RolloutSettings = {};
  const fields: [string, string, (t: string) => Parsed<number>, (v: number) => void][] = [
    ['Canary', f.canary, (t) => parseWhole(t, 0, MAX_U32), (v) => (settings.canary = v)],
    [
      'Success threshold',
      f.threshold,
      (t) => parseWhole(t, 1, 100),
      (v) => (settings.success_threshold_pct = v),
    ],
    ['Bake time', f.bake, (t) => withinDuration(t, 0), (v) => (settings.bake_s = v)],
    ['Abort at failures', f.abortPct, (t) => parseWhole(t, 1, 100), (v) => (settings.abort_failure_pct = v)],
    [
      'Abort after results',
      f.abortMin,
      (t) => parseWhole(t, 1, MAX_U32),
      (v) => (settings.abort_min_results = v),
    ],
    ['Delivery deadline', f.delivery, (t) => withinDuration(t, 1), (v) => (settings.delivery_deadline_s = v)],
    ['Install deadline', f.install, (t) => withinDuration(t, 1), (v) => (settings.install_deadline_s = v)],
    [
      'Download cap',
      f.downloads,
      (t) => parseWhole(t, 0, MAX_U32),
      (v) => (settings.max_concurrent_downloads = v),
    ],
  ];
  for (const [name, text, parse, set] of fields) {
    if (text.trim() === '') continue;
    const r = parse(text);
    if (!r.ok) return { ok: false, error: `${name}: ${r.error}` };
    set(r.value);
  }
  if (f.batches.trim() !== '') {
    const b = parseBatches(f.batches);
    if (!b.ok) return { ok: false, error: `Batches: ${b.error}` };
    settings.batches = b.value;
  }
  if (f.window.trim() !== '') settings.maintenance_window = f.window.trim();
  if (Object.keys(settings).length > 0) body.settings = settings;
  return { ok: true, value: body };
}

function withinDuration(text: string, min: number): Parsed<number> {
  const d = parseDuration(text);
  if (!d.ok) return d;
  if (d.value < min || d.value > MAX_DURATION) {
    return { ok: false, error: `from ${min} s to 30 days` };
  }
  return d;
}

/** The rollout a rollout approval request is for (its request names it), else null. */
export function rolloutOf(a: Pick<ApprovalView, 'kind' | 'request'>): number | null {
  const r = a.request as { rollout?: unknown } | null;
  return a.kind === 'rollout' && r !== null && typeof r.rollout === 'number' ? r.rollout : null;
}
