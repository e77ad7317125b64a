// Rollouts of a release to devices in batches, and a device's apps.

import { api } from './client';
import type { CreatedRollout, DeviceApps, NewRollout, RolloutDetail, RolloutSummary } from './types';

export interface RolloutQuery {
  status?: string;
  release_id?: number;
  limit?: number;
}

const rollout = (id: number) => `/api/v1/rollouts/${encodeURIComponent(String(id))}`;

export const listRollouts = (query: RolloutQuery, signal?: AbortSignal) =>
  api.get<RolloutSummary[]>('/api/v1/rollouts', { query: { ...query }, signal });

export const getRollout = (id: number, signal?: AbortSignal) =>
  api.get<RolloutDetail>(rollout(id), { signal });

/** Creates a rollout, or with `preview: true` only plans it (nothing is stored). */
export const createRollout = (body: NewRollout) => api.post<CreatedRollout>('/api/v1/rollouts', body);

export const pauseRollout = (id: number) => api.post<RolloutDetail>(`${rollout(id)}/pause`);
export const resumeRollout = (id: number) => api.post<RolloutDetail>(`${rollout(id)}/resume`);
export const abortRollout = (id: number, revert: boolean) =>
  api.post<RolloutDetail>(`${rollout(id)}/abort`, { revert });
export const approveRollout = (id: number) => api.post<RolloutDetail>(`${rollout(id)}/approve`);

export const deviceApps = (id: string, signal?: AbortSignal) =>
  api.get<DeviceApps>(`/api/v1/devices/${encodeURIComponent(id)}/apps`, { signal });
