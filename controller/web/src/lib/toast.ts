// Short status messages, announced through the toast region's aria-live.

import { ApiError } from '../api/client';
import { createStore } from './store';

export interface Toast {
  id: number;
  tone: 'ok' | 'error';
  text: string;
}

export const toasts = createStore<Toast[]>([]);
let nextId = 1;
const SHOW_MS = 6_000;

export function dismiss(id: number): void {
  toasts.set(toasts.get().filter((t) => t.id !== id));
}

export function toast(text: string, tone: Toast['tone'] = 'ok'): void {
  const id = nextId++;
  toasts.set([...toasts.get().slice(-3), { id, tone, text }]);
  setTimeout(() => dismiss(id), tone === 'error' ? SHOW_MS * 2 : SHOW_MS);
}

/** The message to show for a failure: the problem's detail when the API sent one. */
export function errorText(e: unknown): string {
  if (e instanceof ApiError) return e.detail;
  if (e instanceof Error) return e.message;
  return String(e);
}

export function toastError(e: unknown, what?: string): void {
  toast(what ? `${what}: ${errorText(e)}` : errorText(e), 'error');
}
