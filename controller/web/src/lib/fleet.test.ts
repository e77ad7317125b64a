import { describe, expect, it } from 'vitest';
import type { CommandPage, CommandSummary, DevicePage, DeviceSummary } from '../api/types';
import {
  applyCommand,
  applyDevice,
  DEFAULT_FLEET_QUERY,
  fleetQueryString,
  isCommandStatus,
  nextSort,
  pageCount,
  parseFleetQuery,
} from './fleet';

function device(id: string, patch: Partial<DeviceSummary> = {}): DeviceSummary {
  return {
    id,
    labels: {},
    status: 'online',
    hostname: id,
    model: null,
    agent_version: '0.1.0',
    last_seen: 1_000,
    enrolled_at: 0,
    cpu_pct: 10,
    mem_used: 1,
    mem_total: 2,
    temp_c: 40,
    throttled: 0,
    disk_used: 1,
    disk_total: 2,
    uptime_s: 5,
    alerts: [],
    needs_review: false,
    review_reason: null,
    ...patch,
  };
}

function command(id: string, patch: Partial<CommandSummary> = {}): CommandSummary {
  return {
    id,
    device: 'pi-1',
    action: { kind: 'ping' },
    status: 'queued',
    reason: null,
    created_at: 1_000,
    expires_at: 2_000,
    sent_at: null,
    accepted_at: null,
    started_at: null,
    finished_at: null,
    exit_code: null,
    duration_ms: null,
    stdout_len: null,
    stderr_len: null,
    ...patch,
  };
}

describe('fleet query in the URL', () => {
  it('reads defaults from an empty query', () => {
    expect(parseFleetQuery('')).toEqual(DEFAULT_FLEET_QUERY);
    expect(fleetQueryString(DEFAULT_FLEET_QUERY)).toBe('');
  });

  it('round-trips every field', () => {
    const q = {
      q: 'kiosk 1',
      status: 'offline' as const,
      label: 'site=lobby,role=kiosk',
      sort: 'temperature' as const,
      order: 'desc' as const,
      page: 3,
    };
    const s = fleetQueryString(q);
    expect(s.startsWith('?')).toBe(true);
    expect(parseFleetQuery(s)).toEqual(q);
  });

  it('ignores invalid values', () => {
    expect(parseFleetQuery('?status=exploded&sort=evil&order=sideways&page=-2')).toEqual(DEFAULT_FLEET_QUERY);
    expect(parseFleetQuery('?page=2.5').page).toBe(1);
  });

  it('sorts a new column (numbers busiest first) and flips the same column', () => {
    expect(nextSort(DEFAULT_FLEET_QUERY, 'hostname')).toEqual({ sort: 'hostname', order: 'asc' });
    expect(nextSort(DEFAULT_FLEET_QUERY, 'cpu')).toEqual({ sort: 'cpu', order: 'desc' });
    expect(nextSort({ ...DEFAULT_FLEET_QUERY, sort: 'cpu', order: 'desc' }, 'cpu')).toEqual({
      sort: 'cpu',
      order: 'asc',
    });
    expect(nextSort({ ...DEFAULT_FLEET_QUERY, sort: 'cpu', order: 'asc' }, 'cpu')).toEqual({
      sort: 'cpu',
      order: 'desc',
    });
  });

  it('counts pages', () => {
    expect(pageCount(0)).toBe(1);
    expect(pageCount(50)).toBe(1);
    expect(pageCount(51)).toBe(2);
    expect(pageCount(10_000)).toBe(200);
    expect(pageCount(25, 10)).toBe(3);
  });
});

describe('applyDevice', () => {
  const page: DevicePage = { total: 3, items: [device('a'), device('b'), device('c')] };

  it('replaces the device in place', () => {
    const next = applyDevice(page, device('b', { cpu_pct: 99, status: 'offline' }));
    expect(next.items.map((d) => d.id)).toEqual(['a', 'b', 'c']);
    expect(next.items[1]).toMatchObject({ cpu_pct: 99, status: 'offline' });
    expect(next.total).toBe(3);
    expect(page.items[1]?.cpu_pct).toBe(10);
  });

  it('returns the same page for a device not on it', () => {
    expect(applyDevice(page, device('z'))).toBe(page);
  });
});

describe('applyCommand', () => {
  const page: CommandPage = { total: 2, items: [command('2', { created_at: 2_000 }), command('1')] };
  const view = { offset: 0, limit: 50 };

  it('updates a listed command', () => {
    const next = applyCommand(page, command('1', { status: 'succeeded', exit_code: 0 }), view);
    expect(next.items[1]).toMatchObject({ status: 'succeeded', exit_code: 0 });
    expect(next.total).toBe(2);
  });

  it('puts a new matching command on top of the first page', () => {
    const next = applyCommand(page, command('3', { created_at: 3_000 }), view);
    expect(next.items.map((c) => c.id)).toEqual(['3', '2', '1']);
    expect(next.total).toBe(3);
  });

  it('leaves out a new command of another action than the filter', () => {
    const reboot = command('3', { created_at: 3_000, action: { kind: 'reboot' } });
    expect(applyCommand(page, reboot, { ...view, action: 'ping' })).toBe(page);
    expect(applyCommand(page, reboot, { ...view, action: 'reboot' }).items[0]?.id).toBe('3');
  });

  it('keeps the page size', () => {
    const next = applyCommand(page, command('3', { created_at: 3_000 }), { offset: 0, limit: 2 });
    expect(next.items.map((c) => c.id)).toEqual(['3', '2']);
    expect(next.total).toBe(3);
  });

  it('leaves other pages and non-matching commands alone', () => {
    expect(applyCommand(page, command('3', { created_at: 3_000 }), { offset: 50, limit: 50 })).toBe(page);
    expect(
      applyCommand(page, command('3', { device: 'pi-9', created_at: 3_000 }), { ...view, device: 'pi-1' }),
    ).toBe(page);
    expect(
      applyCommand(page, command('3', { status: 'running', created_at: 3_000 }), {
        ...view,
        status: 'failed',
      }),
    ).toBe(page);
    expect(applyCommand(page, command('0', { created_at: 10 }), view)).toBe(page);
  });

  it('drops a listed command that leaves the status filter', () => {
    const queued: CommandPage = { total: 2, items: [command('2'), command('1')] };
    const next = applyCommand(queued, command('1', { status: 'sent' }), { ...view, status: 'queued' });
    expect(next.items.map((c) => c.id)).toEqual(['2']);
    expect(next.total).toBe(1);
  });

  it('knows the statuses', () => {
    expect(isCommandStatus('succeeded')).toBe(true);
    expect(isCommandStatus('done')).toBe(false);
  });
});
