// Editing labels as key/value rows (values may hold any printable text, commas included).

import { useState } from 'preact/hooks';
import type { Labels } from '../api/types';
import { MAX_LABELS, rowsToLabels } from '../lib/labels';

interface Row {
  id: number;
  key: string;
  value: string;
}

let rowId = 0;
const toRows = (labels: Labels): Row[] =>
  Object.keys(labels)
    .sort()
    .map((key) => ({ id: rowId++, key, value: labels[key] ?? '' }));

interface Props {
  initial: Labels;
  idPrefix: string;
  /** Saving; a rejected promise keeps the editor open (the caller shows the error). */
  onSave?: (labels: Labels) => Promise<void>;
  /** Without onSave: reports every change (a form field of a larger form). */
  onChange?: (labels: Labels | null) => void;
  saveLabel?: string;
}

export function LabelEditor({ initial, idPrefix, onSave, onChange, saveLabel = 'Save labels' }: Props) {
  const [rows, setRows] = useState<Row[]>(() => {
    const r = toRows(initial);
    return r.length > 0 ? r : [{ id: rowId++, key: '', value: '' }];
  });
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const change = (next: Row[]) => {
    setRows(next);
    if (onChange) {
      const r = rowsToLabels(next);
      setError('error' in r ? r.error : null);
      onChange('error' in r ? null : r.labels);
    }
  };
  const edit = (id: number, patch: Partial<Row>) =>
    change(rows.map((r) => (r.id === id ? { ...r, ...patch } : r)));

  const save = async (e: Event) => {
    e.preventDefault();
    if (!onSave) return;
    const r = rowsToLabels(rows);
    if ('error' in r) {
      setError(r.error);
      return;
    }
    setError(null);
    setBusy(true);
    try {
      await onSave(r.labels);
    } catch {
      // The caller reported it.
    } finally {
      setBusy(false);
    }
  };

  const body = (
    <>
      <div class="label-rows">
        {rows.map((r, i) => (
          <div key={r.id} class="label-row" data-testid="label-row">
            <label class="visually-hidden" for={`${idPrefix}-k-${r.id}`}>
              Key {i + 1}
            </label>
            <input
              id={`${idPrefix}-k-${r.id}`}
              placeholder="key"
              spellcheck={false}
              autocapitalize="none"
              value={r.key}
              onInput={(e) => edit(r.id, { key: e.currentTarget.value })}
              data-testid="label-key"
            />
            <span aria-hidden="true">=</span>
            <label class="visually-hidden" for={`${idPrefix}-v-${r.id}`}>
              Value {i + 1}
            </label>
            <input
              id={`${idPrefix}-v-${r.id}`}
              placeholder="value"
              spellcheck={false}
              value={r.value}
              onInput={(e) => edit(r.id, { value: e.currentTarget.value })}
              data-testid="label-value"
            />
            <button
              type="button"
              class="icon-button"
              aria-label={`Remove label ${i + 1}`}
              onClick={() => change(rows.filter((x) => x.id !== r.id))}
            >
              ×
            </button>
          </div>
        ))}
      </div>
      {error && (
        <p class="form-error" role="alert">
          {error}
        </p>
      )}
      <div class="button-row">
        <button
          type="button"
          class="button"
          disabled={rows.length >= MAX_LABELS}
          onClick={() => change([...rows, { id: rowId++, key: '', value: '' }])}
          data-testid="label-add"
        >
          Add label
        </button>
        {onSave && (
          <button type="submit" class="button primary" disabled={busy} data-testid="labels-save">
            {busy ? 'Saving…' : saveLabel}
          </button>
        )}
      </div>
    </>
  );

  return onSave ? (
    <form class="label-editor" onSubmit={save} data-testid="label-editor">
      {body}
    </form>
  ) : (
    <div class="label-editor" data-testid="label-editor">
      {body}
    </div>
  );
}
