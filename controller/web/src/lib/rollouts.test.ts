import { describe, expect, it } from 'vitest';
import type { ApprovalView } from '../api/types';
import {
  buildRollout,
  countsText,
  downloadProgress,
  EMPTY_ROLLOUT_FIELDS,
  isFinal,
  parseBatches,
  parseDeviceIds,
  parseDuration,
  pauseCauseText,
  progressSegments,
  type RolloutFields,
  rolloutActions,
  rolloutOf,
  settingsFacts,
} from './rollouts';

const fields = (patch: Partial<RolloutFields>): RolloutFields => ({
  ...EMPTY_ROLLOUT_FIELDS,
  release: '3',
  target: 'site=lobby',
  ...patch,
});

describe('parseBatches', () => {
  it('reads cumulative percentages', () => {
    expect(parseBatches('10, 50, 100')).toEqual({ ok: true, value: [10, 50, 100] });
    expect(parseBatches(' 25%,100% ')).toEqual({ ok: true, value: [25, 100] });
    expect(parseBatches('100')).toEqual({ ok: true, value: [100] });
    expect(parseBatches('5 20;100')).toEqual({ ok: true, value: [5, 20, 100] });
  });

  it('refuses what the controller refuses', () => {
    expect(parseBatches('')).toMatchObject({ ok: false });
    expect(parseBatches('10, 50')).toEqual({ ok: false, error: 'the last batch must reach 100 %' });
    expect(parseBatches('50, 10, 100')).toMatchObject({ ok: false, error: expect.stringMatching(/above/) });
    expect(parseBatches('50, 50, 100')).toMatchObject({ ok: false, error: expect.stringMatching(/above/) });
    for (const bad of ['0, 100', '10, 101', '1.5, 100', 'ten, 100', '-5, 100']) {
      expect(parseBatches(bad).ok, bad).toBe(false);
    }
  });
});

describe('parseDeviceIds', () => {
  it('splits on commas, blanks and lines and drops duplicates', () => {
    expect(parseDeviceIds('pi-1, pi-2\npi-3 pi-1')).toEqual({ ok: true, value: ['pi-1', 'pi-2', 'pi-3'] });
  });

  it('refuses invalid ids and an empty list', () => {
    expect(parseDeviceIds(' , ')).toMatchObject({ ok: false });
    expect(parseDeviceIds('pi-1, Pi_2')).toMatchObject({
      ok: false,
      error: expect.stringMatching(/^"Pi_2"/),
    });
  });
});

describe('parseDuration', () => {
  it('reads seconds and units', () => {
    const cases: [string, number][] = [
      ['0', 0],
      ['90', 90],
      ['90s', 90],
      ['10m', 600],
      ['10 min', 600],
      ['2h', 7_200],
      ['1d', 86_400],
      ['1h 30m', 5_400],
      ['1H30M', 5_400],
    ];
    for (const [text, secs] of cases) expect(parseDuration(text), text).toEqual({ ok: true, value: secs });
  });

  it('refuses anything else', () => {
    for (const bad of ['', ' ', 'soon', '10 x', '1.5h', 'h', '-5', '10m later']) {
      expect(parseDuration(bad).ok, bad).toBe(false);
    }
  });
});

describe('buildRollout', () => {
  it('sends only what was filled in: the controller has the defaults', () => {
    expect(buildRollout(fields({}))).toEqual({
      ok: true,
      value: { release_id: 3, preview: false, selector: { site: 'lobby' } },
    });
    expect(buildRollout(fields({}), true)).toMatchObject({ ok: true, value: { preview: true } });
  });

  it('turns every setting into the request', () => {
    const r = buildRollout(
      fields({
        targetKind: 'devices',
        target: 'pi-1 pi-2',
        canary: '0',
        batches: '20, 100',
        threshold: '90 %',
        bake: '10m',
        abortPct: '30',
        abortMin: '5',
        delivery: '2h',
        install: '900',
        downloads: '0',
        window: ' mon-fri 02:00-05:00 ',
      }),
    );
    expect(r).toEqual({
      ok: true,
      value: {
        release_id: 3,
        preview: false,
        devices: ['pi-1', 'pi-2'],
        settings: {
          canary: 0,
          batches: [20, 100],
          success_threshold_pct: 90,
          bake_s: 600,
          abort_failure_pct: 30,
          abort_min_results: 5,
          delivery_deadline_s: 7_200,
          install_deadline_s: 900,
          max_concurrent_downloads: 0,
          maintenance_window: 'mon-fri 02:00-05:00',
        },
      },
    });
  });

  it('names the field of the first problem', () => {
    expect(buildRollout(fields({ release: '' }))).toEqual({ ok: false, error: 'Release: choose a release' });
    expect(buildRollout(fields({ target: '' }))).toMatchObject({
      error: expect.stringMatching(/^Selector:/),
    });
    expect(buildRollout(fields({ targetKind: 'devices', target: 'x' }))).toMatchObject({
      error: expect.stringMatching(/^Devices:/),
    });
    expect(buildRollout(fields({ batches: '10' }))).toMatchObject({
      error: expect.stringMatching(/^Batches:/),
    });
    expect(buildRollout(fields({ threshold: '0' }))).toMatchObject({
      error: 'Success threshold: a whole number from 1 to 100',
    });
    expect(buildRollout(fields({ canary: '-1' }))).toMatchObject({
      error: expect.stringMatching(/^Canary:/),
    });
    expect(buildRollout(fields({ install: '0' }))).toMatchObject({
      error: expect.stringMatching(/^Install deadline:/),
    });
    expect(buildRollout(fields({ delivery: '31d' }))).toMatchObject({
      error: expect.stringMatching(/30 days/),
    });
    expect(buildRollout(fields({ abortMin: '0' }))).toMatchObject({
      error: expect.stringMatching(/^Abort after results:/),
    });
  });
});

