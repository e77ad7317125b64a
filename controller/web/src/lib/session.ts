// Who is signed in. The app starts with a silent refresh from the HttpOnly cookie; when the
// session ends (expiry, refresh failure, sign-out) it returns to the login page and keeps
// the page the user was on to come back to.

import { api, ApiError, type SessionEnd } from '../api/client';
import { whoami } from '../api/auth';
import { live } from '../api/live';
import type { Whoami } from '../api/types';
import { currentLocation, navigate } from './router';
import { createStore } from './store';

export type Session =
  | { state: 'starting' }
  | { state: 'signed_out'; notice: string | null }
  | { state: 'signed_in'; user: Whoami };

export const session = createStore<Session>({ state: 'starting' });

export const EXPIRED_NOTICE = 'Your session has expired. Sign in again to continue.';

/** The login URL that returns to `path` afterwards. */
export function loginUrl(path: string): string {
  return path === '/' || path.startsWith('/login') ? '/login' : `/login?next=${encodeURIComponent(path)}`;
}

/** Loads the signed-in user (after a sign-in step or a refresh that gave tokens). */
export async function enter(): Promise<Whoami> {
  const user = await whoami();
  session.set({ state: 'signed_in', user });
  return user;
}

/** Restores the session from the refresh cookie, if there is one. */
export async function start(): Promise<void> {
  try {
    if (await api.refresh()) {
      await enter();
      return;
    }
    session.set({ state: 'signed_out', notice: null });
  } catch (e) {
    const notice =
      e instanceof ApiError ? e.detail : 'The controller cannot be reached. Reload to try again.';
    session.set({ state: 'signed_out', notice });
  }
}

function ended(why: SessionEnd): void {
  live.reset();
  const here = currentLocation();
  const path = here.path + here.search;
  if (why === 'expired' && session.get().state === 'signed_in') {
    session.set({ state: 'signed_out', notice: EXPIRED_NOTICE });
    navigate(loginUrl(path), { replace: true });
  } else if (why === 'signed_out') {
    session.set({ state: 'signed_out', notice: 'You have signed out.' });
    navigate('/login', { replace: true });
  } else if (session.get().state !== 'signed_out') {
    session.set({ state: 'signed_out', notice: EXPIRED_NOTICE });
  }
}

api.onSessionEnd(ended);
