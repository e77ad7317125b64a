// One rollout: status and why, progress per batch, every device's state (download progress,
// failure reason, journal tail), its settings and history; pause, resume and abort
// (operators) and approve (another admin). Refreshed every 2 s until it is final.

import { useState } from 'preact/hooks';
import { abortRollout, approveRollout, getRollout, pauseRollout, resumeRollout } from '../api/rollouts';
import type { RolloutDetail, RolloutDevice, Whoami } from '../api/types';
import { RolloutDeviceBadge, RolloutStatusBadge } from '../components/Badge';
import { ConfirmDialog } from '../components/ConfirmDialog';
import { Page } from '../components/Page';
import { Pager } from '../components/Pager';
import { DownloadProgress, JournalTail, StateBar } from '../components/Progress';
import { Empty, ErrorBox, Loading } from '../components/States';
import { DateTime, RelTime } from '../components/Time';
import { formatNumber, NONE, plural } from '../lib/format';
import { useAsync, usePolling } from '../lib/hooks';
import { labelPairs } from '../lib/labels';
import {
  isFailure,
  isFinal,
  pauseCauseText,
  progressSegments,
  releaseName,
  rolloutActions,
  settingsFacts,
  stateText,
} from '../lib/rollouts';
import { Link } from '../lib/router';
import { toast, toastError } from '../lib/toast';

const REFRESH_MS = 2_000;
const DEVICE_PAGE = 50;

type Dialog = 'abort' | 'approve' | 'resume' | null;

function Summary({ d }: { d: RolloutDetail }) {
  const r = d.rollout;
  const pause = r.status === 'paused' ? pauseCauseText(r.pause_cause) : null;
  return (
    <section class="card" aria-labelledby="rollout-summary-title" data-testid="rollout-summary">
      <h2 id="rollout-summary-title">Status</h2>
      {pause && (
        <p
          class={r.pause_cause === 'operator' ? 'notice' : 'notice notice-warn'}
          role="status"
          data-testid="rollout-pause-cause"
          data-cause={r.pause_cause}
        >
          {pause}
        </p>
      )}
      {r.status === 'awaiting_approval' && (
        <p class="notice" role="status" data-testid="rollout-awaiting">
          Waiting for a second admin to approve it (also on the <Link href="/approvals">Approvals</Link>{' '}
          page).
        </p>
      )}
      <dl class="facts">
        <div>
          <dt>Latest change</dt>
          <dd data-testid="rollout-reason">{r.reason ?? NONE}</dd>
        </div>
        <div>
          <dt>Current batch</dt>
          <dd data-testid="rollout-current-batch">{r.batch_label}</dd>
        </div>
        <div>
          <dt>Devices</dt>
          <dd>{formatNumber(r.devices)}</dd>
        </div>
        <div>
          <dt>Targets</dt>
          <dd class="mono">
            {d.selector ? labelPairs(d.selector).join(', ') : (d.devices_asked ?? []).join(', ') || NONE}
          </dd>
        </div>
        <div>
          <dt>Created</dt>
          <dd>
            <DateTime ms={r.created_at} /> <span class="sub mono">{r.created_by}</span>
          </dd>
        </div>
        <div>
          <dt>Updated</dt>
          <dd>
            <RelTime ms={r.updated_at} />
          </dd>
        </div>
      </dl>
    </section>
  );
}

function Batches({ d }: { d: RolloutDetail }) {
  const r = d.rollout;
  const incompatible = r.counts.incompatible ?? 0;
  return (
    <section class="card" aria-labelledby="rollout-batches-title">
      <h2 id="rollout-batches-title">Batches</h2>
      {d.batches.length === 0 ? (
        <Empty>No device takes part.</Empty>
      ) : (
        <ol class="batches">
          {d.batches.map((b) => {
            const current = b.index === r.batch && !isFinal(r.status);
            return (
              <li
                key={b.index}
                class={current ? 'batch current' : 'batch'}
                data-testid="batch-row"
                data-batch={b.index}
                aria-current={current ? 'step' : undefined}
              >
                <span class="batch-label">
                  {b.label}
                  {current && <span class="sub">current</span>}
                </span>
                <span class="batch-size">{plural(b.devices, 'device')}</span>
                <StateBar counts={b.counts} testId="batch-progress" />
              </li>
            );
          })}
        </ol>
      )}
      {incompatible > 0 && (
        <p class="hint">
          Incompatible, outside every batch and never counted as failures: {plural(incompatible, 'device')}.
        </p>
      )}
    </section>
  );
}

