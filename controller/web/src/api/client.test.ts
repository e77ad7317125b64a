import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  ApiError,
  apiUrl,
  cookieValue,
  CSRF_COOKIE,
  createClient,
  NETWORK_ERROR,
  problemOf,
  type SessionEnd,
} from './client';

interface Call {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: string | undefined;
  credentials: RequestCredentials | undefined;
}

type Reply = Response | Error | ((call: Call) => Response);

function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'content-type': 'application/json', ...headers },
  });
}

function problem(
  status: number,
  detail: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
) {
  return new Response(JSON.stringify({ type: 'about:blank', title: 'Error', status, detail, ...extra }), {
    status,
    headers: { 'content-type': 'application/problem+json', ...headers },
  });
}

const tokens = (access: string, expires_in = 900) =>
  json({ mfa_required: false, access_token: access, token_type: 'Bearer', expires_in });

/** A fetch double that answers from a queue and records every call. */
function fakeFetch(replies: Reply[]) {
  const calls: Call[] = [];
  const fn = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const call: Call = {
      url: String(input),
      method: init?.method ?? 'GET',
      headers: { ...(init?.headers as Record<string, string>) },
      body: init?.body as string | undefined,
      credentials: init?.credentials,
    };
    calls.push(call);
    const r = replies.shift();
    if (r === undefined) throw new Error(`unexpected request ${call.method} ${call.url}`);
    if (r instanceof Error) throw r;
    return typeof r === 'function' ? r(call) : r;
  });
  return { fn, calls };
}

function setup(replies: Reply[], csrf: string | null = 'csrf-1') {
  const f = fakeFetch(replies);
  const ended: SessionEnd[] = [];
  const client = createClient({
    fetch: f.fn as unknown as typeof fetch,
    csrfToken: () => csrf,
    exclusive: (task) => task(),
  });
  client.onSessionEnd((why) => ended.push(why));
  return { client, calls: f.calls, ended };
}

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(() => {
  vi.useRealTimers();
});

describe('helpers', () => {
  it('builds URLs without empty parameters', () => {
    expect(apiUrl('/api/v1/devices')).toBe('/api/v1/devices');
    expect(apiUrl('/api/v1/devices', { q: 'pi 1', status: undefined, label: '', limit: 50, x: null })).toBe(
      '/api/v1/devices?q=pi+1&limit=50',
    );
    expect(apiUrl('/x', { label: 'site=lobby,role=kiosk' })).toBe('/x?label=site%3Dlobby%2Crole%3Dkiosk');
  });

  it('reads cookies by exact name', () => {
    const jar = 'a=1; __Host-pifleet_csrf_x=no; pifleet_csrf=unprefixed; __Host-pifleet_csrf=abc123; b=';
    expect(CSRF_COOKIE).toBe('__Host-pifleet_csrf');
    expect(cookieValue(jar, CSRF_COOKIE)).toBe('abc123');
    expect(cookieValue('pifleet_csrf=unprefixed', CSRF_COOKIE)).toBeNull();
    expect(cookieValue(jar, 'b')).toBeNull();
    expect(cookieValue(jar, 'missing')).toBeNull();
    expect(cookieValue('', CSRF_COOKIE)).toBeNull();
  });

  it('reads problem documents and Retry-After', async () => {
    const e = await problemOf(problem(423, 'locked for now', { code: 'locked' }, { 'retry-after': '120' }));
    expect(e).toBeInstanceOf(ApiError);
    expect(e.status).toBe(423);
    expect(e.detail).toBe('locked for now');
    expect(e.message).toBe('locked for now');
    expect(e.code).toBe('locked');
    expect(e.retryAfter).toBe(120);
    const plain = await problemOf(new Response('oops', { status: 502, statusText: 'Bad Gateway' }));
    expect(plain.detail).toBe('Bad Gateway');
    expect(plain.retryAfter).toBeUndefined();
  });
});

