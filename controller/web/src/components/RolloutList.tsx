// A table of rollouts: status, release, current batch and devices by state.

import type { RolloutSummary } from '../api/types';
import { releaseName, stateText } from '../lib/rollouts';
import { Link } from '../lib/router';
import { RolloutStatusBadge } from './Badge';
import { StateBar } from './Progress';
import { RelTime } from './Time';

export function RolloutList({ rollouts, busy }: { rollouts: RolloutSummary[]; busy?: boolean }) {
  return (
    <div class="table-scroll">
      <table class="table" aria-busy={busy ?? false} data-testid="rollout-table">
        <thead>
          <tr>
            <th scope="col">Rollout</th>
            <th scope="col">Release</th>
            <th scope="col">Status</th>
            <th scope="col">Batch</th>
            <th scope="col">Devices</th>
            <th scope="col">Created</th>
          </tr>
        </thead>
        <tbody>
          {rollouts.map((r) => (
            <tr key={r.id} data-testid="rollout-row" data-rollout-id={r.id} data-status={r.status}>
              <td>
                <Link href={`/rollouts/${r.id}`} data-testid="rollout-link">
                  #{r.id}
                </Link>
              </td>
              <td class="mono">
                <Link href={`/releases/${r.release_id}`}>{releaseName(r.app, r.release)}</Link>
              </td>
              <td>
                <RolloutStatusBadge status={r.status} />
                {r.pause_cause && <span class="sub">{stateText(r.pause_cause)}</span>}
              </td>
              <td data-testid="rollout-batch">{r.batch_label}</td>
              <td class="cell-progress">
                <StateBar counts={r.counts} />
              </td>
              <td>
                <RelTime ms={r.created_at} />
                <span class="sub mono">{r.created_by}</span>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
