// The HTTP client of the admin API. The access token lives only in this module's memory
// (never in any browser storage); the refresh token is an HttpOnly cookie
// (`__Secure-pifleet_refresh`) the browser sends to /api/v1/auth/refresh, guarded by the
// double-submit `__Host-pifleet_csrf` cookie. Requests that get a 401 refresh once and retry
// once; a refresh that fails ends the session.

import type { TokenResponse } from './types';

/** An API failure, from an RFC 9457 problem document when the server sent one. */
export class ApiError extends Error {
  readonly status: number;
  readonly title: string;
  readonly detail: string;
  readonly code: string | undefined;
  /** Seconds to wait before trying again (423, 429). */
  readonly retryAfter: number | undefined;

  constructor(status: number, title: string, detail: string, code?: string, retryAfter?: number) {
    super(detail);
    this.name = 'ApiError';
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Status 0: the request never got an answer. */
export const NETWORK_ERROR = 0;

/** Why a session ended. */
export type SessionEnd = 'expired' | 'signed_out';

export type Query = Record<string, string | number | boolean | null | undefined>;

export interface RequestOptions {
  query?: Query;
  body?: unknown;
  /** A body sent as it is (a file to upload) instead of JSON. */
  upload?: { data: Blob; type: string };
  signal?: AbortSignal;
  /** Send the access token and refresh on 401 (default true). */
  auth?: boolean;
  /** The Accept header (default JSON). */
  accept?: string;
}

export interface ClientOptions {
  fetch?: typeof fetch;
  /** The `__Host-pifleet_csrf` cookie's value. */
  csrfToken?: () => string | null;
  now?: () => number;
  /** Runs refreshes one at a time across tabs: two tabs presenting the same refresh token
   * would look like token theft and end the session. */
  exclusive?: <T>(task: () => Promise<T>) => Promise<T>;
}

/** The CSRF cookie: `__Host-` (Secure, `Path=/`, no Domain), so only the controller's own
 * host can set it. */
export const CSRF_COOKIE = '__Host-pifleet_csrf';
const REFRESH_LOCK = 'pifleet-refresh';
/** Retry a scheduled refresh that failed for lack of network after this long. */
const REFRESH_RETRY_MS = 10_000;

/** A cookie's value from a `document.cookie` string. */
export function cookieValue(cookies: string, name: string): string | null {
  for (const part of cookies.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) {
      const v = part.slice(eq + 1).trim();
      return v === '' ? null : v;
    }
  }
  return null;
}

function browserCsrf(): string | null {
  return typeof document === 'undefined' ? null : cookieValue(document.cookie, CSRF_COOKIE);
}

function browserExclusive<T>(task: () => Promise<T>): Promise<T> {
  const locks = typeof navigator === 'undefined' ? undefined : navigator.locks;
  return locks ? (locks.request(REFRESH_LOCK, task) as Promise<T>) : task();
}

/** The URL of an API path with its query (empty and absent values left out). */
export function apiUrl(path: string, query?: Query): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null && v !== '') params.append(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

function isAbort(e: unknown): boolean {
  return e instanceof DOMException && e.name === 'AbortError';
}

/** Turns a failed response into an [`ApiError`], reading its problem document if any. */
export async function problemOf(resp: Response): Promise<ApiError> {
  const retry = Number(resp.headers.get('retry-after'));
  const retryAfter = Number.isFinite(retry) && retry > 0 ? retry : undefined;
  let title = resp.statusText || `HTTP ${resp.status}`;
  let detail = '';
  let code: string | undefined;
  if ((resp.headers.get('content-type') ?? '').includes('json')) {
    try {
      const doc = (await resp.json()) as { title?: unknown; detail?: unknown; code?: unknown };
      if (typeof doc.title === 'string' && doc.title) title = doc.title;
      if (typeof doc.detail === 'string') detail = doc.detail;
      if (typeof doc.code === 'string') code = doc.code;
    } catch {
      // Not JSON after all: the status line says enough.
    }
  }
  return new ApiError(resp.status, title, detail || title, code, retryAfter);
}

export type ApiClient = ReturnType<typeof createClient>;

export function createClient(opts: ClientOptions = {}) {
  const doFetch = opts.fetch ?? ((input: RequestInfo | URL, init?: RequestInit) => fetch(input, init));
  const csrfToken = opts.csrfToken ?? browserCsrf;
  const now = opts.now ?? Date.now;
  const exclusive = opts.exclusive ?? browserExclusive;

  let access: string | null = null;
  let expiresAt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let inflight: Promise<boolean> | null = null;
  const endListeners = new Set<(why: SessionEnd) => void>();

  function schedule(ms: number): void {
    if (timer !== undefined) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      refresh().then(
        (ok) => {
          if (!ok) end('expired');
        },
        () => {
          if (access && now() < expiresAt) schedule(REFRESH_RETRY_MS);
        },
      );
    }, ms);
  }

  /** Installs the tokens of a sign-in or refresh; false when the response holds none. */
  function accept(resp: TokenResponse): boolean {
    if (!resp.access_token) return false;
    access = resp.access_token;
    const ttl = Math.max(resp.expires_in ?? 60, 10);
    expiresAt = now() + ttl * 1000;
    // Refresh well before expiry: at three quarters of the lifetime, at most a minute early.
    schedule(Math.max(ttl * 0.75, ttl - 60) * 1000);
    return true;
  }

  function clear(): void {
    access = null;
    expiresAt = 0;
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
  }

  function end(why: SessionEnd): void {
    clear();
    for (const l of endListeners) l(why);
  }

  async function send(method: string, path: string, o: RequestOptions): Promise<Response> {
    const headers: Record<string, string> = { accept: o.accept ?? 'application/json' };
    if (o.body !== undefined) headers['content-type'] = 'application/json';
    if (o.upload) headers['content-type'] = o.upload.type;
    if (o.auth !== false && access) headers.authorization = `Bearer ${access}`;
    const init: RequestInit = { method, headers, credentials: 'same-origin' };
    if (o.body !== undefined) init.body = JSON.stringify(o.body);
    // A Blob (a File) is read from disk as it is sent, and can be sent again after a refresh.
    if (o.upload) init.body = o.upload.data;
    if (o.signal) init.signal = o.signal;
    try {
      return await doFetch(apiUrl(path, o.query), init);
    } catch (e) {
      if (isAbort(e)) throw e;
      throw new ApiError(
        NETWORK_ERROR,
        'Network error',
        'The controller cannot be reached. Check the connection and try again.',
      );
    }
  }

  async function refreshOnce(): Promise<boolean> {
    const csrf = csrfToken();
    if (!csrf) return false;
    // Cookie mode: no body at all (a body is read as an API client's `refresh_token`).
    const resp = await exclusive(() =>
      doFetch('/api/v1/auth/refresh', {
        method: 'POST',
        headers: { accept: 'application/json', 'x-csrf-token': csrf },
        credentials: 'same-origin',
      }),
    ).catch((e: unknown) => {
      throw new ApiError(NETWORK_ERROR, 'Network error', e instanceof Error ? e.message : 'offline');
    });
    if (!resp.ok) {
      clear();
      return false;
    }
    return accept((await resp.json()) as TokenResponse);
  }

  /** Gets a new access token from the refresh cookie; one refresh at a time. Resolves false
   * when the server refuses (the session is over); rejects when it cannot be reached. */
  function refresh(): Promise<boolean> {
    inflight ??= refreshOnce().finally(() => {
      inflight = null;
    });
    return inflight;
  }

  /** Sends a request; on 401 refreshes and retries once, and ends the session if that fails. */
  async function raw(method: string, path: string, o: RequestOptions = {}): Promise<Response> {
    const sentWith = access;
    let resp = await send(method, path, o);
    if (resp.status === 401 && o.auth !== false) {
      // Another request may have refreshed meanwhile: then just retry with the new token.
      const ok = access !== null && access !== sentWith ? true : await refresh();
      if (!ok) {
        const err = await problemOf(resp);
        end('expired');
        throw err;
      }
      resp = await send(method, path, o);
      if (resp.status === 401) {
        const err = await problemOf(resp);
        end('expired');
        throw err;
      }
    }
    if (!resp.ok) throw await problemOf(resp);
    return resp;
  }

  async function request<T>(method: string, path: string, o: RequestOptions = {}): Promise<T> {
    const resp = await raw(method, path, o);
    if (resp.status === 204) return undefined as T;
    const text = await resp.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }

  return {
    raw,
    request,
    get: <T>(path: string, o?: RequestOptions) => request<T>('GET', path, o),
    post: <T>(path: string, body?: unknown, o?: RequestOptions) => request<T>('POST', path, { ...o, body }),
    put: <T>(path: string, body: unknown, o?: RequestOptions) => request<T>('PUT', path, { ...o, body }),
    patch: <T>(path: string, body: unknown, o?: RequestOptions) => request<T>('PATCH', path, { ...o, body }),
    del: <T = void>(path: string, o?: RequestOptions) => request<T>('DELETE', path, o),
    accept,
    refresh,
    /** Forgets the tokens and tells the listeners why. */
    end,
    signedIn: () => access !== null,
    /** Calls `listener` whenever the session ends; returns the unsubscribe function. */
    onSessionEnd(listener: (why: SessionEnd) => void): () => void {
      endListeners.add(listener);
      return () => endListeners.delete(listener);
    },
  };
}

/** The app's one client. */
export const api = createClient();
