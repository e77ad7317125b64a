// The live event stream (`GET /api/v1/events`): one connection for the whole app, watching
// the union of the devices that the mounted views show. It reconnects with backoff when the
// server ends it (as it does when the access token expires) and with the new id list when
// the watched set changes.

import { backoffDelay } from '../lib/backoff';
import { type ApiClient, ApiError, api } from './client';
import { readEvents } from './sse';
import type { CommandSummary, DeviceDetails, DeviceSummary, FleetSummary } from './types';

export interface LiveHandlers {
  fleet?: (s: FleetSummary) => void;
  device?: (d: DeviceSummary) => void;
  /** New capabilities or unit states of a watched device. */
  details?: (d: DeviceDetails) => void;
  command?: (c: CommandSummary) => void;
}

/** `idle`: nothing watched; `connecting`; `live`; `retrying`: waiting to reconnect. */
export type LiveStatus = 'idle' | 'connecting' | 'live' | 'retrying';

/** The server accepts at most this many ids. */
export const MAX_WATCHED = 500;
/** Settle time before a new watched set reconnects, so a page change reconnects once. */
const SETTLE_MS = 80;

interface Subscription {
  devices: readonly string[];
  handlers: LiveHandlers;
}

export interface LiveOptions {
  random?: () => number;
}

export function createLive(client: ApiClient, opts: LiveOptions = {}) {
  const subs = new Set<Subscription>();
  const statusListeners = new Set<(s: LiveStatus) => void>();
  let status: LiveStatus = 'idle';
  let key: string | null = null;
  let conn: AbortController | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let attempt = 0;

  function setStatus(s: LiveStatus): void {
    if (s === status) return;
    status = s;
    for (const l of statusListeners) l(s);
  }

  function watched(): string[] {
    const ids = new Set<string>();
    for (const s of subs) for (const id of s.devices) ids.add(id);
    return [...ids].sort().slice(0, MAX_WATCHED);
  }

  function dispatch(event: string, data: string): void {
    let value: unknown;
    try {
      value = JSON.parse(data);
    } catch {
      return;
    }
    for (const s of [...subs]) {
      if (event === 'fleet') s.handlers.fleet?.(value as FleetSummary);
      else if (event === 'device') s.handlers.device?.(value as DeviceSummary);
      else if (event === 'details') s.handlers.details?.(value as DeviceDetails);
      else if (event === 'command') s.handlers.command?.(value as CommandSummary);
    }
  }

  function stop(): void {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    conn?.abort();
    conn = null;
  }

  function later(ms: number): void {
    if (timer !== undefined) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      void connect();
    }, ms);
  }

  async function connect(): Promise<void> {
    stop();
    if (subs.size === 0 || !client.signedIn()) {
      key = null;
      setStatus('idle');
      return;
    }
    const ids = watched();
    key = ids.join(',');
    const ctrl = new AbortController();
    conn = ctrl;
    setStatus('connecting');
    try {
      const resp = await client.raw('GET', '/api/v1/events', {
        query: { devices: ids.length > 0 ? ids.join(',') : undefined },
        signal: ctrl.signal,
        accept: 'text/event-stream',
      });
      if (!resp.body) throw new ApiError(resp.status, 'No stream', 'the stream has no body');
      for await (const ev of readEvents(resp.body, ctrl.signal)) {
        if (status !== 'live') {
          setStatus('live');
          attempt = 0;
        }
        dispatch(ev.event, ev.data);
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
      if (e instanceof ApiError && e.status === 401) {
        // The client could not refresh and has ended the session.
        setStatus('idle');
        return;
      }
    }
    if (ctrl.signal.aborted) return;
    conn = null;
    setStatus('retrying');
    later(backoffDelay(attempt++, opts.random));
  }

  /** Reconnects if the watched set differs from the connected one. */
  function reconcile(): void {
    const next = subs.size === 0 ? null : watched().join(',');
    if (next === key && (conn !== null || timer !== undefined)) return;
    if (next === null) {
      stop();
      key = null;
      setStatus('idle');
      return;
    }
    attempt = 0;
    later(SETTLE_MS);
  }

  return {
    /** Receives events for `devices` (and every `fleet` event) until the returned function is
     * called. */
    watch(devices: readonly string[], handlers: LiveHandlers): () => void {
      const sub: Subscription = { devices, handlers };
      subs.add(sub);
      reconcile();
      return () => {
        subs.delete(sub);
        reconcile();
      };
    },
    /** Drops the connection (sign-out); watching again reconnects. */
    reset(): void {
      stop();
      key = null;
      attempt = 0;
      setStatus('idle');
    },
    status: () => status,
    onStatus(listener: (s: LiveStatus) => void): () => void {
      statusListeners.add(listener);
      return () => statusListeners.delete(listener);
    },
  };
}

export type Live = ReturnType<typeof createLive>;

/** The app's one live stream. */
export const live = createLive(api);
