// Times: relative ("12 s ago", ticking) with the exact local time on hover, or absolute.

import { formatDateTime, formatRelative, NONE } from '../lib/format';
import { useNow } from '../lib/hooks';

export function RelTime({ ms, never = 'never' }: { ms: number | null | undefined; never?: string }) {
  const now = useNow();
  if (ms === null || ms === undefined) return <span class="muted">{never}</span>;
  return (
    <time dateTime={new Date(ms).toISOString()} title={formatDateTime(ms)}>
      {formatRelative(ms, now)}
    </time>
  );
}

export function DateTime({ ms }: { ms: number | null | undefined }) {
  if (ms === null || ms === undefined) return <span class="muted">{NONE}</span>;
  return <time dateTime={new Date(ms).toISOString()}>{formatDateTime(ms)}</time>;
}
