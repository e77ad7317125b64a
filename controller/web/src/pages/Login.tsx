// Sign-in: password, then a TOTP or recovery code when MFA is on, then the forced password
// change at first sign-in; afterwards back to the page the user came from.

import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError } from '../api/client';
import { login, loginMfa, logout } from '../api/auth';
import type { TokenResponse } from '../api/types';
import { Logo } from '../components/Logo';
import { PasswordForm } from '../components/PasswordForm';
import { safeReturnPath } from '../lib/paths';
import { navigate, useLocation } from '../lib/router';
import { enter, session } from '../lib/session';
import { useStore } from '../lib/store';
import { signInErrorText } from '../lib/account';

type Step = { kind: 'password' } | { kind: 'mfa'; token: string } | { kind: 'change' };

export function LoginPage({ forceChange = false }: { forceChange?: boolean }) {
  const { search } = useLocation();
  const s = useStore(session);
  const notice = s.state === 'signed_out' ? s.notice : null;
  const [step, setStep] = useState<Step>(forceChange ? { kind: 'change' } : { kind: 'password' });
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [code, setCode] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const heading = useRef<HTMLHeadingElement>(null);

  useEffect(() => heading.current?.focus(), [step.kind]);
  useEffect(() => {
    document.title = 'Sign in · pifleet';
  }, []);

  const finish = async () => {
    const user = await enter();
    if (!user.must_change_password) {
      navigate(safeReturnPath(new URLSearchParams(search).get('next')), { replace: true });
    }
  };

  const signedIn = async (resp: TokenResponse) => {
    if (resp.mfa_required && resp.mfa_token) {
      setStep({ kind: 'mfa', token: resp.mfa_token });
      setCode('');
      return;
    }
    if (resp.user?.must_change_password) {
      setStep({ kind: 'change' });
      return;
    }
    await finish();
  };

  const run = async (e: Event, task: () => Promise<void>) => {
    e.preventDefault();
    if (busy) return;
    setBusy(true);
    setError(null);
    try {
      await task();
    } catch (err) {
      setError(signInErrorText(err));
      // The MFA step's token expired: back to the password step.
      if (err instanceof ApiError && step.kind === 'mfa' && err.code === 'mfa_expired') {
        setStep({ kind: 'password' });
      }
    } finally {
      setBusy(false);
    }
  };

  const submitPassword = (e: Event) =>
    run(e, async () => {
      const resp = await login(username.trim(), password);
      setPassword('');
      await signedIn(resp);
    });

  const submitCode = (e: Event) =>
    run(e, async () => {
      if (step.kind !== 'mfa') return;
      await signedIn(await loginMfa(step.token, code));
    });

  const title =
    step.kind === 'password'
      ? 'Sign in'
      : step.kind === 'mfa'
        ? 'Two-factor sign-in'
        : 'Choose a new password';

  return (
    <div class="login">
      <div class="login-card">
        <p class="brand login-brand">
          <Logo />
          pifleet
        </p>
        <h1 ref={heading} tabIndex={-1} data-testid="page-heading">
          {title}
        </h1>
        {notice && step.kind === 'password' && (
          <p class="notice" role="status" data-testid="login-notice">
            {notice}
          </p>
        )}
        {error && (
          <p class="form-error" role="alert" data-testid="login-error">
            {error}
          </p>
        )}
        {step.kind === 'password' && (
          <form class="form" onSubmit={submitPassword} data-testid="login-form">
            <div class="field">
              <label for="login-username">User name</label>
              <input
                id="login-username"
                name="username"
                autocomplete="username"
                autocapitalize="none"
                spellcheck={false}
                required
                value={username}
                onInput={(e) => setUsername(e.currentTarget.value)}
                data-testid="login-username"
              />
            </div>
            <div class="field">
              <label for="login-password">Password</label>
              <input
                id="login-password"
                name="password"
                type="password"
                autocomplete="current-password"
                required
                value={password}
                onInput={(e) => setPassword(e.currentTarget.value)}
                data-testid="login-password"
              />
            </div>
            <button type="submit" class="button primary wide" disabled={busy} data-testid="login-submit">
              {busy ? 'Signing in…' : 'Sign in'}
            </button>
          </form>
        )}
        {step.kind === 'mfa' && (
          <form class="form" onSubmit={submitCode} data-testid="mfa-form">
            <div class="field">
              <label for="login-mfa-code">Code</label>
              <input
                id="login-mfa-code"
                autocomplete="one-time-code"
                autocapitalize="none"
                spellcheck={false}
                required
                aria-describedby="login-mfa-hint"
                value={code}
                onInput={(e) => setCode(e.currentTarget.value)}
                data-testid="mfa-code"
              />
              <p id="login-mfa-hint" class="hint">
                The 6-digit code from your authenticator app, or one of your recovery codes.
              </p>
            </div>
            <button type="submit" class="button primary wide" disabled={busy} data-testid="mfa-submit">
              {busy ? 'Checking…' : 'Continue'}
            </button>
            <button
              type="button"
              class="button subtle wide"
              onClick={() => {
                setStep({ kind: 'password' });
                setError(null);
              }}
            >
              Start over
            </button>
          </form>
        )}
        {step.kind === 'change' && (
          <>
            <p>Your password was set by an administrator. Choose your own before you continue.</p>
            <PasswordForm idPrefix="first-password" submitLabel="Save and continue" onDone={finish} />
            <button
              type="button"
              class="button subtle wide"
              onClick={() => {
                logout()
                  .catch(() => undefined)
                  .finally(() => setStep({ kind: 'password' }));
              }}
            >
              Sign out
            </button>
          </>
        )}
      </div>
    </div>
  );
}
