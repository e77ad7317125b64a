// State of the fleet table and the command lists: the URL query they live in, and how live
// events change a loaded page (pure functions, so they are unit-tested).

import type {
  ActionKind,
  CommandPage,
  CommandStatus,
  CommandSummary,
  DevicePage,
  DeviceSort,
  DeviceStatus,
  DeviceSummary,
  SortOrder,
} from '../api/types';
import { COMMAND_STATUSES } from '../api/types';

export const PAGE_SIZE = 50;

const SORTS: readonly DeviceSort[] = ['id', 'hostname', 'last_seen', 'cpu', 'memory', 'temperature'];
const STATUSES: readonly DeviceStatus[] = ['online', 'offline', 'revoked'];

/** The fleet table's filters, order and page, as kept in the URL. */
export interface FleetQuery {
  q: string;
  status: DeviceStatus | '';
  label: string;
  sort: DeviceSort;
  order: SortOrder;
  /** 1-based. */
  page: number;
}

export const DEFAULT_FLEET_QUERY: FleetQuery = {
  q: '',
  status: '',
  label: '',
  sort: 'id',
  order: 'asc',
  page: 1,
};

function oneOf<T extends string>(v: string | null, allowed: readonly T[], fallback: T): T {
  return v !== null && (allowed as readonly string[]).includes(v) ? (v as T) : fallback;
}

export function parseFleetQuery(search: string): FleetQuery {
  const p = new URLSearchParams(search);
  const page = Number(p.get('page'));
  return {
    q: p.get('q') ?? '',
    status: oneOf<DeviceStatus | ''>(p.get('status'), STATUSES, ''),
    label: p.get('label') ?? '',
    sort: oneOf(p.get('sort'), SORTS, 'id'),
    order: p.get('order') === 'desc' ? 'desc' : 'asc',
    page: Number.isInteger(page) && page >= 1 ? page : 1,
  };
}

/** The query string of a fleet query, without defaults (`''` when all are defaults). */
export function fleetQueryString(q: FleetQuery): string {
  const p = new URLSearchParams();
  if (q.q) p.set('q', q.q);
  if (q.status) p.set('status', q.status);
  if (q.label) p.set('label', q.label);
  if (q.sort !== 'id') p.set('sort', q.sort);
  if (q.order !== 'asc') p.set('order', q.order);
  if (q.page > 1) p.set('page', String(q.page));
  const s = p.toString();
  return s ? `?${s}` : '';
}

/** The order after clicking the header of `sort`: a new column starts ascending (numbers
 * descending, busiest first); the same column flips. */
export function nextSort(q: FleetQuery, sort: DeviceSort): Pick<FleetQuery, 'sort' | 'order'> {
  if (q.sort === sort) return { sort, order: q.order === 'asc' ? 'desc' : 'asc' };
  const numeric = sort === 'cpu' || sort === 'memory' || sort === 'temperature' || sort === 'last_seen';
  return { sort, order: numeric ? 'desc' : 'asc' };
}

export function pageCount(total: number, size = PAGE_SIZE): number {
  return Math.max(1, Math.ceil(total / size));
}

/** A loaded page with a device replaced by its newer state; the same page object when the
 * device is not on it (so nothing re-renders). */
export function applyDevice(page: DevicePage, d: DeviceSummary): DevicePage {
  const i = page.items.findIndex((x) => x.id === d.id);
  if (i < 0) return page;
  const items = page.items.slice();
  items[i] = d;
  return { ...page, items };
}

export interface CommandView {
  device?: string;
  status?: CommandStatus;
  action?: ActionKind;
  /** 0-based offset of the page. */
  offset: number;
  limit: number;
}

function matches(c: CommandSummary, v: CommandView): boolean {
  return (
    (!v.device || c.device === v.device) &&
    (!v.status || c.status === v.status) &&
    (!v.action || c.action.kind === v.action)
  );
}

/** A loaded command page after a `command` event: a listed command is updated (or dropped
 * when it no longer matches a status filter); a new one that matches goes on top of the
 * first page. */
export function applyCommand(page: CommandPage, c: CommandSummary, v: CommandView): CommandPage {
  const i = page.items.findIndex((x) => x.id === c.id);
  if (i >= 0) {
    const items = page.items.slice();
    if (matches(c, v)) {
      items[i] = c;
      return { ...page, items };
    }
    items.splice(i, 1);
    return { total: Math.max(0, page.total - 1), items };
  }
  if (v.offset !== 0 || !matches(c, v)) return page;
  const newest = page.items[0];
  if (newest && c.created_at < newest.created_at) return page;
  return { total: page.total + 1, items: [c, ...page.items].slice(0, v.limit) };
}

/** The action kinds, as the command list's `action` filter names them. */
export const ACTION_KINDS: readonly ActionKind[] = [
  'ping',
  'service',
  'journal',
  'script',
  'set_interval',
  'reboot',
];

export function isActionKind(s: string): s is ActionKind {
  return (ACTION_KINDS as readonly string[]).includes(s);
}

export function isCommandStatus(s: string): s is CommandStatus {
  return (COMMAND_STATUSES as readonly string[]).includes(s);
}
