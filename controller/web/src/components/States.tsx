// Loading, empty and error states, the same on every page.

import type { ComponentChildren } from 'preact';
import { ApiError } from '../api/client';
import { errorText } from '../lib/toast';

export function Loading({ label = 'Loading…' }: { label?: string }) {
  return (
    <div class="state state-loading" role="status" data-testid="loading">
      <span class="spinner" aria-hidden="true" />
      {label}
    </div>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return (
    <div class="state state-empty" data-testid="empty">
      {children}
    </div>
  );
}

export function ErrorBox({ error, onRetry }: { error: unknown; onRetry?: () => void }) {
  const title = error instanceof ApiError ? error.title : 'Something went wrong';
  return (
    <div class="state state-error" role="alert" data-testid="error">
      <strong>{title}</strong>
      <p>{errorText(error)}</p>
      {onRetry && (
        <button type="button" class="button" onClick={onRetry}>
          Try again
        </button>
      )}
    </div>
  );
}
