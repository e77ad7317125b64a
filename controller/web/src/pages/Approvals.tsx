// Approvals: commands and rollouts to more devices than the threshold, or to the whole
// fleet, wait here until a second admin approves them (a rollout's links to its page). Everyone sees them; admins decide (never on their own
// request: the controller refuses that).

import { useState } from 'preact/hooks';
import { approve, listApprovals, reject } from '../api/approvals';
import type { ApprovalStatus, ApprovalView, Whoami } from '../api/types';
import { ConfirmDialog } from '../components/ConfirmDialog';
import { Page } from '../components/Page';
import { Empty, ErrorBox, Loading } from '../components/States';
import { RelTime } from '../components/Time';
import { isAdmin } from '../lib/commands';
import { useAsync } from '../lib/hooks';
import { Link } from '../lib/router';
import { rolloutOf } from '../lib/rollouts';
import { toast } from '../lib/toast';

const STATUS_TONE: Record<ApprovalStatus, string> = {
  pending: 'warn',
  approved: 'ok',
  done: 'ok',
  failed: 'bad',
  rejected: 'muted',
  expired: 'muted',
};

type Decision = { a: ApprovalView; approve: boolean };

function ApprovalTable({
  items,
  admin,
  onDecide,
}: {
  items: ApprovalView[];
  admin: boolean;
  onDecide: (d: Decision) => void;
}) {
  return (
    <div class="table-scroll">
      <table class="table" data-testid="approval-table">
        <thead>
          <tr>
            <th scope="col">Request</th>
            <th scope="col">Asked by</th>
            <th scope="col">State</th>
            <th scope="col">Asked</th>
            <th scope="col">Expires</th>
            <th scope="col">Decided by</th>
            <th scope="col">
              <span class="visually-hidden">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {items.map((a) => (
            <tr key={a.id} data-testid="approval-row" data-approval-id={a.id} data-status={a.status}>
              <td>
                {rolloutOf(a) === null ? (
                  a.summary
                ) : (
                  <Link href={`/rollouts/${rolloutOf(a)}`} data-testid="approval-rollout">
                    {a.summary}
                  </Link>
                )}
              </td>
              <td class="mono">{a.requested_by}</td>
              <td>
                <span class={`badge badge-${STATUS_TONE[a.status]}`}>{a.status}</span>
              </td>
              <td>
                <RelTime ms={a.created_at} />
              </td>
              <td>{a.status === 'pending' ? <RelTime ms={a.expires_at} /> : <span class="muted">—</span>}</td>
              <td class="mono">{a.decided_by ?? <span class="muted">—</span>}</td>
              <td class="actions">
                {admin && a.status === 'pending' && (
                  <>
                    <button
                      type="button"
                      class="button small primary"
                      onClick={() => onDecide({ a, approve: true })}
                      data-testid="approval-approve"
                    >
                      Approve
                    </button>{' '}
                    <button
                      type="button"
                      class="button small danger-outline"
                      onClick={() => onDecide({ a, approve: false })}
                      data-testid="approval-reject"
                    >
                      Reject
                    </button>
                  </>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function ApprovalsPage({ user }: { user: Whoami }) {
  const items = useAsync((signal) => listApprovals(signal), []);
  const [deciding, setDeciding] = useState<Decision | null>(null);
  const admin = isAdmin(user.role);

  return (
    <Page title="Approvals">
      <p class="hint">
        A command to more devices than the approval threshold, or to the whole fleet, waits here until a
        second admin approves it. Approving sends it to the devices that match at that moment.
      </p>
      <section class="card" aria-label="Approval requests">
        {items.loading && !items.data ? (
          <Loading />
        ) : items.error ? (
          <ErrorBox error={items.error} onRetry={items.reload} />
        ) : items.data && items.data.length > 0 ? (
          <ApprovalTable items={items.data} admin={admin} onDecide={setDeciding} />
        ) : (
          <Empty>No requests are waiting for approval.</Empty>
        )}
      </section>
      {deciding && (
        <ConfirmDialog
          title={deciding.approve ? 'Approve and send?' : 'Reject the request?'}
          confirmLabel={deciding.approve ? 'Approve and send' : 'Reject'}
          danger={!deciding.approve}
          onConfirm={async () => {
            // A refusal (your own request, decided meanwhile, expired) shows in the dialog.
            const r = deciding.approve ? await approve(deciding.a.id) : await reject(deciding.a.id);
            toast(r.status === 'done' ? `Approved: ${r.outcome ?? r.summary}` : `Request ${r.status}.`);
            items.reload();
          }}
          onClose={() => setDeciding(null)}
          testId="approval-confirm"
        >
          <p>{deciding.a.summary}</p>
        </ConfirmDialog>
      )}
    </Page>
  );
}