describe('progress', () => {
  it('orders the states: done, in flight, waiting, failed', () => {
    const s = progressSegments({ queued: 2, failed: 1, healthy: 1, pending: 0, zzz: 1 });
    expect(s.map((x) => x.state)).toEqual(['healthy', 'queued', 'failed', 'zzz']);
    expect(s.map((x) => x.pct)).toEqual([20, 40, 20, 20]);
    expect(s.map((x) => x.tone)).toEqual(['ok', 'busy', 'bad', 'muted']);
    expect(progressSegments({})).toEqual([]);
  });

  it('says the counts in words', () => {
    expect(countsText({ queued: 2, rolled_back: 1 })).toBe('2 queued · 1 rolled back');
    expect(countsText({})).toBe('no devices');
  });

  it('shows download progress only while downloading', () => {
    expect(downloadProgress({ state: 'downloading', bytes: 1536, total: 3072 })).toEqual({
      text: '1.5 KiB of 3 KiB',
      pct: 50,
    });
    expect(downloadProgress({ state: 'downloading', bytes: 10, total: null })).toEqual({
      text: '10 B',
      pct: null,
    });
    expect(downloadProgress({ state: 'installing', bytes: 3072, total: 3072 })).toBeNull();
    expect(downloadProgress({ state: 'downloading', bytes: null, total: null })).toBeNull();
  });

  it('explains a pause', () => {
    expect(pauseCauseText('operator')).toBe('Paused by an operator.');
    expect(pauseCauseText('batch_failed')).toMatch(/success threshold/);
    expect(pauseCauseText('new_cause')).toBe('Paused: new cause.');
    expect(pauseCauseText(null)).toBeNull();
  });
});

describe('rolloutActions', () => {
  const admin = { role: 'admin' as const, name: 'alma' };
  const operator = { role: 'operator' as const, name: 'otto' };
  const viewer = { role: 'viewer' as const, name: 'vera' };
  const r = (status: string, created_by = 'user:otto') => ({ status, created_by });

  it('lets operators pause, resume and abort what is not finished', () => {
    expect(rolloutActions(operator, r('running'))).toEqual({
      pause: true,
      resume: false,
      abort: true,
      approve: false,
      ownRequest: false,
    });
    expect(rolloutActions(operator, r('paused'))).toMatchObject({ pause: false, resume: true, abort: true });
    for (const s of ['completed', 'aborted']) {
      expect(isFinal(s)).toBe(true);
      expect(rolloutActions(admin, r(s))).toEqual({
        pause: false,
        resume: false,
        abort: false,
        approve: false,
        ownRequest: false,
      });
    }
  });

  it('offers a viewer nothing', () => {
    for (const s of ['running', 'paused', 'awaiting_approval']) {
      expect(Object.values(rolloutActions(viewer, r(s))).some(Boolean)).toBe(false);
    }
  });

  it('lets only another admin approve', () => {
    expect(rolloutActions(admin, r('awaiting_approval'))).toMatchObject({ approve: true, abort: true });
    expect(rolloutActions(operator, r('awaiting_approval'))).toMatchObject({ approve: false });
    expect(rolloutActions(admin, r('awaiting_approval', 'user:alma'))).toMatchObject({
      approve: false,
      ownRequest: true,
    });
    expect(rolloutActions(admin, r('running'))).toMatchObject({ approve: false });
  });
});

describe('settingsFacts', () => {
  it('says the settings in words', () => {
    const facts = Object.fromEntries(
      settingsFacts({
        canary: 1,
        batches: [10, 50, 100],
        success_threshold_pct: 100,
        bake_s: 0,
        abort_failure_pct: 20,
        abort_min_results: 10,
        delivery_deadline_s: 86_400,
        install_deadline_s: 1_800,
        max_concurrent_downloads: 0,
        maintenance_window: null,
      }),
    );
    expect(facts).toMatchObject({
      Canary: '1 device',
      'Bake time': 'none',
      'Delivery deadline': '1 d',
      'Install deadline': '30 min',
      'Download cap': 'no cap',
      'Maintenance window': 'any time',
    });
    expect(facts['Abort rule']).toMatch(/once 10 results/);
  });
});

describe('rolloutOf', () => {
  it('names the rollout of a rollout approval only', () => {
    const req = (r: unknown) => r as ApprovalView['request'];
    expect(rolloutOf({ kind: 'rollout', request: req({ rollout: 7, release_id: 2 }) })).toBe(7);
    expect(rolloutOf({ kind: 'command', request: req({ rollout: 7 }) })).toBeNull();
    expect(rolloutOf({ kind: 'rollout', request: req({ rollout: '7' }) })).toBeNull();
    expect(rolloutOf({ kind: 'rollout', request: req(null) })).toBeNull();
  });
});
