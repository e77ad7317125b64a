// Devices, the fleet summary and telemetry history.

import { api } from './client';
import type {
  DeviceDetail,
  DevicePage,
  DeviceSort,
  DeviceStatus,
  FleetSummary,
  History,
  Labels,
  SortOrder,
  UnitEvents,
} from './types';

export interface DeviceQuery {
  q?: string;
  status?: DeviceStatus;
  /** Selector `k=v[,k=v...]`. */
  label?: string;
  sort?: DeviceSort;
  order?: SortOrder;
  limit?: number;
  offset?: number;
}

const dev = (id: string) => `/api/v1/devices/${encodeURIComponent(id)}`;

export const fleetSummary = (signal?: AbortSignal) =>
  api.get<FleetSummary>('/api/v1/fleet/summary', { signal });

export const listDevices = (query: DeviceQuery, signal?: AbortSignal) =>
  api.get<DevicePage>('/api/v1/devices', { query: { ...query }, signal });

export const getDevice = (id: string, signal?: AbortSignal) => api.get<DeviceDetail>(dev(id), { signal });

export const deviceHistory = (id: string, from: number, to: number, points: number, signal?: AbortSignal) =>
  api.get<History>(`${dev(id)}/history`, { query: { from, to, points }, signal });

export const unitEvents = (id: string, signal?: AbortSignal) =>
  api.get<UnitEvents>(`${dev(id)}/unit-events`, { signal });

export const setLabels = (id: string, labels: Labels) =>
  api.put<DeviceDetail>(`${dev(id)}/labels`, { labels });

export const revokeDevice = (id: string) => api.post<void>(`${dev(id)}/revoke`);
