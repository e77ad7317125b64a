// Setting up TOTP: a QR code and the secret for the authenticator app, a code to confirm,
// then the recovery codes, shown once.

import { useState } from 'preact/hooks';
import { confirmMfa, startMfa } from '../api/auth';
import type { MfaSetup as Setup } from '../api/types';
import { groupSecret, otpauthSecret } from '../lib/account';
import { errorText } from '../lib/toast';
import { CopyText } from './CopyText';

export function MfaSetup({ onDone }: { onDone: () => void | Promise<void> }) {
  const [setup, setSetup] = useState<Setup | null>(null);
  const [code, setCode] = useState('');
  const [codes, setCodes] = useState<string[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const begin = async () => {
    setBusy(true);
    setError(null);
    try {
      setSetup(await startMfa());
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(false);
    }
  };

  const confirm = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const r = await confirmMfa(code);
      setCodes(r.recovery_codes);
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  if (codes) {
    return (
      <div class="stack" data-testid="mfa-recovery">
        <p class="notice notice-ok" role="status">
          Two-factor sign-in is on.
        </p>
        <p>
          These recovery codes each work once, in place of a code from your authenticator. Store them
          somewhere safe now: they are not shown again.
        </p>
        <CopyText text={codes.join('\n')} label="Recovery codes" testId="recovery-codes" />
        <button type="button" class="button primary" onClick={() => void onDone()} data-testid="mfa-done">
          I have stored them
        </button>
      </div>
    );
  }

  if (!setup) {
    return (
      <div class="stack">
        <p>Protect your account with a code from an authenticator app (TOTP) in addition to your password.</p>
        {error && (
          <p class="form-error" role="alert">
            {error}
          </p>
        )}
        <div>
          <button
            type="button"
            class="button primary"
            onClick={begin}
            disabled={busy}
            data-testid="mfa-start"
          >
            {busy ? 'Starting…' : 'Set up two-factor sign-in'}
          </button>
        </div>
      </div>
    );
  }

  const secret = otpauthSecret(setup.otpauth_uri);
  return (
    <form class="stack" onSubmit={confirm} data-testid="mfa-setup">
      <p>Scan this code with your authenticator app, then enter the 6-digit code it shows.</p>
      <div class="mfa-qr">
        <img
          src={`data:image/png;base64,${setup.qr_png_base64}`}
          alt="QR code of the authenticator setup link"
          width={200}
          height={200}
          data-testid="mfa-qr"
        />
        {secret && (
          <div>
            <p class="hint">Cannot scan? Enter this key by hand:</p>
            <p class="mono secret" data-testid="mfa-secret">
              {groupSecret(secret)}
            </p>
          </div>
        )}
      </div>
      <div class="field">
        <label for="mfa-confirm-code">Code from the app</label>
        <input
          id="mfa-confirm-code"
          inputMode="numeric"
          autocomplete="one-time-code"
          pattern="[0-9 ]{6,7}"
          required
          value={code}
          onInput={(e) => setCode(e.currentTarget.value)}
          data-testid="mfa-confirm-code"
        />
      </div>
      {error && (
        <p class="form-error" role="alert">
          {error}
        </p>
      )}
      <div>
        <button type="submit" class="button primary" disabled={busy} data-testid="mfa-confirm">
          {busy ? 'Checking…' : 'Turn on'}
        </button>
      </div>
    </form>
  );
}
