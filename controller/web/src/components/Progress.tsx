// Rollout progress: a bar of devices by state (a word for each part, never colour alone),
// a download's bytes, and a failed device's journal tail.

import { countsText, downloadProgress, progressSegments, stateText } from '../lib/rollouts';

/** Devices by state as one bar, with the counts in words beside it. */
export function StateBar({ counts, testId }: { counts: Record<string, number>; testId?: string }) {
  const segments = progressSegments(counts);
  const text = countsText(counts);
  return (
    <div class="state-bar-wrap" data-testid={testId}>
      <div class="state-bar" aria-hidden="true">
        {segments.map((s) => (
          <span
            key={s.state}
            class={`state-bar-part tone-${s.tone}`}
            style={{ width: `${s.pct}%` }}
            title={`${s.count} ${stateText(s.state)}`}
          />
        ))}
      </div>
      <span class="state-bar-text">{text}</span>
    </div>
  );
}

/** Bytes downloaded so far, while the device downloads; nothing otherwise. */
export function DownloadProgress(d: { state: string; bytes: number | null; total: number | null }) {
  const p = downloadProgress(d);
  if (!p) return null;
  return (
    <span class="download" data-testid="download-progress">
      {p.pct !== null && (
        <progress max={100} value={p.pct} aria-label="Downloaded">
          {Math.round(p.pct)} %
        </progress>
      )}
      <span class="sub">{p.text}</span>
    </span>
  );
}

/** The unit's last journal lines after a failure, folded. */
export function JournalTail({ text }: { text: string | null }) {
  if (!text) return null;
  return (
    <details class="journal" data-testid="journal-tail">
      <summary>Journal tail</summary>
      <pre>{text}</pre>
    </details>
  );
}
