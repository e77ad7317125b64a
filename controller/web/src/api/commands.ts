// Signed remote commands.

import { api } from './client';
import type {
  Action,
  ActionKind,
  CommandDetail,
  CommandPage,
  CommandStatus,
  Labels,
  SentCommands,
} from './types';

export interface CommandQuery {
  device?: string;
  status?: CommandStatus;
  action?: ActionKind;
  limit?: number;
  offset?: number;
}

/** Exactly one of `devices` and `selector`. */
export type CommandTargets = { devices: string[] } | { selector: Labels };

export const sendCommand = (targets: CommandTargets, action: Action) =>
  api.post<SentCommands>('/api/v1/commands', { ...targets, action });

export const listCommands = (query: CommandQuery, signal?: AbortSignal) =>
  api.get<CommandPage>('/api/v1/commands', { query: { ...query }, signal });

export const getCommand = (id: string, signal?: AbortSignal) =>
  api.get<CommandDetail>(`/api/v1/commands/${encodeURIComponent(id)}`, { signal });

export const cancelCommand = (id: string) =>
  api.post<{ id: string; status: 'cancelled' }>(`/api/v1/commands/${encodeURIComponent(id)}/cancel`);
