// Changing one's password: the forced change at first sign-in and the profile page.

import { useState } from 'preact/hooks';
import { changePassword } from '../api/auth';
import { MIN_PASSWORD, newPasswordError, passwordErrorText } from '../lib/account';

interface Props {
  submitLabel: string;
  onDone: () => void | Promise<void>;
  idPrefix: string;
}

export function PasswordForm({ submitLabel, onDone, idPrefix }: Props) {
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [repeat, setRepeat] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const problem = newPasswordError(current, next, repeat);
    if (problem) {
      setError(problem);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await changePassword(current, next);
      setCurrent('');
      setNext('');
      setRepeat('');
      await onDone();
    } catch (err) {
      setError(passwordErrorText(err));
    } finally {
      setBusy(false);
    }
  };

  const id = (s: string) => `${idPrefix}-${s}`;
  return (
    <form class="form" onSubmit={submit} data-testid={id('form')}>
      <div class="field">
        <label for={id('current')}>Current password</label>
        <input
          id={id('current')}
          type="password"
          autocomplete="current-password"
          required
          value={current}
          onInput={(e) => setCurrent(e.currentTarget.value)}
          data-testid={id('current')}
        />
      </div>
      <div class="field">
        <label for={id('new')}>New password</label>
        <input
          id={id('new')}
          type="password"
          autocomplete="new-password"
          required
          minLength={MIN_PASSWORD}
          aria-describedby={id('hint')}
          value={next}
          onInput={(e) => setNext(e.currentTarget.value)}
          data-testid={id('new')}
        />
        <p id={id('hint')} class="hint">
          At least {MIN_PASSWORD} characters and hard to guess: a few unrelated words work well.
        </p>
      </div>
      <div class="field">
        <label for={id('repeat')}>New password again</label>
        <input
          id={id('repeat')}
          type="password"
          autocomplete="new-password"
          required
          value={repeat}
          onInput={(e) => setRepeat(e.currentTarget.value)}
          data-testid={id('repeat')}
        />
      </div>
      {error && (
        <p class="form-error" role="alert">
          {error}
        </p>
      )}
      <button type="submit" class="button primary" disabled={busy} data-testid={id('submit')}>
        {busy ? 'Saving…' : submitLabel}
      </button>
    </form>
  );
}
