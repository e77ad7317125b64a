import { describe, expect, it } from 'vitest';
import type { Action, Capabilities, Role } from '../api/types';
import {
  actionError,
  buildAction,
  canOperate,
  commandOffer,
  describeAction,
  isAdmin,
  type OfferedActions,
  permits,
  statusTone,
} from './commands';

const CAPS: Capabilities = {
  ping: true,
  reboot: true,
  services: ['kiosk.service', 'nginx.service'],
  journal_units: ['kiosk.service'],
  scripts: [{ name: 'backup', allowed_args: ['--dry-run', '--full'] }],
  set_interval: { min_s: 5, max_s: 3600 },
  reported_at: 1_795_510_577_000,
};

function offered(role: Role, caps: Capabilities | null | undefined = CAPS): OfferedActions {
  const o = commandOffer(role, 'online', caps);
  if (o.kind !== 'actions') throw new Error(`expected actions, got ${o.kind}`);
  return o.actions;
}

describe('roles', () => {
  it('lets operators and admins operate, only admins administer', () => {
    expect([canOperate('viewer'), canOperate('operator'), canOperate('admin')]).toEqual([false, true, true]);
    expect([isAdmin('viewer'), isAdmin('operator'), isAdmin('admin')]).toEqual([false, false, true]);
  });
});

describe('commandOffer', () => {
  it('hides every control from viewers, whatever the device allows', () => {
    expect(commandOffer('viewer', 'online', CAPS)).toEqual({ kind: 'hidden' });
    expect(commandOffer('viewer', 'online', null)).toEqual({ kind: 'hidden' });
    expect(commandOffer('viewer', 'revoked', CAPS)).toEqual({ kind: 'hidden' });
  });

  it('offers operators and admins exactly what the allowlist permits', () => {
    for (const role of ['operator', 'admin'] as const) {
      expect(offered(role)).toEqual({
        ping: true,
        reboot: true,
        services: ['kiosk.service', 'nginx.service'],
        journalUnits: ['kiosk.service'],
        scripts: [{ name: 'backup', allowed_args: ['--dry-run', '--full'] }],
        setInterval: { min_s: 5, max_s: 3600 },
      });
    }
  });

  it('offers nothing the allowlist leaves out', () => {
    const o = offered('operator', {
      ...CAPS,
      reboot: false,
      services: [],
      scripts: [],
      set_interval: null,
    });
    expect(o.reboot).toBe(false);
    expect(o.services).toEqual([]);
    expect(o.scripts).toEqual([]);
    expect(o.setInterval).toBeNull();
    expect(o.ping).toBe(true);
    expect(o.journalUnits).toEqual(['kiosk.service']);
  });

  it('explains why nothing is offered', () => {
    const none = commandOffer('admin', 'online', null);
    expect(none.kind).toBe('unavailable');
    expect(commandOffer('admin', 'online', undefined).kind).toBe('unavailable');
    const revoked = commandOffer('admin', 'revoked', CAPS);
    expect(revoked).toMatchObject({ kind: 'unavailable' });
    const empty = commandOffer('operator', 'offline', {
      ...CAPS,
      ping: false,
      reboot: false,
      services: [],
      journal_units: [],
      scripts: [],
      set_interval: null,
    });
    expect(empty.kind).toBe('unavailable');
  });

  it('still offers commands for an offline device (they wait for it)', () => {
    expect(commandOffer('operator', 'offline', CAPS).kind).toBe('actions');
  });

  it('drops names the agent would refuse, duplicates, and bad bounds', () => {
    const o = offered('admin', {
      ...CAPS,
      services: ['b.service', 'a.service', 'a.service', 'bad name; rm', ''],
      scripts: [
        { name: 'ok', allowed_args: ['-v', ''] },
        { name: '../evil', allowed_args: [] },
      ],
      set_interval: { min_s: 10, max_s: 5 },
    });
    expect(o.services).toEqual(['a.service', 'b.service']);
    expect(o.scripts).toEqual([{ name: 'ok', allowed_args: ['-v'] }]);
    expect(o.setInterval).toBeNull();
  });
});

