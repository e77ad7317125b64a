// Enrollment tokens (admin): create one and copy the enroll command for the device; list
// and revoke them.

import { useState } from 'preact/hooks';
import { createToken, listTokens, revokeToken } from '../api/admin';
import type { CreatedToken, Labels, TokenInfo, TokenState } from '../api/types';
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
        ...(Object.keys(labels).length > 0 ? { labels } : {}),
      });
      setName('');
      setUses('');
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

export function EnrollmentPage() {
  const tokens = useAsync((signal) => listTokens(signal), []);
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
