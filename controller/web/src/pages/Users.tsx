// Users (admin): list, create, change role, disable/enable, reset MFA, delete; and which
// roles must use MFA.

import { useState } from 'preact/hooks';
import {
  createUser,
  deleteUser,
  getSecuritySettings,
  listUsers,
  resetUserMfa,
  setSecuritySettings,
  updateUser,
} from '../api/admin';
import type { CreatedUser, Role, UserView, Whoami } from '../api/types';
import { ConfirmDialog } from '../components/ConfirmDialog';
import { CopyText } from '../components/CopyText';
import { Page } from '../components/Page';
import { Empty, ErrorBox, Loading } from '../components/States';
import { RelTime } from '../components/Time';
import { MIN_PASSWORD } from '../lib/account';
import { useAsync } from '../lib/hooks';
import { isUserName, USER_NAME_RULE } from '../lib/ids';
import { enter } from '../lib/session';
import { errorText, toast, toastError } from '../lib/toast';

const ROLES: Role[] = ['viewer', 'operator', 'admin'];

type Pending =
  | { kind: 'delete'; user: UserView }
  | { kind: 'reset-mfa'; user: UserView }
  | { kind: 'disable'; user: UserView };

function CreateUser({ onCreated }: { onCreated: (c: CreatedUser) => void }) {
  const [name, setName] = useState('');
  const [role, setRole] = useState<Role>('viewer');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const n = name.trim();
    if (!isUserName(n)) {
      setError(`User name: ${USER_NAME_RULE}`);
      return;
    }
    if (password !== '' && password.length < MIN_PASSWORD) {
      setError(`The initial password needs at least ${MIN_PASSWORD} characters (or leave it empty).`);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      onCreated(await createUser(n, role, password || undefined));
      setName('');
      setPassword('');
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="form" onSubmit={submit} data-testid="user-form">
      <div class="form-row">
        <div class="field">
          <label for="user-name">User name</label>
          <input
            id="user-name"
            autocomplete="off"
            autocapitalize="none"
            spellcheck={false}
            required
            value={name}
            onInput={(e) => setName(e.currentTarget.value)}
            data-testid="user-name"
          />
        </div>
        <div class="field">
          <label for="user-role">Role</label>
          <select
            id="user-role"
            value={role}
            onChange={(e) => setRole(e.currentTarget.value as Role)}
            data-testid="user-role"
          >
            {ROLES.map((r) => (
              <option key={r} value={r}>
                {r}
              </option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="user-password">Initial password</label>
          <input
            id="user-password"
            type="password"
            autocomplete="new-password"
            value={password}
            aria-describedby="user-password-hint"
            onInput={(e) => setPassword(e.currentTarget.value)}
            data-testid="user-password"
          />
          <p id="user-password-hint" class="hint">
            Leave empty to generate a one-time password. The user must change it at first sign-in.
          </p>
        </div>
      </div>
      {error && (
        <p class="form-error" role="alert">
          {error}
        </p>
      )}
      <div>
        <button type="submit" class="button primary" disabled={busy} data-testid="user-create">
          {busy ? 'Creating…' : 'Create user'}
        </button>
      </div>
    </form>
  );
}

function MfaPolicy() {
  const settings = useAsync((signal) => getSecuritySettings(signal), []);
  const [busy, setBusy] = useState(false);
  if (settings.error !== undefined && !settings.loading) {
    return <ErrorBox error={settings.error} onRetry={settings.reload} />;
  }
  if (!settings.data) return <Loading />;
  const roles = settings.data.mfa_required_roles;
  const toggle = async (r: Role, on: boolean) => {
    setBusy(true);
    try {
      const next = on ? [...roles, r] : roles.filter((x) => x !== r);
      settings.setData(() => ({ mfa_required_roles: next }));
      const saved = await setSecuritySettings({ mfa_required_roles: next });
      settings.setData(() => saved);
      toast(`Two-factor sign-in ${on ? 'required' : 'optional'} for ${r}s.`);
      // The policy may now apply to the signed-in admin too.
      await enter();
    } catch (e) {
      toastError(e, 'Cannot change the setting');
      settings.reload();
    } finally {
      setBusy(false);
    }
  };
  return (
    <fieldset class="checks" data-testid="mfa-policy">
      <legend>Require two-factor sign-in for</legend>
      {ROLES.map((r) => (
        <label key={r} class="check" for={`mfa-role-${r}`}>
          <input
            id={`mfa-role-${r}`}
            type="checkbox"
            checked={roles.includes(r)}
            disabled={busy}
            onChange={(e) => void toggle(r, e.currentTarget.checked)}
          />
          {r}s
        </label>
      ))}
    </fieldset>
  );
}

export function UsersPage({ user: me }: { user: Whoami }) {
  const users = useAsync((signal) => listUsers(signal), []);
  const [created, setCreated] = useState<CreatedUser | null>(null);
  const [pending, setPending] = useState<Pending | null>(null);
  const [changing, setChanging] = useState<string | null>(null);

  const replace = (u: UserView) => users.setData((list) => list?.map((x) => (x.name === u.name ? u : x)));

  const change = async (u: UserView, patch: { role?: Role; disabled?: boolean }) => {
    setChanging(u.name);
    try {
      replace(await updateUser(u.name, patch));
      toast(
        patch.role
          ? `${u.name} is now ${patch.role === 'admin' ? 'an' : 'a'} ${patch.role}.`
          : `${u.name} is ${patch.disabled ? 'disabled' : 'enabled'}.`,
      );
    } catch (e) {
      toastError(e, `Cannot change ${u.name}`);
      users.reload();
    } finally {
      setChanging(null);
    }
  };

  return (
    <Page title="Users">
      <section class="card" aria-labelledby="new-user-title">
        <h2 id="new-user-title">New user</h2>
        {created ? (
          <div class="created" role="status" data-testid="user-created">
            <p>
              User <strong>{created.user.name}</strong> ({created.user.role}) created.
            </p>
            {created.one_time_password && (
              <>
                <p>
                  Give them this one-time password; it is not shown again and must be changed at first
                  sign-in.
                </p>
                <CopyText
                  text={created.one_time_password}
                  label="One-time password"
                  testId="one-time-password"
                />
              </>
            )}
            <button type="button" class="button subtle" onClick={() => setCreated(null)}>
              Done
            </button>
          </div>
        ) : (
          <CreateUser
            onCreated={(c) => {
              setCreated(c);
              users.reload();
            }}
          />
        )}
      </section>
      <section class="card" aria-labelledby="users-title">
        <h2 id="users-title">All users</h2>
        {users.error !== undefined && !users.loading ? (
          <ErrorBox error={users.error} onRetry={users.reload} />
        ) : !users.data ? (
          <Loading label="Loading users…" />
        ) : users.data.length === 0 ? (
          <Empty>No users.</Empty>
        ) : (
          <div class="table-scroll">
            <table class="table" data-testid="user-table">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Role</th>
                  <th scope="col">State</th>
                  <th scope="col">Two-factor</th>
                  <th scope="col">Created</th>
                  <th scope="col">Password changed</th>
                  <th scope="col">
                    <span class="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {users.data.map((u) => {
                  const self = u.name === me.name;
                  const busy = changing === u.name;
                  return (
                    <tr key={u.name} data-testid="user-row" data-user={u.name}>
                      <th scope="row">
                        {u.name}
                        {self && <span class="sub">you</span>}
                      </th>
                      <td>
                        <label class="visually-hidden" for={`role-${u.name}`}>
                          Role of {u.name}
                        </label>
                        <select
                          id={`role-${u.name}`}
                          value={u.role}
                          disabled={self || busy}
                          onChange={(e) => void change(u, { role: e.currentTarget.value as Role })}
                          data-testid="user-role-select"
                        >
                          {ROLES.map((r) => (
                            <option key={r} value={r}>
                              {r}
                            </option>
                          ))}
                        </select>
                      </td>
                      <td>
                        {u.disabled ? (
                          <span class="badge badge-muted">disabled</span>
                        ) : (
                          <span class="badge badge-ok">active</span>
                        )}
                        {u.must_change_password && <span class="sub">must change password</span>}
                      </td>
                      <td>{u.mfa_enabled ? 'on' : <span class="muted">off</span>}</td>
                      <td>
                        <RelTime ms={u.created_at} />
                      </td>
                      <td>
                        <RelTime ms={u.password_changed_at} />
                      </td>
                      <td class="actions">
                        {!self && (
                          <>
                            <button
                              type="button"
                              class="button small"
                              disabled={busy}
                              onClick={() =>
                                u.disabled
                                  ? void change(u, { disabled: false })
                                  : setPending({ kind: 'disable', user: u })
                              }
                              data-testid="user-toggle-disabled"
                            >
                              {u.disabled ? 'Enable' : 'Disable'}
                            </button>
                            {u.mfa_enabled && (
                              <button
                                type="button"
                                class="button small"
                                onClick={() => setPending({ kind: 'reset-mfa', user: u })}
                                data-testid="user-reset-mfa"
                              >
                                Reset MFA
                              </button>
                            )}
                            <button
                              type="button"
                              class="button small danger-outline"
                              onClick={() => setPending({ kind: 'delete', user: u })}
                              data-testid="user-delete"
                            >
                              Delete
                            </button>
                          </>
                        )}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </section>
      <section class="card" aria-labelledby="security-title">
        <h2 id="security-title">Security</h2>
        <MfaPolicy />
      </section>
      {pending?.kind === 'delete' && (
        <ConfirmDialog
          title={`Delete ${pending.user.name}?`}
          confirmLabel="Delete user"
          danger
          typeToConfirm={pending.user.name}
          onConfirm={async () => {
            await deleteUser(pending.user.name);
            toast(`User ${pending.user.name} deleted.`);
            users.reload();
          }}
          onClose={() => setPending(null)}
          testId="user-delete-dialog"
        >
          <p>Their sessions end at once. The audit log keeps their past actions.</p>
        </ConfirmDialog>
      )}
      {pending?.kind === 'disable' && (
        <ConfirmDialog
          title={`Disable ${pending.user.name}?`}
          confirmLabel="Disable"
          danger
          onConfirm={() => change(pending.user, { disabled: true })}
          onClose={() => setPending(null)}
        >
          <p>They are signed out everywhere at once and cannot sign in until enabled again.</p>
        </ConfirmDialog>
      )}
      {pending?.kind === 'reset-mfa' && (
        <ConfirmDialog
          title={`Reset two-factor sign-in of ${pending.user.name}?`}
          confirmLabel="Reset MFA"
          onConfirm={async () => {
            await resetUserMfa(pending.user.name);
            toast(`Two-factor sign-in of ${pending.user.name} reset.`);
            users.reload();
          }}
          onClose={() => setPending(null)}
        >
          <p>
            Use this when they lost their authenticator. They can sign in with the password alone and set it
            up again.
          </p>
        </ConfirmDialog>
      )}
    </Page>
  );
}