function DeviceRow({ x, batchLabel }: { x: RolloutDevice; batchLabel: string }) {
  return (
    <tr data-testid="rollout-device-row" data-device-id={x.device} data-state={x.state}>
      <th scope="row" class="mono">
        <Link href={`/devices/${encodeURIComponent(x.device)}`}>{x.device}</Link>
      </th>
      <td>{batchLabel}</td>
      <td>
        <RolloutDeviceBadge state={x.state} />
        <DownloadProgress state={x.state} bytes={x.bytes} total={x.total} />
      </td>
      <td class="wrap">
        {x.reason ? (
          <span class={isFailure(x.state) ? 'bad-text' : undefined} data-testid="rollout-device-reason">
            {x.reason}
          </span>
        ) : (
          <span class="muted">{NONE}</span>
        )}
        <JournalTail text={x.journal} />
      </td>
      <td class="mono">{x.previous_release === null ? NONE : `#${x.previous_release}`}</td>
      <td>
        <RelTime ms={x.finished_at ?? x.started_at ?? x.queued_at} never={NONE} />
      </td>
    </tr>
  );
}

function Devices({ d }: { d: RolloutDetail }) {
  const [state, setState] = useState('');
  const [page, setPage] = useState(1);
  const labels = new Map(d.batches.map((b) => [b.index, b.label]));
  const states = progressSegments(d.rollout.counts).map((s) => s.state);
  const shown = state ? d.devices.filter((x) => x.state === state) : d.devices;
  const pages = Math.max(1, Math.ceil(shown.length / DEVICE_PAGE));
  const at = Math.min(page, pages);
  const rows = shown.slice((at - 1) * DEVICE_PAGE, at * DEVICE_PAGE);
  return (
    <section class="card" aria-labelledby="rollout-devices-title">
      <div class="card-head">
        <h2 id="rollout-devices-title">Devices</h2>
        <div class="field inline-field">
          <label for="rollout-device-state">State</label>
          <select
            id="rollout-device-state"
            value={state}
            onChange={(e) => {
              setState(e.currentTarget.value);
              setPage(1);
            }}
            data-testid="rollout-device-filter"
          >
            <option value="">Any</option>
            {states.map((s) => (
              <option key={s} value={s}>
                {stateText(s)} ({d.rollout.counts[s]})
              </option>
            ))}
          </select>
        </div>
      </div>
      {rows.length === 0 ? (
        <Empty>No devices in this state.</Empty>
      ) : (
        <div class="table-scroll">
          <table class="table compact" data-testid="rollout-device-table">
            <thead>
              <tr>
                <th scope="col">Device</th>
                <th scope="col">Batch</th>
                <th scope="col">State</th>
                <th scope="col">Reason</th>
                <th scope="col">Ran before</th>
                <th scope="col">Last change</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((x) => (
                <DeviceRow
                  key={x.device}
                  x={x}
                  batchLabel={x.state === 'incompatible' ? NONE : (labels.get(x.batch) ?? NONE)}
                />
              ))}
            </tbody>
          </table>
        </div>
      )}
      {shown.length > DEVICE_PAGE && (
        <Pager page={at} total={shown.length} size={DEVICE_PAGE} noun="devices" onPage={setPage} />
      )}
    </section>
  );
}

