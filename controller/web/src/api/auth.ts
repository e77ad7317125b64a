// Sign-in, refresh, sign-out and the signed-in user's own account.

import { api } from './client';
import type { MfaSetup, SessionView, TokenResponse, Whoami } from './types';

/** Password step. With MFA on, the answer has `mfa_required` and an `mfa_token`. */
export async function login(username: string, password: string): Promise<TokenResponse> {
  const resp = await api.post<TokenResponse>(
    '/api/v1/auth/login',
    { username, password, cookie: true },
    { auth: false },
  );
  api.accept(resp);
  return resp;
}

/** MFA step: a 6-digit TOTP code, or else a recovery code. */
export async function loginMfa(mfaToken: string, code: string): Promise<TokenResponse> {
  const trimmed = code.replace(/\s+/g, '');
  const body = /^\d{6}$/.test(trimmed)
    ? { mfa_token: mfaToken, code: trimmed, cookie: true }
    : { mfa_token: mfaToken, recovery_code: code.trim(), cookie: true };
  const resp = await api.post<TokenResponse>('/api/v1/auth/login/mfa', body, { auth: false });
  api.accept(resp);
  return resp;
}

/** Ends this session on the server, then forgets the tokens. */
export async function logout(): Promise<void> {
  try {
    await api.post('/api/v1/auth/logout');
  } finally {
    api.end('signed_out');
  }
}

export const whoami = () => api.get<Whoami>('/api/v1/whoami');

export const changePassword = (current_password: string, new_password: string) =>
  api.post<void>('/api/v1/me/password', { current_password, new_password });

export const startMfa = () => api.post<MfaSetup>('/api/v1/me/mfa');

export const confirmMfa = (code: string) =>
  api.post<{ recovery_codes: string[] }>('/api/v1/me/mfa/confirm', { code: code.replace(/\s+/g, '') });

export const listSessions = (signal?: AbortSignal) =>
  api.get<SessionView[]>('/api/v1/me/sessions', { signal });

export const revokeSession = (id: string) => api.del(`/api/v1/me/sessions/${encodeURIComponent(id)}`);