describe('tokens', () => {
  it('keeps the access token in memory and sends it as a bearer token', async () => {
    const { client, calls } = setup([json({ name: 'admin' })]);
    expect(client.signedIn()).toBe(false);
    expect(client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 })).toBe(true);
    expect(client.signedIn()).toBe(true);
    await expect(client.get('/api/v1/whoami')).resolves.toEqual({ name: 'admin' });
    expect(calls[0]?.headers.authorization).toBe('Bearer A1');
    expect(calls[0]?.credentials).toBe('same-origin');
  });

  it('does not accept a response without an access token (MFA step)', () => {
    const { client } = setup([]);
    expect(client.accept({ mfa_required: true, mfa_token: 'm' })).toBe(false);
    expect(client.signedIn()).toBe(false);
  });

  it('never touches browser storage', async () => {
    const storage = { setItem: vi.fn(), getItem: vi.fn(), removeItem: vi.fn() };
    vi.stubGlobal('localStorage', storage);
    vi.stubGlobal('sessionStorage', storage);
    try {
      const { client } = setup([tokens('A2'), json({})]);
      client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
      await client.refresh();
      await client.get('/api/v1/whoami');
      expect(storage.setItem).not.toHaveBeenCalled();
      expect(storage.getItem).not.toHaveBeenCalled();
    } finally {
      vi.unstubAllGlobals();
    }
  });

  it('refreshes from the cookie with the CSRF header and no body', async () => {
    const { client, calls } = setup([tokens('A2')]);
    await expect(client.refresh()).resolves.toBe(true);
    const c = calls[0];
    expect(c?.url).toBe('/api/v1/auth/refresh');
    expect(c?.method).toBe('POST');
    expect(c?.headers['x-csrf-token']).toBe('csrf-1');
    expect(c?.headers.authorization).toBeUndefined();
    expect(c?.body).toBeUndefined();
    expect(c?.credentials).toBe('same-origin');
    expect(client.signedIn()).toBe(true);
  });

  it('skips the refresh when there is no CSRF cookie (never signed in)', async () => {
    const { client, calls } = setup([], null);
    await expect(client.refresh()).resolves.toBe(false);
    expect(calls).toHaveLength(0);
  });

  it('runs one refresh for concurrent callers', async () => {
    const { client, calls } = setup([tokens('A2')]);
    const [a, b] = await Promise.all([client.refresh(), client.refresh()]);
    expect(a && b).toBe(true);
    expect(calls).toHaveLength(1);
  });

  it('refreshes before the access token expires', async () => {
    const { client, calls } = setup([tokens('A2', 900), json({ ok: true })]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    await vi.advanceTimersByTimeAsync(839_000);
    expect(calls).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(calls[0]?.url).toBe('/api/v1/auth/refresh');
    await client.get('/api/v1/x');
    expect(calls[1]?.headers.authorization).toBe('Bearer A2');
  });

  it('ends the session when the scheduled refresh is refused', async () => {
    const { client, ended } = setup([problem(401, 'the refresh token is invalid or expired; sign in again')]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 120 });
    await vi.advanceTimersByTimeAsync(90_000);
    expect(ended).toEqual(['expired']);
    expect(client.signedIn()).toBe(false);
  });

  it('retries a scheduled refresh that could not reach the server', async () => {
    const { client, calls, ended } = setup([new TypeError('Failed to fetch'), tokens('A2')]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    await vi.advanceTimersByTimeAsync(840_000);
    expect(calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(calls).toHaveLength(2);
    expect(ended).toEqual([]);
    expect(client.signedIn()).toBe(true);
  });
});

