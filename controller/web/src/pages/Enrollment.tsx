// Enrollment tokens (admin): create one and copy the enroll command for the device; list
// and revoke them; accept or reject the devices that wait for approval.

import { useState } from 'preact/hooks';
import {
  createToken,
  decideEnrollmentRequest,
  listEnrollmentRequests,
  listTokens,
  revokeToken,
} from '../api/admin';
import type { CreatedToken, EnrollmentRequest, Labels, TokenInfo, TokenState } from '../api/types';
import { ConfirmDialog } from '../components/ConfirmDialog';
import { CopyText } from '../components/CopyText';
import { LabelChips } from '../components/LabelChips';
import { LabelEditor } from '../components/LabelEditor';
import { Page } from '../components/Page';
import { Empty, ErrorBox, Loading } from '../components/States';
import { DateTime, RelTime } from '../components/Time';
import { useAsync } from '../lib/hooks';
import { DEVICE_ID_RULE, isDeviceId } from '../lib/ids';
import { Link } from '../lib/router';
import { errorText, toast } from '../lib/toast';

const TTLS: { s: number; label: string }[] = [
  { s: 900, label: '15 minutes' },
  { s: 3_600, label: '1 hour' },
  { s: 6 * 3_600, label: '6 hours' },
  { s: 86_400, label: '1 day' },
  { s: 7 * 86_400, label: '7 days' },
];

const STATE_TONE: Record<TokenState, string> = {
  unused: 'ok',
  used: 'muted',
  expired: 'warn',
  revoked: 'muted',
};

function CreateForm({ onCreated }: { onCreated: (t: CreatedToken) => void }) {
  const [name, setName] = useState('');
  const [ttl, setTtl] = useState(3_600);
  const [uses, setUses] = useState('');
  const [approval, setApproval] = useState(false);
  const [labels, setLabels] = useState<Labels | null>({});
  const [formKey, setFormKey] = useState(0);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const id = name.trim();
    if (id !== '' && !isDeviceId(id)) {
      setError(`Device id: ${DEVICE_ID_RULE}`);
      return;
    }
    if (labels === null) {
      setError('Fix the labels first.');
      return;
    }
    const maxUses = uses.trim() === '' ? null : Number(uses);
    if (maxUses !== null && !(Number.isInteger(maxUses) && maxUses >= 1 && maxUses <= 100_000)) {
      setError('Devices: a whole number from 1 to 100000, or empty for a single-use token.');
      return;
    }
    if (maxUses !== null && id !== '') {
      setError('A token for many devices cannot name one device id.');
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const created = await createToken({
        ttl_s: ttl,
        ...(id ? { name: id } : {}),
        ...(maxUses !== null ? { max_uses: maxUses } : {}),
        ...(approval ? { require_approval: true } : {}),
        ...(Object.keys(labels).length > 0 ? { labels } : {}),
      });
      setName('');
      setUses('');
      setApproval(false);
      setLabels({});
      setFormKey((k) => k + 1);
      onCreated(created);
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="form" onSubmit={submit} data-testid="token-form">
      <div class="form-row">
        <div class="field">
          <label for="token-name">Device id (optional)</label>
          <input
            id="token-name"
            placeholder="lobby-kiosk-1"
            spellcheck={false}
            autocapitalize="none"
            value={name}
            aria-describedby="token-name-hint"
            onInput={(e) => setName(e.currentTarget.value)}
            data-testid="token-name"
          />
          <p id="token-name-hint" class="hint">
            Without one, the device enrolls under its own hostname.
          </p>
        </div>
        <div class="field">
          <label for="token-uses">Devices (optional)</label>
          <input
            id="token-uses"
            inputMode="numeric"
            placeholder="1"
            value={uses}
            aria-describedby="token-uses-hint"
            onInput={(e) => setUses(e.currentTarget.value)}
            data-testid="token-uses"
          />
          <p id="token-uses-hint" class="hint">
            A provisioning token for an SD-card image enrolls up to this many devices.
          </p>
        </div>
        <div class="field">
          <label for="token-ttl">Valid for</label>
          <select
            id="token-ttl"
            value={String(ttl)}
            onChange={(e) => setTtl(Number(e.currentTarget.value))}
            data-testid="token-ttl"
          >
            {TTLS.map((t) => (
              <option key={t.s} value={String(t.s)}>
                {t.label}
              </option>
            ))}
          </select>
        </div>
      </div>
      <label class="check" for="token-approval">
        <input
          id="token-approval"
          type="checkbox"
          checked={approval}
          onChange={(e) => setApproval(e.currentTarget.checked)}
          data-testid="token-approval"
        />{' '}
        Devices wait until an admin accepts them
      </label>
      <fieldset>
        <legend>Labels the device starts with</legend>
        <LabelEditor key={formKey} initial={{}} idPrefix="token-label" onChange={setLabels} />
      </fieldset>
      {error && (
        <p class="form-error" role="alert">
          {error}
        </p>
      )}
      <div>
        <button type="submit" class="button primary" disabled={busy} data-testid="token-create">
          {busy ? 'Creating…' : 'Create token'}
        </button>
      </div>
    </form>
  );
}

