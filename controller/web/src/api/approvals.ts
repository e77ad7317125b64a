// Two-person approval: the requests that wait for a second admin, and the decision.

import { api } from './client';
import type { ApprovalView } from './types';

export const listApprovals = (signal?: AbortSignal) =>
  api.get<ApprovalView[]>('/api/v1/approvals', { signal });
const approval = (id: string) => `/api/v1/approvals/${encodeURIComponent(id)}`;
export const approve = (id: string) => api.post<ApprovalView>(`${approval(id)}/approve`);
export const reject = (id: string) => api.post<ApprovalView>(`${approval(id)}/reject`);