describe('401 handling', () => {
  it('refreshes and retries once on 401', async () => {
    const { client, calls, ended } = setup([
      problem(401, 'the access token is invalid or expired'),
      tokens('A2'),
      json({ total: 0, items: [] }),
    ]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    await expect(client.get('/api/v1/devices')).resolves.toEqual({ total: 0, items: [] });
    expect(calls.map((c) => c.url)).toEqual(['/api/v1/devices', '/api/v1/auth/refresh', '/api/v1/devices']);
    expect(calls[0]?.headers.authorization).toBe('Bearer A1');
    expect(calls[2]?.headers.authorization).toBe('Bearer A2');
    expect(ended).toEqual([]);
  });

  it('resends the body on the retry', async () => {
    const { client, calls } = setup([problem(401, 'expired'), tokens('A2'), json({ commands: [] }, 202)]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    await client.post('/api/v1/commands', { devices: ['pi-1'], action: { kind: 'ping' } });
    expect(calls[2]?.method).toBe('POST');
    expect(JSON.parse(calls[2]?.body ?? '')).toEqual({ devices: ['pi-1'], action: { kind: 'ping' } });
    expect(calls[2]?.headers['content-type']).toBe('application/json');
  });

  it('ends the session when the refresh fails, and surfaces the 401', async () => {
    const { client, calls, ended } = setup([
      problem(401, 'the session has ended; sign in again'),
      problem(401, 'the refresh token is invalid or expired; sign in again'),
    ]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    const err = await client.get('/api/v1/devices').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).status).toBe(401);
    expect((err as ApiError).detail).toBe('the session has ended; sign in again');
    expect(calls).toHaveLength(2);
    expect(ended).toEqual(['expired']);
    expect(client.signedIn()).toBe(false);
  });

  it('retries only once: a second 401 ends the session', async () => {
    const { client, calls, ended } = setup([problem(401, 'no'), tokens('A2'), problem(401, 'still no')]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    await expect(client.get('/api/v1/devices')).rejects.toMatchObject({ status: 401, detail: 'still no' });
    expect(calls).toHaveLength(3);
    expect(ended).toEqual(['expired']);
  });

  it('does not refresh for unauthenticated requests (sign-in)', async () => {
    const { client, calls, ended } = setup([problem(401, 'invalid user name or password')]);
    await expect(
      client.post('/api/v1/auth/login', { username: 'a', password: 'b', cookie: true }, { auth: false }),
    ).rejects.toMatchObject({ status: 401, detail: 'invalid user name or password' });
    expect(calls).toHaveLength(1);
    expect(calls[0]?.headers.authorization).toBeUndefined();
    expect(ended).toEqual([]);
  });

  it('refreshes once for concurrent requests that all get 401', async () => {
    let refreshes = 0;
    const route = (call: Call): Response => {
      if (call.url === '/api/v1/auth/refresh') {
        refreshes++;
        return tokens('A2');
      }
      return call.headers.authorization === 'Bearer A2' ? json({ url: call.url }) : problem(401, 'expired');
    };
    const { client, ended } = setup(Array.from({ length: 10 }, () => route));
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    const got = await Promise.all([
      client.get('/api/v1/a'),
      client.get('/api/v1/b'),
      client.get('/api/v1/c'),
    ]);
    expect(got).toEqual([{ url: '/api/v1/a' }, { url: '/api/v1/b' }, { url: '/api/v1/c' }]);
    expect(refreshes).toBe(1);
    expect(ended).toEqual([]);
  });
});

describe('errors', () => {
  it('surfaces problem details', async () => {
    const { client } = setup([problem(400, 'label key "Bad" must be 1-63 of a-z 0-9 _ . - /')]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    await expect(client.put('/api/v1/devices/pi-1/labels', { labels: { Bad: 'x' } })).rejects.toMatchObject({
      status: 400,
      detail: 'label key "Bad" must be 1-63 of a-z 0-9 _ . - /',
    });
  });

  it('reports rate limits with the wait', async () => {
    const { client } = setup([problem(429, 'too many sign-in requests', {}, { 'retry-after': '7' })]);
    await expect(client.post('/api/v1/auth/login', {}, { auth: false })).rejects.toMatchObject({
      status: 429,
      retryAfter: 7,
    });
  });

  it('turns a network failure into a status-0 error', async () => {
    const { client } = setup([new TypeError('Failed to fetch')]);
    await expect(client.get('/api/v1/devices', { auth: false })).rejects.toMatchObject({
      status: NETWORK_ERROR,
    });
  });

  it('lets an abort through untouched', async () => {
    const { client } = setup([new DOMException('aborted', 'AbortError')]);
    await expect(client.get('/api/v1/devices')).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('returns nothing for 204', async () => {
    const { client } = setup([new Response(null, { status: 204 })]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    await expect(client.del('/api/v1/tokens/abc')).resolves.toBeUndefined();
  });
});

describe('sign-out', () => {
  it('forgets the token and tells the listeners', () => {
    const { client, ended } = setup([]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    client.end('signed_out');
    expect(client.signedIn()).toBe(false);
    expect(ended).toEqual(['signed_out']);
  });
});

describe('uploads', () => {
  it('sends a file as the body with its own type, and again after a refresh', async () => {
    const { client, calls } = setup([problem(401, 'expired'), tokens('A2'), json({ id: 7 }, 201)]);
    client.accept({ mfa_required: false, access_token: 'A1', expires_in: 900 });
    const file = new Blob(['archive bytes']);
    await expect(
      client.post('/api/v1/releases', undefined, {
        query: { app: 'web', version: '1.0' },
        upload: { data: file, type: 'application/octet-stream' },
      }),
    ).resolves.toEqual({ id: 7 });
    const [first, , retry] = calls;
    expect(first?.url).toBe('/api/v1/releases?app=web&version=1.0');
    expect(first?.headers['content-type']).toBe('application/octet-stream');
    expect(first?.body).toBe(file);
    expect(retry?.body).toBe(file);
    expect(retry?.headers.authorization).toBe('Bearer A2');
  });
});