function Created({ t, onClose }: { t: CreatedToken; onClose: () => void }) {
  return (
    <div class="created" data-testid="token-created" role="status">
      <h3>Token created</h3>
      <p>
        Run this on the device within <RelTime ms={t.expires_at} /> (until <DateTime ms={t.expires_at} />
        ). It is not shown again; a single-use token works once, a provisioning token for its count of
        devices.
      </p>
      <CopyText text={t.enroll_command} label="Enroll command" testId="enroll-command" />
      <button type="button" class="button subtle" onClick={onClose}>
        Done
      </button>
    </div>
  );
}

function TokenTable({ tokens, onRevoke }: { tokens: TokenInfo[]; onRevoke: (t: TokenInfo) => void }) {
  return (
    <div class="table-scroll">
      <table class="table" data-testid="token-table">
        <thead>
          <tr>
            <th scope="col">Id</th>
            <th scope="col">Device id</th>
            <th scope="col">Labels</th>
            <th scope="col">State</th>
            <th scope="col">Created</th>
            <th scope="col">Expires</th>
            <th scope="col">Used by</th>
            <th scope="col">
              <span class="visually-hidden">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {tokens.map((t) => (
            <tr key={t.id} data-testid="token-row" data-token-id={t.id} data-state={t.state}>
              <td class="mono">{t.id}</td>
              <td class="mono">{t.name ?? <span class="muted">any</span>}</td>
              <td>
                <LabelChips labels={t.labels} />
              </td>
              <td>
                <span class={`badge badge-${STATE_TONE[t.state]}`}>{t.state}</span>
                {t.max_uses !== null && (
                  <span class="muted" data-testid="token-uses-count">
                    {' '}
                    {t.uses} of {t.max_uses} devices
                  </span>
                )}
              </td>
              <td>
                <RelTime ms={t.created_at} />
              </td>
              <td>
                <RelTime ms={t.expires_at} />
              </td>
              <td>
                {t.used_by ? (
                  <Link href={`/devices/${encodeURIComponent(t.used_by)}`} class="mono">
                    {t.used_by}
                  </Link>
                ) : (
                  <span class="muted">—</span>
                )}
              </td>
              <td class="actions">
                {t.state === 'unused' && (
                  <button
                    type="button"
                    class="button small danger-outline"
                    onClick={() => onRevoke(t)}
                    data-testid="token-revoke"
                  >
                    Revoke
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function RequestTable({ requests, onDecided }: { requests: EnrollmentRequest[]; onDecided: () => void }) {
  const [busy, setBusy] = useState<string | null>(null);
  const decide = async (r: EnrollmentRequest, decision: 'accept' | 'reject') => {
    setBusy(r.id);
    try {
      await decideEnrollmentRequest(r.id, decision);
      toast(
        decision === 'accept'
          ? `${r.device_id} accepted: it enrolls when it next asks.`
          : `${r.device_id} rejected.`,
      );
      onDecided();
    } catch (err) {
      toast(errorText(err), 'error');
    } finally {
      setBusy(null);
    }
  };
  return (
    <div class="table-scroll">
      <table class="table" data-testid="request-table">
        <thead>
          <tr>
            <th scope="col">Device id</th>
            <th scope="col">Key (SHA-256)</th>
            <th scope="col">From</th>
            <th scope="col">Token</th>
            <th scope="col">Asked</th>
            <th scope="col">State</th>
            <th scope="col">
              <span class="visually-hidden">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {requests.map((r) => (
            <tr key={r.id} data-testid="request-row" data-device-id={r.device_id} data-status={r.status}>
              <td class="mono">{r.device_id}</td>
              <td class="mono" title={r.key_fingerprint}>
                {r.key_fingerprint.slice(0, 16)}…
              </td>
              <td class="mono">{r.source}</td>
              <td class="mono">{r.token_id}</td>
              <td>
                <RelTime ms={r.last_seen_at} />
              </td>
              <td>
                <span class={`badge badge-${r.status === 'pending' ? 'warn' : 'ok'}`}>{r.status}</span>
              </td>
              <td class="actions">
                {r.status === 'pending' && (
                  <>
                    <button
                      type="button"
                      class="button small primary"
                      disabled={busy === r.id}
                      onClick={() => void decide(r, 'accept')}
                      data-testid="request-accept"
                    >
                      Accept
                    </button>{' '}
                    <button
                      type="button"
                      class="button small danger-outline"
                      disabled={busy === r.id}
                      onClick={() => void decide(r, 'reject')}
                      data-testid="request-reject"
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

export function EnrollmentPage() {
  const tokens = useAsync((signal) => listTokens(signal), []);
  const requests = useAsync((signal) => listEnrollmentRequests(signal), []);
  const [created, setCreated] = useState<CreatedToken | null>(null);
  const [revoking, setRevoking] = useState<TokenInfo | null>(null);

  return (
    <Page title="Enrollment">
      <section class="card" aria-labelledby="new-token-title">
        <h2 id="new-token-title">New enrollment token</h2>
        {created ? (
          <Created t={created} onClose={() => setCreated(null)} />
        ) : (
          <CreateForm
            onCreated={(t) => {
              setCreated(t);
              tokens.reload();
            }}
          />
        )}
      </section>
      {requests.data && requests.data.length > 0 && (
        <section class="card" aria-labelledby="requests-title">
          <h2 id="requests-title">Waiting for approval</h2>
          <p class="hint">
            Compare the key with the one the device logs (<span class="mono">key_sha256</span>) before
            accepting it.
          </p>
          <RequestTable
            requests={requests.data}
            onDecided={() => {
              requests.reload();
              tokens.reload();
            }}
          />
        </section>
      )}
      <section class="card" aria-labelledby="tokens-title">
        <h2 id="tokens-title">Tokens</h2>
        {tokens.error !== undefined && !tokens.loading ? (
          <ErrorBox error={tokens.error} onRetry={tokens.reload} />
        ) : !tokens.data ? (
          <Loading label="Loading tokens…" />
        ) : tokens.data.length === 0 ? (
          <Empty>No enrollment tokens yet.</Empty>
        ) : (
          <TokenTable tokens={tokens.data} onRevoke={setRevoking} />
        )}
      </section>
      {revoking && (
        <ConfirmDialog
          title="Revoke this token?"
          confirmLabel="Revoke token"
          danger
          onConfirm={async () => {
            await revokeToken(revoking.id);
            toast(`Token ${revoking.id} revoked.`);
            tokens.reload();
          }}
          onClose={() => setRevoking(null)}
        >
          <p>
            Token <span class="mono">{revoking.id}</span> stops working at once; a device that has not
            enrolled with it yet needs a new one.
          </p>
        </ConfirmDialog>
      )}
    </Page>
  );
}