describe('permits', () => {
  const o = offered('operator');
  const cases: [Action, boolean][] = [
    [{ kind: 'ping' }, true],
    [{ kind: 'reboot' }, true],
    [{ kind: 'service', op: 'restart', unit: 'kiosk.service' }, true],
    [{ kind: 'service', op: 'stop', unit: 'sshd.service' }, false],
    [{ kind: 'journal', unit: 'kiosk.service', lines: 100 }, true],
    [{ kind: 'journal', unit: 'nginx.service', lines: 100 }, false],
    [{ kind: 'journal', unit: 'kiosk.service', lines: 0 }, false],
    [{ kind: 'journal', unit: 'kiosk.service', lines: 1001 }, false],
    [{ kind: 'script', name: 'backup', args: [] }, true],
    [{ kind: 'script', name: 'backup', args: ['--dry-run', '--full'] }, true],
    [{ kind: 'script', name: 'backup', args: ['--force'] }, false],
    [{ kind: 'script', name: 'wipe', args: [] }, false],
    [{ kind: 'set_interval', seconds: 5 }, true],
    [{ kind: 'set_interval', seconds: 3600 }, true],
    [{ kind: 'set_interval', seconds: 4 }, false],
    [{ kind: 'set_interval', seconds: 3601 }, false],
    [{ kind: 'set_interval', seconds: 10.5 }, false],
  ];
  it.each(cases)('%j → %s', (action, want) => {
    expect(permits(o, action)).toBe(want);
  });

  it('refuses reboot and ping when the device does not allow them', () => {
    const strict = offered('admin', { ...CAPS, ping: false, reboot: false });
    expect(permits(strict, { kind: 'reboot' })).toBe(false);
    expect(permits(strict, { kind: 'ping' })).toBe(false);
  });
});

describe('hand-typed actions', () => {
  const base = {
    kind: 'ping' as const,
    op: 'restart' as const,
    unit: '',
    lines: '100',
    script: '',
    args: '',
    seconds: '',
  };
  it('builds actions from form fields', () => {
    expect(buildAction({ ...base, kind: 'service', unit: ' kiosk.service ' })).toEqual({
      kind: 'service',
      op: 'restart',
      unit: 'kiosk.service',
    });
    expect(buildAction({ ...base, kind: 'journal', unit: 'kiosk', lines: '20' })).toEqual({
      kind: 'journal',
      unit: 'kiosk',
      lines: 20,
    });
    expect(buildAction({ ...base, kind: 'script', script: 'backup', args: ' --dry-run  --full ' })).toEqual({
      kind: 'script',
      name: 'backup',
      args: ['--dry-run', '--full'],
    });
    expect(buildAction({ ...base, kind: 'set_interval', seconds: '30' })).toEqual({
      kind: 'set_interval',
      seconds: 30,
    });
    expect(buildAction({ ...base, kind: 'reboot' })).toEqual({ kind: 'reboot' });
  });

  it('checks names and numbers before sending', () => {
    expect(actionError({ kind: 'ping' })).toBeNull();
    expect(actionError({ kind: 'service', op: 'start', unit: 'kiosk.service' })).toBeNull();
    expect(actionError({ kind: 'service', op: 'start', unit: '' })).toMatch(/unit/);
    expect(actionError({ kind: 'service', op: 'start', unit: 'a b' })).toMatch(/unit/);
    expect(actionError({ kind: 'journal', unit: 'kiosk', lines: Number.NaN })).toMatch(/lines/);
    expect(actionError({ kind: 'script', name: 'x/y', args: [] })).toMatch(/script/);
    expect(actionError({ kind: 'set_interval', seconds: 0 })).toMatch(/seconds/);
    expect(actionError({ kind: 'set_interval', seconds: 10 })).toBeNull();
  });
});

describe('describing', () => {
  it('reads actions as one line', () => {
    expect(describeAction({ kind: 'ping' })).toBe('ping');
    expect(describeAction({ kind: 'service', op: 'restart', unit: 'kiosk.service' })).toBe(
      'restart kiosk.service',
    );
    expect(describeAction({ kind: 'journal', unit: 'kiosk.service', lines: 5 })).toBe(
      'journal kiosk.service (5 lines)',
    );
    expect(describeAction({ kind: 'script', name: 'backup', args: ['--dry-run'] })).toBe(
      'script backup --dry-run',
    );
    expect(describeAction({ kind: 'set_interval', seconds: 30 })).toBe('set interval to 30 s');
    const digest = 'ab'.repeat(32);
    expect(
      describeAction({
        kind: 'deploy',
        app: 'web',
        release: 3,
        manifest_sha256: digest,
        archive_sha256: digest,
        archive_size: 10,
        retry_failed: false,
      }),
    ).toBe('deploy web release 3');
    expect(describeAction({ kind: 'rollback', app: 'web', release: 2, manifest_sha256: digest })).toBe(
      'roll web back to release 2',
    );
    expect(describeAction({ kind: 'trust_release_keys', keys: [digest, digest] })).toBe(
      'trust 2 release keys',
    );
    expect(describeAction({ kind: 'trust_command_keys', keys: [digest, digest, digest], keep: 2 })).toBe(
      'follow 2 command key rotations',
    );
  });

  it('gives statuses a tone', () => {
    expect(statusTone('succeeded')).toBe('ok');
    expect(statusTone('rejected')).toBe('bad');
    expect(statusTone('failed')).toBe('bad');
    expect(statusTone('expired')).toBe('warn');
    expect(statusTone('running')).toBe('busy');
    expect(statusTone('queued')).toBe('busy');
  });
});
