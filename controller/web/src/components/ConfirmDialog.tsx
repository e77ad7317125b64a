// Confirmation of a consequential action; optionally the user must type a word (such as the
// device id) first. The action runs here so the dialog can show its progress and error.

import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import { errorText } from '../lib/toast';
import { Dialog } from './Dialog';

interface Props {
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  danger?: boolean;
  /** The user must type this exactly to enable the confirm button. */
  typeToConfirm?: string;
  onConfirm: () => Promise<void>;
  onClose: () => void;
  testId?: string;
}

export function ConfirmDialog(p: Props) {
  const [typed, setTyped] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const ready = p.typeToConfirm === undefined || typed === p.typeToConfirm;

  const submit = async (e: Event) => {
    e.preventDefault();
    if (!ready || busy) return;
    setBusy(true);
    setError(null);
    try {
      await p.onConfirm();
      p.onClose();
    } catch (err) {
      setError(errorText(err));
      setBusy(false);
    }
  };

  return (
    <Dialog title={p.title} onClose={p.onClose} testId={p.testId ?? 'confirm-dialog'}>
      <form onSubmit={submit}>
        <div class="dialog-message">{p.children}</div>
        {p.typeToConfirm !== undefined && (
          <div class="field">
            <label for="confirm-type">
              Type <strong class="mono">{p.typeToConfirm}</strong> to confirm
            </label>
            <input
              id="confirm-type"
              data-testid="confirm-input"
              data-autofocus
              autocomplete="off"
              spellcheck={false}
              value={typed}
              onInput={(e) => setTyped(e.currentTarget.value)}
            />
          </div>
        )}
        {error && (
          <p class="form-error" role="alert">
            {error}
          </p>
        )}
        <div class="dialog-actions">
          <button type="button" class="button" onClick={() => p.onClose()}>
            Cancel
          </button>
          <button
            type="submit"
            class={p.danger ? 'button danger' : 'button primary'}
            disabled={!ready || busy}
            data-testid="confirm-submit"
          >
            {busy ? 'Working…' : p.confirmLabel}
          </button>
        </div>
      </form>
    </Dialog>
  );
}
