import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { backoffDelay } from '../lib/backoff';
import { type ApiClient, ApiError, type RequestOptions } from './client';
import { createLive, MAX_WATCHED } from './live';

interface Conn {
  query: RequestOptions['query'];
  signal: AbortSignal | undefined;
  push: (text: string) => void;
  close: () => void;
}

/** A client whose `raw` opens controllable streams. */
function fakeClient(opts: { fail?: ApiError[] } = {}) {
  const conns: Conn[] = [];
  const raw = vi.fn(async (_m: string, _p: string, o: RequestOptions = {}) => {
    const err = opts.fail?.shift();
    if (err) throw err;
    let ctrl!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        ctrl = c;
      },
    });
    conns.push({
      query: o.query,
      signal: o.signal,
      push: (t) => ctrl.enqueue(new TextEncoder().encode(t)),
      close: () => ctrl.close(),
    });
    return new Response(body, { headers: { 'content-type': 'text/event-stream' } });
  });
  const client = { raw, signedIn: () => true } as unknown as ApiClient;
  return { client, conns, raw };
}

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(() => {
  vi.useRealTimers();
});

describe('live stream', () => {
  it('connects once the watched set settles and dispatches events', async () => {
    const { client, conns } = fakeClient();
    const live = createLive(client, { random: () => 0.5 });
    const fleet = vi.fn();
    const device = vi.fn();
    const command = vi.fn();
    const details = vi.fn();
    live.watch(['pi-2', 'pi-1'], { fleet, device, command, details });
    expect(conns).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(100);
    expect(conns).toHaveLength(1);
    expect(conns[0]?.query).toEqual({ devices: 'pi-1,pi-2' });
    expect(live.status()).toBe('connecting');

    conns[0]?.push('event: fleet\ndata: {"enrolled":2,"online":1,"offline":1,"alerting":0,"revoked":0}\n\n');
    conns[0]?.push(': keep-alive\n\nevent: device\ndata: {"id":"pi-1","status":"offline"}\n\n');
    conns[0]?.push(
      'event: command\ndata: {"id":"c1","status":"succeeded"}\n\nevent: device\ndata: not json\n\n',
    );
    conns[0]?.push(
      'event: details\ndata: {"id":"pi-2","services":[],"services_at":5,"capabilities":null}\n\n',
    );
    await vi.advanceTimersByTimeAsync(0);
    expect(live.status()).toBe('live');
    expect(fleet).toHaveBeenCalledWith({ enrolled: 2, online: 1, offline: 1, alerting: 0, revoked: 0 });
    expect(device).toHaveBeenCalledTimes(1);
    expect(device).toHaveBeenCalledWith({ id: 'pi-1', status: 'offline' });
    expect(command).toHaveBeenCalledWith({ id: 'c1', status: 'succeeded' });
    expect(details).toHaveBeenCalledWith({ id: 'pi-2', services: [], services_at: 5, capabilities: null });
  });

  it('reconnects with the new id list when the watched set changes', async () => {
    const { client, conns } = fakeClient();
    const live = createLive(client);
    const stop = live.watch(['a1x'], {});
    await vi.advanceTimersByTimeAsync(100);
    live.watch(['b2y'], {});
    await vi.advanceTimersByTimeAsync(100);
    expect(conns).toHaveLength(2);
    expect(conns[0]?.signal?.aborted).toBe(true);
    expect(conns[1]?.query).toEqual({ devices: 'a1x,b2y' });
    stop();
    await vi.advanceTimersByTimeAsync(100);
    expect(conns).toHaveLength(3);
    expect(conns[2]?.query).toEqual({ devices: 'b2y' });
  });

  it('does not reconnect when the same set is watched again', async () => {
    const { client, conns } = fakeClient();
    const live = createLive(client);
    const stop = live.watch(['a1x'], {});
    await vi.advanceTimersByTimeAsync(100);
    const again = live.watch(['a1x'], {});
    await vi.advanceTimersByTimeAsync(100);
    expect(conns).toHaveLength(1);
    again();
    stop();
    await vi.advanceTimersByTimeAsync(100);
    expect(conns[0]?.signal?.aborted).toBe(true);
    expect(live.status()).toBe('idle');
  });

  it('watches only the fleet when no device is watched, and caps the id list', async () => {
    const { client, conns } = fakeClient();
    const live = createLive(client);
    live.watch([], {});
    await vi.advanceTimersByTimeAsync(100);
    expect(conns[0]?.query).toEqual({ devices: undefined });
    const many = Array.from({ length: 600 }, (_, i) => `pi-${String(i).padStart(3, '0')}`);
    live.watch([...many, ...many], {});
    await vi.advanceTimersByTimeAsync(100);
    const ids = String(conns[1]?.query?.devices).split(',');
    expect(ids).toHaveLength(MAX_WATCHED);
    expect(new Set(ids).size).toBe(MAX_WATCHED);
  });

  it('reconnects with backoff when the server ends the stream', async () => {
    const { client, conns } = fakeClient();
    const live = createLive(client, { random: () => 1 });
    live.watch(['pi-1'], {});
    await vi.advanceTimersByTimeAsync(100);
    conns[0]?.push('event: fleet\ndata: {}\n\n');
    await vi.advanceTimersByTimeAsync(0);
    conns[0]?.close();
    await vi.advanceTimersByTimeAsync(0);
    expect(live.status()).toBe('retrying');
    await vi.advanceTimersByTimeAsync(backoffDelay(0, () => 1) - 1);
    expect(conns).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(conns).toHaveLength(2);
    // Without an event in between, the next wait is longer.
    conns[1]?.close();
    await vi.advanceTimersByTimeAsync(backoffDelay(1, () => 1) - 1);
    expect(conns).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(conns).toHaveLength(3);
  });

  it('retries after errors but stops when the session has ended', async () => {
    const { client, conns, raw } = fakeClient({
      fail: [new ApiError(404, 'Not Found', 'no such route'), new ApiError(401, 'Unauthorized', 'expired')],
    });
    const live = createLive(client, { random: () => 1 });
    live.watch(['pi-1'], {});
    await vi.advanceTimersByTimeAsync(100);
    expect(live.status()).toBe('retrying');
    await vi.advanceTimersByTimeAsync(1_000);
    expect(raw).toHaveBeenCalledTimes(2);
    expect(live.status()).toBe('idle');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(raw).toHaveBeenCalledTimes(2);
    expect(conns).toHaveLength(0);
  });

  it('reports its status to listeners and resets on sign-out', async () => {
    const { client, conns } = fakeClient();
    const live = createLive(client);
    const seen: string[] = [];
    live.onStatus((s) => seen.push(s));
    live.watch(['pi-1'], {});
    await vi.advanceTimersByTimeAsync(100);
    conns[0]?.push('data: x\n\n');
    await vi.advanceTimersByTimeAsync(0);
    live.reset();
    expect(seen).toEqual(['connecting', 'live', 'idle']);
    expect(conns[0]?.signal?.aborted).toBe(true);
  });
});

describe('backoffDelay', () => {
  it('grows exponentially with jitter and a cap', () => {
    expect(backoffDelay(0, () => 0)).toBe(500);
    expect(backoffDelay(0, () => 1)).toBe(1_000);
    expect(backoffDelay(3, () => 1)).toBe(8_000);
    expect(backoffDelay(10, () => 1)).toBe(30_000);
    expect(backoffDelay(100, () => 0)).toBe(15_000);
    for (let i = 0; i < 20; i++) {
      const d = backoffDelay(i);
      expect(d).toBeGreaterThanOrEqual(500);
      expect(d).toBeLessThanOrEqual(30_000);
    }
  });
});
