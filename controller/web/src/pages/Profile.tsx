// The signed-in user's own account: password, two-factor sign-in, sessions, sign-out.

import { useState } from 'preact/hooks';
import { listSessions, logout, revokeSession } from '../api/auth';
import type { SessionView, Whoami } from '../api/types';
import { ConfirmDialog } from '../components/ConfirmDialog';
import { MfaSetup } from '../components/MfaSetup';
import { Page } from '../components/Page';
import { PasswordForm } from '../components/PasswordForm';
import { Empty, ErrorBox, Loading } from '../components/States';
import { DateTime, RelTime } from '../components/Time';
import { browserName } from '../lib/account';
import { useAsync } from '../lib/hooks';
import { enter } from '../lib/session';
import { toast, toastError } from '../lib/toast';

function Sessions() {
  const sessions = useAsync((signal) => listSessions(signal), []);
  const [ending, setEnding] = useState<SessionView | null>(null);

  if (sessions.error !== undefined && !sessions.loading) {
    return <ErrorBox error={sessions.error} onRetry={sessions.reload} />;
  }
  if (!sessions.data) return <Loading label="Loading sessions…" />;
  if (sessions.data.length === 0) return <Empty>No sessions.</Empty>;
  return (
    <>
      <div class="table-scroll">
        <table class="table" data-testid="session-table">
          <thead>
            <tr>
              <th scope="col">Client</th>
              <th scope="col">Address</th>
              <th scope="col">Signed in</th>
              <th scope="col">Last used</th>
              <th scope="col">Expires</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {sessions.data.map((s) => (
              <tr key={s.id} data-testid="session-row" data-current={s.current}>
                <td title={s.user_agent}>
                  {browserName(s.user_agent)}
                  {s.current && <span class="badge badge-ok">this browser</span>}
                </td>
                <td class="mono">{s.ip}</td>
                <td>
                  <DateTime ms={s.created_at} />
                </td>
                <td>
                  <RelTime ms={s.last_used_at} />
                </td>
                <td>
                  <RelTime ms={s.expires_at} />
                </td>
                <td class="actions">
                  <button
                    type="button"
                    class="button small danger-outline"
                    onClick={() => setEnding(s)}
                    data-testid="session-revoke"
                  >
                    {s.current ? 'Sign out' : 'End'}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {ending && (
        <ConfirmDialog
          title={ending.current ? 'Sign out of this browser?' : 'End this session?'}
          confirmLabel={ending.current ? 'Sign out' : 'End session'}
          danger
          onConfirm={async () => {
            if (ending.current) {
              await logout();
              return;
            }
            await revokeSession(ending.id);
            toast('Session ended.');
            sessions.reload();
          }}
          onClose={() => setEnding(null)}
        >
          <p>
            {browserName(ending.user_agent)} from <span class="mono">{ending.ip}</span> must sign in again.
          </p>
        </ConfirmDialog>
      )}
    </>
  );
}

export function ProfilePage({ user }: { user: Whoami }) {
  return (
    <Page
      title="Profile"
      subtitle={
        <>
          {user.name} · {user.role}
        </>
      }
      actions={
        <button
          type="button"
          class="button"
          onClick={() => logout().catch((e: unknown) => toastError(e, 'Sign-out'))}
          data-testid="profile-sign-out"
        >
          Sign out
        </button>
      }
    >
      <div class="two-col">
        <section class="card" aria-labelledby="password-title">
          <h2 id="password-title">Password</h2>
          <p class="hint">Changing it signs out your other sessions.</p>
          <PasswordForm
            idPrefix="profile-password"
            submitLabel="Change password"
            onDone={() => toast('Password changed. Your other sessions were signed out.')}
          />
        </section>
        <section class="card" aria-labelledby="mfa-title" data-testid="mfa-section">
          <h2 id="mfa-title">Two-factor sign-in</h2>
          {user.mfa_enabled ? (
            <p data-testid="mfa-status">
              <span class="badge badge-ok">on</span> Sign-in asks for a code from your authenticator app. If
              you lose it, use a recovery code, or ask an administrator to reset it.
            </p>
          ) : (
            <MfaSetup
              onDone={() =>
                enter().then(
                  () => toast('Two-factor sign-in is on.'),
                  (e: unknown) => toastError(e),
                )
              }
            />
          )}
        </section>
      </div>
      <section class="card" aria-labelledby="sessions-title">
        <h2 id="sessions-title">Sessions</h2>
        <Sessions />
      </section>
    </Page>
  );
}
