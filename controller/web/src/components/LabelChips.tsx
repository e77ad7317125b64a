import type { Labels } from '../api/types';
import { labelPairs } from '../lib/labels';

/** Labels as `key=value` chips; `onPick` makes each a button (e.g. to filter by it). */
export function LabelChips({ labels, onPick }: { labels: Labels; onPick?: (pair: string) => void }) {
  const pairs = labelPairs(labels);
  if (pairs.length === 0) return <span class="muted">—</span>;
  return (
    <ul class="chips" aria-label="Labels">
      {pairs.map((p) => (
        <li key={p}>
          {onPick ? (
            <button type="button" class="chip" title={`Filter by ${p}`} onClick={() => onPick(p)}>
              {p}
            </button>
          ) : (
            <span class="chip">{p}</span>
          )}
        </li>
      ))}
    </ul>
  );
}