function History({ d }: { d: RolloutDetail }) {
  const events = [...d.events].reverse();
  return (
    <section class="card" aria-labelledby="rollout-history-title">
      <h2 id="rollout-history-title">History</h2>
      {events.length === 0 ? (
        <Empty>Nothing has happened yet.</Empty>
      ) : (
        <ol class="events" data-testid="rollout-events" reversed>
          {events.map((e, i) => (
            <li key={`${e.at}-${i}`} data-testid="rollout-event">
              <span class="event-time">
                <DateTime ms={e.at} />
              </span>
              <span class="event-actor mono">{e.actor}</span>
              <span class="event-text">{e.text}</span>
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}

function Settings({ d }: { d: RolloutDetail }) {
  return (
    <section class="card" aria-labelledby="rollout-settings-title">
      <h2 id="rollout-settings-title">Settings</h2>
      <dl class="facts">
        {settingsFacts(d.settings).map(([label, value]) => (
          <div key={label}>
            <dt>{label}</dt>
            <dd>{value}</dd>
          </div>
        ))}
      </dl>
    </section>
  );
}

export function RolloutPage({ id, user }: { id: number; user: Whoami }) {
  const rollout = useAsync((signal) => getRollout(id, signal), [id]);
  const d = rollout.data;
  usePolling(rollout, REFRESH_MS, d !== undefined && !isFinal(d.rollout.status));
  const [dialog, setDialog] = useState<Dialog>(null);
  const [revert, setRevert] = useState(false);
  const [busy, setBusy] = useState(false);

  if (rollout.error !== undefined && !d) {
    return (
      <Page title={`Rollout #${id}`}>
        <ErrorBox error={rollout.error} onRetry={rollout.reload} />
        <p>
          <Link href="/rollouts">Back to the rollouts</Link>
        </p>
      </Page>
    );
  }
  if (!d) {
    return (
      <Page title={`Rollout #${id}`}>
        <Loading label="Loading the rollout…" />
      </Page>
    );
  }

  const r = d.rollout;
  const can = rolloutActions(user, r);
  const done = (next: RolloutDetail, text: string) => {
    rollout.setData(() => next);
    toast(text);
  };
  const pause = async () => {
    setBusy(true);
    try {
      done(await pauseRollout(id), `Rollout #${id} paused.`);
    } catch (e) {
      toastError(e, 'Cannot pause');
    } finally {
      setBusy(false);
    }
  };
  const resume = async () => {
    setBusy(true);
    try {
      done(await resumeRollout(id), `Rollout #${id} resumed.`);
    } catch (e) {
      toastError(e, 'Cannot resume');
    } finally {
      setBusy(false);
    }
  };
  // Resuming after a health pause accepts the failures so far: say so first.
  const healthPause = r.pause_cause !== null && r.pause_cause !== 'operator';

  return (
    <Page
      title={`Rollout #${r.id}`}
      subtitle={
        <>
          <Link href={`/releases/${r.release_id}`} class="mono">
            {releaseName(r.app, r.release)}
          </Link>{' '}
          <RolloutStatusBadge status={r.status} /> <span class="muted">{r.batch_label}</span>
        </>
      }
      actions={
        <span class="button-row" data-testid="rollout-actions">
          {can.pause && (
            <button
              type="button"
              class="button"
              disabled={busy}
              onClick={() => void pause()}
              data-testid="rollout-pause"
            >
              Pause
            </button>
          )}
          {can.resume && (
            <button
              type="button"
              class="button primary"
              disabled={busy}
              onClick={() => (healthPause ? setDialog('resume') : void resume())}
              data-testid="rollout-resume"
            >
              Resume{healthPause ? '…' : ''}
            </button>
          )}
          {can.approve && (
            <button
              type="button"
              class="button primary"
              onClick={() => setDialog('approve')}
              data-testid="rollout-approve"
            >
              Approve…
            </button>
          )}
          {can.abort && (
            <button
              type="button"
              class="button danger-outline"
              onClick={() => {
                setRevert(false);
                setDialog('abort');
              }}
              data-testid="rollout-abort"
            >
              Abort…
            </button>
          )}
        </span>
      }
    >
      {can.ownRequest && (
        <p class="notice" role="status" data-testid="rollout-own-request">
          You asked for this rollout: another admin must approve it.
        </p>
      )}
      <Summary d={d} />
      <Batches d={d} />
      <Devices d={d} />
      <div class="two-col">
        <History d={d} />
        <Settings d={d} />
      </div>
      {dialog === 'abort' && (
        <ConfirmDialog
          title={`Abort rollout #${r.id}?`}
          confirmLabel={revert ? 'Abort and revert' : 'Abort'}
          danger
          onConfirm={async () => {
            done(await abortRollout(id, revert), `Rollout #${id} aborted${revert ? ' with revert' : ''}.`);
          }}
          onClose={() => setDialog(null)}
          testId="rollout-abort-dialog"
        >
          <p>
            Nothing more is sent. Devices already sent {releaseName(r.app, r.release)} finish what they
            started. This cannot be undone.
          </p>
          <label class="check">
            <input
              type="checkbox"
              checked={revert}
              onChange={(e) => setRevert(e.currentTarget.checked)}
              data-testid="rollout-abort-revert"
            />
            Revert devices already updated to the release they ran before
          </label>
        </ConfirmDialog>
      )}
      {dialog === 'approve' && (
        <ConfirmDialog
          title={`Approve rollout #${r.id}?`}
          confirmLabel="Approve and start"
          onConfirm={async () => {
            // Your own request, or one decided meanwhile: the refusal shows in the dialog.
            done(await approveRollout(id), `Rollout #${id} approved and started.`);
          }}
          onClose={() => setDialog(null)}
          testId="rollout-approve-dialog"
        >
          <p>
            {releaseName(r.app, r.release)} goes to the devices that match now, batch after batch, starting
            with {d.batches[0]?.label ?? 'the first batch'}.
          </p>
        </ConfirmDialog>
      )}
      {dialog === 'resume' && (
        <ConfirmDialog
          title={`Resume rollout #${r.id}?`}
          confirmLabel="Resume"
          onConfirm={async () => {
            done(await resumeRollout(id), `Rollout #${id} resumed.`);
          }}
          onClose={() => setDialog(null)}
          testId="rollout-resume-dialog"
        >
          <p>{pauseCauseText(r.pause_cause)}</p>
          <p>
            Resuming accepts the failures so far: the current batch no longer needs its success threshold.
          </p>
        </ConfirmDialog>
      )}
    </Page>
  );
}
