// Which command controls a user gets for a device: only what both the user's role and the
// device's own allowlist (its reported capabilities) permit. Also how actions read.

import type {
  Action,
  ActionKind,
  AnyAction,
  Capabilities,
  CommandStatus,
  DeviceStatus,
  Role,
  ScriptCapability,
  ServiceOp,
} from '../api/types';

export const SERVICE_OPS: readonly ServiceOp[] = ['status', 'start', 'stop', 'restart'];
export const MAX_JOURNAL_LINES = 1000;
export const DEFAULT_JOURNAL_LINES = 100;

/** Unit and script names the agent accepts: 1–128 of A-Z a-z 0-9 @ . _ : + - */
const NAME = /^[A-Za-z0-9@._:+-]{1,128}$/;

export const canOperate = (role: Role) => role === 'operator' || role === 'admin';
export const isAdmin = (role: Role) => role === 'admin';

export interface OfferedActions {
  ping: boolean;
  reboot: boolean;
  /** Units offered for status / start / stop / restart. */
  services: string[];
  journalUnits: string[];
  scripts: ScriptCapability[];
  setInterval: { min_s: number; max_s: number } | null;
}

export type CommandOffer =
  /** The role may not send commands: show no command controls at all. */
  | { kind: 'hidden' }
  /** The role may, but the device offers nothing now; `reason` says why. */
  | { kind: 'unavailable'; reason: string }
  | { kind: 'actions'; actions: OfferedActions };

export function commandOffer(
  role: Role,
  status: DeviceStatus,
  caps: Capabilities | null | undefined,
): CommandOffer {
  if (!canOperate(role)) return { kind: 'hidden' };
  if (status === 'revoked') {
    return { kind: 'unavailable', reason: 'This device is revoked: it can no longer receive commands.' };
  }
  if (!caps) {
    return {
      kind: 'unavailable',
      reason: 'The agent has not reported what its allowlist permits yet. Commands appear here once it does.',
    };
  }
  const valid = (n: string) => NAME.test(n);
  const bounds = caps.set_interval;
  const actions: OfferedActions = {
    ping: caps.ping,
    reboot: caps.reboot,
    services: [...new Set(caps.services.filter(valid))].sort(),
    journalUnits: [...new Set(caps.journal_units.filter(valid))].sort(),
    scripts: caps.scripts
      .filter((s) => valid(s.name))
      .map((s) => ({ name: s.name, allowed_args: s.allowed_args.filter((a) => a !== '') }))
      .sort((a, b) => a.name.localeCompare(b.name)),
    setInterval: bounds && bounds.min_s >= 1 && bounds.max_s >= bounds.min_s ? { ...bounds } : null,
  };
  const any =
    actions.ping ||
    actions.reboot ||
    actions.services.length > 0 ||
    actions.journalUnits.length > 0 ||
    actions.scripts.length > 0 ||
    actions.setInterval !== null;
  if (!any) {
    return {
      kind: 'unavailable',
      reason: "The device's allowlist permits no remote actions (see commands in its agent.toml).",
    };
  }
  return { kind: 'actions', actions };
}

/** Whether `action` is one that `offer` permits (the panel builds only such actions). */
export function permits(offer: OfferedActions, action: Action): boolean {
  switch (action.kind) {
    case 'ping':
      return offer.ping;
    case 'reboot':
      return offer.reboot;
    case 'service':
      return offer.services.includes(action.unit) && SERVICE_OPS.includes(action.op);
    case 'journal':
      return (
        offer.journalUnits.includes(action.unit) &&
        Number.isInteger(action.lines) &&
        action.lines >= 1 &&
        action.lines <= MAX_JOURNAL_LINES
      );
    case 'script': {
      const s = offer.scripts.find((x) => x.name === action.name);
      return !!s && action.args.every((a) => s.allowed_args.includes(a));
    }
    case 'set_interval':
      return (
        offer.setInterval !== null &&
        Number.isInteger(action.seconds) &&
        action.seconds >= offer.setInterval.min_s &&
        action.seconds <= offer.setInterval.max_s
      );
  }
}

/** Checks an action typed by hand (commands to a label selector, where no single device's
 * allowlist is known); returns an error message or null. */
export function actionError(action: Action): string | null {
  switch (action.kind) {
    case 'ping':
    case 'reboot':
      return null;
    case 'service':
      return NAME.test(action.unit) ? null : 'unit: 1–128 of A-Z a-z 0-9 @ . _ : + -';
    case 'journal':
      if (!NAME.test(action.unit)) return 'unit: 1–128 of A-Z a-z 0-9 @ . _ : + -';
      return Number.isInteger(action.lines) && action.lines >= 1 && action.lines <= MAX_JOURNAL_LINES
        ? null
        : `lines: a whole number from 1 to ${MAX_JOURNAL_LINES}`;
    case 'script':
      if (!NAME.test(action.name)) return 'script: 1–128 of A-Z a-z 0-9 @ . _ : + -';
      return action.args.every((a) => a.length >= 1 && a.length <= 128)
        ? null
        : 'arguments: 1–128 characters each';
    case 'set_interval':
      return Number.isInteger(action.seconds) && action.seconds >= 1
        ? null
        : 'seconds: a whole number of at least 1';
  }
}

/** One line for an action: `restart kiosk.service`, `journal kiosk.service (100 lines)`. */
export function describeAction(a: AnyAction): string {
  switch (a.kind) {
    case 'ping':
      return 'ping';
    case 'reboot':
      return 'reboot';
    case 'service':
      return `${a.op} ${a.unit}`;
    case 'journal':
      return `journal ${a.unit} (${a.lines} lines)`;
    case 'script':
      return ['script', a.name, ...a.args].join(' ');
    case 'set_interval':
      return `set interval to ${a.seconds} s`;
    case 'deploy':
      return `deploy ${a.app} release ${a.release}${a.retry_failed ? ' (retry)' : ''}`;
    case 'rollback':
      return `roll ${a.app} back to release ${a.release}`;
    case 'trust_release_keys':
      return `trust ${a.keys.length === 1 ? '1 release key' : `${a.keys.length} release keys`}`;
    case 'trust_command_keys':
      return `follow ${a.keys.length - 1} command key rotation${a.keys.length === 2 ? '' : 's'}`;
  }
}

/** How a status reads as a badge tone. */
export function statusTone(s: CommandStatus): 'ok' | 'bad' | 'warn' | 'busy' {
  if (s === 'succeeded') return 'ok';
  if (s === 'failed' || s === 'rejected') return 'bad';
  if (s === 'expired' || s === 'cancelled') return 'warn';
  return 'busy';
}

/** The fields of a hand-typed action form (numbers as typed). */
export interface ActionFields {
  kind: ActionKind;
  op: ServiceOp;
  unit: string;
  lines: string;
  script: string;
  args: string;
  seconds: string;
}

/** The action the fields describe. */
export function buildAction(f: ActionFields): Action {
  switch (f.kind) {
    case 'ping':
      return { kind: 'ping' };
    case 'reboot':
      return { kind: 'reboot' };
    case 'service':
      return { kind: 'service', op: f.op, unit: f.unit.trim() };
    case 'journal':
      return { kind: 'journal', unit: f.unit.trim(), lines: Number(f.lines) };
    case 'script':
      return {
        kind: 'script',
        name: f.script.trim(),
        args: f.args.split(/\s+/).filter((a) => a !== ''),
      };
    case 'set_interval':
      return { kind: 'set_interval', seconds: Number(f.seconds) };
  }
}
