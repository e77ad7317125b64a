// The device page's Apps section: the apps its agent allowlists (the release each runs and
// keeps) and the rollouts the device was part of, with its state and failure in each.

import { deviceApps } from '../api/rollouts';
import type { DeviceApps as Apps } from '../api/types';
import { NONE } from '../lib/format';
import { useAsync } from '../lib/hooks';
import { isFailure, releaseName } from '../lib/rollouts';
import { Link } from '../lib/router';
import { RolloutDeviceBadge, RolloutStatusBadge } from './Badge';
import { JournalTail } from './Progress';
import { Empty, ErrorBox, Loading } from './States';
import { RelTime } from './Time';

function AppTable({ apps }: { apps: NonNullable<Apps['apps']> }) {
  if (apps.length === 0) return <Empty>No apps are on this device’s allowlist.</Empty>;
  return (
    <div class="table-scroll">
      <table class="table compact" data-testid="device-app-table">
        <thead>
          <tr>
            <th scope="col">App</th>
            <th scope="col">Unit</th>
            <th scope="col">Current release</th>
            <th scope="col">Kept releases</th>
          </tr>
        </thead>
        <tbody>
          {apps.map((a) => (
            <tr key={a.app} data-testid="device-app-row" data-app={a.app}>
              <th scope="row" class="mono">
                {a.app}
              </th>
              <td class="mono">{a.unit}</td>
              <td class="mono" data-testid="device-app-current">
                {a.current === null ? <span class="muted">none</span> : releaseName(a.app, a.current)}
              </td>
              <td class="mono">{a.kept.length === 0 ? NONE : a.kept.map((k) => `#${k}`).join(', ')}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function RolloutTable({ rollouts }: { rollouts: Apps['rollouts'] }) {
  if (rollouts.length === 0) return <Empty>This device has not been part of a rollout.</Empty>;
  return (
    <div class="table-scroll">
      <table class="table compact" data-testid="device-rollout-table">
        <thead>
          <tr>
            <th scope="col">Rollout</th>
            <th scope="col">Release</th>
            <th scope="col">Rollout status</th>
            <th scope="col">This device</th>
            <th scope="col">Finished</th>
          </tr>
        </thead>
        <tbody>
          {rollouts.map((r) => (
            <tr
              key={r.rollout_id}
              data-testid="device-rollout-row"
              data-rollout-id={r.rollout_id}
              data-state={r.state}
            >
              <td>
                <Link href={`/rollouts/${r.rollout_id}`}>#{r.rollout_id}</Link>
              </td>
              <td class="mono">{releaseName(r.app, r.release)}</td>
              <td>
                <RolloutStatusBadge status={r.status} />
              </td>
              <td class="wrap">
                <RolloutDeviceBadge state={r.state} />
                {r.reason && (
                  <span
                    class={isFailure(r.state) ? 'sub bad-text' : 'sub'}
                    data-testid="device-rollout-reason"
                  >
                    {r.reason}
                  </span>
                )}
                <JournalTail text={r.journal} />
              </td>
              <td>
                <RelTime ms={r.finished_at} never={NONE} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function DeviceApps({ deviceId }: { deviceId: string }) {
  const apps = useAsync((signal) => deviceApps(deviceId, signal), [deviceId]);
  const d = apps.data;
  return (
    <section class="card" aria-labelledby="apps-title" data-testid="device-apps">
      <div class="card-head">
        <h2 id="apps-title">Apps</h2>
        {d?.apps_at != null && (
          <span class="muted">
            reported <RelTime ms={d.apps_at} />
          </span>
        )}
      </div>
      {apps.error !== undefined && !apps.loading ? (
        <ErrorBox error={apps.error} onRetry={apps.reload} />
      ) : !d ? (
        <Loading label="Loading the apps…" />
      ) : (
        <>
          {d.apps === null ? <Empty>The agent has not reported its apps.</Empty> : <AppTable apps={d.apps} />}
          <h3>Rollouts</h3>
          <RolloutTable rollouts={d.rollouts} />
        </>
      )}
    </section>
  );
}
