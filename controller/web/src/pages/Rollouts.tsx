// Rollouts: the list with a status filter (refreshed while any is in progress), and the
// creation form (operators) at /rollouts/new, prefilled with `?release=ID`.

import { listRollouts } from '../api/rollouts';
import type { Whoami } from '../api/types';
import { Page } from '../components/Page';
import { RolloutForm } from '../components/RolloutForm';
import { RolloutList } from '../components/RolloutList';
import { Empty, ErrorBox, Loading } from '../components/States';
import { canOperate } from '../lib/commands';
import { plural } from '../lib/format';
import { useAsync, usePolling } from '../lib/hooks';
import {
  isFinal,
  isRolloutStatus,
  releaseName,
  ROLLOUT_STATUSES,
  type RolloutStatus,
  stateText,
} from '../lib/rollouts';
import { Link, navigate, useLocation } from '../lib/router';
import { toast } from '../lib/toast';

const REFRESH_MS = 2_000;

function statusOf(search: string): RolloutStatus | '' {
  const s = new URLSearchParams(search).get('status') ?? '';
  return isRolloutStatus(s) ? s : '';
}

export function RolloutsPage({ user }: { user: Whoami }) {
  const { search } = useLocation();
  const status = statusOf(search);
  const list = useAsync((signal) => listRollouts({ status: status || undefined }, signal), [status]);
  const active = list.data?.some((r) => !isFinal(r.status)) ?? false;
  usePolling(list, REFRESH_MS, active);

  return (
    <Page
      title="Rollouts"
      actions={
        canOperate(user.role) && (
          <Link href="/rollouts/new" class="button primary" data-testid="rollout-new">
            New rollout…
          </Link>
        )
      }
    >
      <section class="card" aria-labelledby="rollouts-title">
        <h2 id="rollouts-title" class="visually-hidden">
          All rollouts
        </h2>
        <form class="toolbar" role="search" onSubmit={(e) => e.preventDefault()}>
          <div class="field">
            <label for="rollouts-status">Status</label>
            <select
              id="rollouts-status"
              value={status}
              onChange={(e) => {
                const s = e.currentTarget.value;
                navigate(s ? `/rollouts?status=${s}` : '/rollouts', { replace: true });
              }}
              data-testid="rollouts-filter-status"
            >
              <option value="">Any</option>
              {ROLLOUT_STATUSES.map((s) => (
                <option key={s} value={s}>
                  {stateText(s)}
                </option>
              ))}
            </select>
          </div>
        </form>
        {list.error !== undefined && !list.loading && !list.data ? (
          <ErrorBox error={list.error} onRetry={list.reload} />
        ) : !list.data ? (
          <Loading label="Loading rollouts…" />
        ) : list.data.length === 0 ? (
          <Empty>
            {status ? `No rollouts are ${stateText(status)}.` : 'No rollouts yet.'}{' '}
            {canOperate(user.role) && <Link href="/releases">Choose a release to roll out</Link>}
          </Empty>
        ) : (
          <RolloutList rollouts={list.data} />
        )}
      </section>
    </Page>
  );
}

export function NewRolloutPage({ user }: { user: Whoami }) {
  const { search } = useLocation();
  const release = Number(new URLSearchParams(search).get('release'));
  if (!canOperate(user.role)) {
    return (
      <Page title="New rollout">
        <p>
          Only operators and admins create rollouts. <Link href="/rollouts">See the rollouts</Link>.
        </p>
      </Page>
    );
  }
  return (
    <Page title="New rollout">
      <section class="card" aria-label="The rollout">
        <RolloutForm
          initialRelease={Number.isInteger(release) && release > 0 ? release : undefined}
          onCreated={(c) => {
            const r = c.rollout?.rollout;
            const taking = c.plan.filter((d) => d.incompatible === null).length;
            if (c.approval) toast(`Waiting for a second admin: ${c.approval.summary}`);
            else toast(`Rollout of ${releaseName(c.app, c.release)} started on ${plural(taking, 'device')}.`);
            navigate(r ? `/rollouts/${r.id}` : '/rollouts');
          }}
        />
      </section>
    </Page>
  );
}
