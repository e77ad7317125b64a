// Admin-only routes: enrollment tokens and requests, users, security settings and the audit log.

import { api } from './client';
import type {
  AuditPage,
  CreatedToken,
  CreatedUser,
  EnrollmentRequest,
  Labels,
  Role,
  SecuritySettings,
  TokenInfo,
  UserView,
  VerifyReport,
} from './types';

export interface NewToken {
  ttl_s: number;
  name?: string;
  labels?: Labels;
  max_uses?: number;
  require_approval?: boolean;
}

export const createToken = (t: NewToken) => api.post<CreatedToken>('/api/v1/tokens', t);
export const listTokens = (signal?: AbortSignal) => api.get<TokenInfo[]>('/api/v1/tokens', { signal });
export const revokeToken = (id: string) => api.del(`/api/v1/tokens/${encodeURIComponent(id)}`);

export const listEnrollmentRequests = (signal?: AbortSignal) =>
  api.get<EnrollmentRequest[]>('/api/v1/enrollment-requests', { signal });
export const decideEnrollmentRequest = (id: string, decision: 'accept' | 'reject') =>
  api.post<EnrollmentRequest>(`/api/v1/enrollment-requests/${encodeURIComponent(id)}/${decision}`);

const user = (name: string) => `/api/v1/users/${encodeURIComponent(name)}`;

export const listUsers = (signal?: AbortSignal) => api.get<UserView[]>('/api/v1/users', { signal });
export const createUser = (name: string, role: Role, password?: string) =>
  api.post<CreatedUser>('/api/v1/users', { name, role, ...(password ? { password } : {}) });
export const updateUser = (name: string, change: { role?: Role; disabled?: boolean }) =>
  api.patch<UserView>(user(name), change);
export const deleteUser = (name: string) => api.del(user(name));
export const resetUserMfa = (name: string) => api.post<void>(`${user(name)}/reset-mfa`);

export const getSecuritySettings = (signal?: AbortSignal) =>
  api.get<SecuritySettings>('/api/v1/settings/security', { signal });
export const setSecuritySettings = (s: SecuritySettings) =>
  api.put<SecuritySettings>('/api/v1/settings/security', s);

export interface AuditQuery {
  actor?: string;
  action?: string;
  since?: number;
  until?: number;
  before?: number;
  limit?: number;
}

export const listAudit = (query: AuditQuery, signal?: AbortSignal) =>
  api.get<AuditPage>('/api/v1/audit', { query: { ...query }, signal });
export const verifyAudit = (signal?: AbortSignal) =>
  api.get<VerifyReport>('/api/v1/audit/verify', { signal });
