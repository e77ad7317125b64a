// Sending one command to every device that matches a label selector: a preview of the
// targets, an action picker, and a confirmation that says how many devices receive it.

import { useState } from 'preact/hooks';
import { sendCommand } from '../api/commands';
import { listDevices } from '../api/devices';
import type { Action, ActionKind, Labels, ServiceOp } from '../api/types';
import {
  type ActionFields,
  actionError,
  buildAction,
  DEFAULT_JOURNAL_LINES,
  describeAction,
  SERVICE_OPS,
} from '../lib/commands';
import { formatNumber, plural } from '../lib/format';
import { useAsync, useDebounced } from '../lib/hooks';
import { labelPairs, parseSelector, selectorParam } from '../lib/labels';
import { Link } from '../lib/router';
import { errorText, toast } from '../lib/toast';
import { ConfirmDialog } from './ConfirmDialog';
import { ErrorBox, Loading } from './States';

const PREVIEW = 8;

const KINDS: { kind: ActionKind; label: string }[] = [
  { kind: 'ping', label: 'Ping' },
  { kind: 'service', label: 'Service operation' },
  { kind: 'journal', label: 'Journal tail' },
  { kind: 'script', label: 'Run a script' },
  { kind: 'set_interval', label: 'Set telemetry interval' },
  { kind: 'reboot', label: 'Reboot' },
];

function Preview({ selector }: { selector: Labels }) {
  const label = selectorParam(selector);
  const all = useAsync((signal) => listDevices({ label, limit: PREVIEW }, signal), [label]);
  const revoked = useAsync((signal) => listDevices({ label, status: 'revoked', limit: 1 }, signal), [label]);
  const failed = all.error ?? revoked.error;
  if (failed !== undefined) {
    return (
      <ErrorBox
        error={failed}
        onRetry={() => {
          all.reload();
          revoked.reload();
        }}
      />
    );
  }
  if (!all.data || !revoked.data) return <Loading label="Finding devices…" />;
  const targets = all.data.total - revoked.data.total;
  return (
    <div class="preview" data-testid="selector-preview" data-count={targets} aria-live="polite">
      <p>
        <strong data-testid="selector-count">{plural(targets, 'device')}</strong> match
        {revoked.data.total > 0 && <> ({formatNumber(revoked.data.total)} revoked, skipped)</>}.
      </p>
      {all.data.items.length > 0 && (
        <ul class="preview-list">
          {all.data.items.map((d) => (
            <li key={d.id}>
              <Link href={`/devices/${encodeURIComponent(d.id)}`} class="mono">
                {d.id}
              </Link>
              {d.hostname && <span class="muted"> {d.hostname}</span>}
              {d.status !== 'online' && <span class="muted"> ({d.status})</span>}
            </li>
          ))}
          {all.data.total > all.data.items.length && (
            <li class="muted">and {formatNumber(all.data.total - all.data.items.length)} more</li>
          )}
        </ul>
      )}
    </div>
  );
}

/** Counts the devices a selector would target now (for the confirmation). */
async function countTargets(selector: Labels): Promise<number> {
  const label = selectorParam(selector);
  const [all, revoked] = await Promise.all([
    listDevices({ label, limit: 1 }),
    listDevices({ label, status: 'revoked', limit: 1 }),
  ]);
  return all.total - revoked.total;
}

export function SelectorSend({ onSent }: { onSent: () => void }) {
  const [text, setText] = useState('');
  const typed = useDebounced(text, 400);
  const parsed = typed.trim() === '' ? null : parseSelector(typed);
  const [f, setF] = useState<ActionFields>({
    kind: 'ping',
    op: 'restart',
    unit: '',
    lines: String(DEFAULT_JOURNAL_LINES),
    script: '',
    args: '',
    seconds: '',
  });
  const [confirm, setConfirm] = useState<{ selector: Labels; action: Action; count: number } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const set = (patch: Partial<ActionFields>) => setF({ ...f, ...patch });

  const review = async (e: Event) => {
    e.preventDefault();
    const sel = parseSelector(text);
    if (!sel.ok) {
      setError(`Selector: ${sel.error}`);
      return;
    }
    const action = buildAction(f);
    const problem = actionError(action);
    if (problem) {
      setError(problem);
      return;
    }
    setError(null);
    try {
      const count = await countTargets(sel.value);
      if (count === 0) {
        setError('No unrevoked device matches this selector.');
        return;
      }
      setConfirm({ selector: sel.value, action, count });
    } catch (err) {
      setError(errorText(err));
    }
  };

  const needsUnit = f.kind === 'service' || f.kind === 'journal';
  return (
    <section class="card" aria-labelledby="selector-title" data-testid="selector-send">
      <h2 id="selector-title">Send to a label selector</h2>
      <form class="form" onSubmit={review}>
        <div class="field">
          <label for="selector-input">Selector</label>
          <input
            id="selector-input"
            placeholder="site=lobby,role=kiosk"
            spellcheck={false}
            autocapitalize="none"
            value={text}
            aria-describedby="selector-hint"
            onInput={(e) => setText(e.currentTarget.value)}
            data-testid="selector-input"
          />
          <p id="selector-hint" class="hint">
            Every unrevoked device with all of these labels receives the command.
          </p>
          {parsed && !parsed.ok && (
            <p class="field-error" role="alert">
              {parsed.error}
            </p>
          )}
        </div>
        {parsed?.ok && <Preview selector={parsed.value} />}
        <div class="form-row">
          <div class="field">
            <label for="selector-action">Action</label>
            <select
              id="selector-action"
              value={f.kind}
              onChange={(e) => set({ kind: e.currentTarget.value as ActionKind })}
              data-testid="selector-action"
            >
              {KINDS.map((k) => (
                <option key={k.kind} value={k.kind}>
                  {k.label}
                </option>
              ))}
            </select>
          </div>
          {f.kind === 'service' && (
            <div class="field">
              <label for="selector-op">Operation</label>
              <select
                id="selector-op"
                value={f.op}
                onChange={(e) => set({ op: e.currentTarget.value as ServiceOp })}
              >
                {SERVICE_OPS.map((op) => (
                  <option key={op} value={op}>
                    {op}
                  </option>
                ))}
              </select>
            </div>
          )}
          {needsUnit && (
            <div class="field">
              <label for="selector-unit">Unit</label>
              <input
                id="selector-unit"
                placeholder="kiosk.service"
                spellcheck={false}
                autocapitalize="none"
                required
                value={f.unit}
                onInput={(e) => set({ unit: e.currentTarget.value })}
                data-testid="selector-unit"
              />
            </div>
          )}
          {f.kind === 'journal' && (
            <div class="field narrow">
              <label for="selector-lines">Lines</label>
              <input
                id="selector-lines"
                type="number"
                min={1}
                max={1000}
                value={f.lines}
                onInput={(e) => set({ lines: e.currentTarget.value })}
              />
            </div>
          )}
          {f.kind === 'script' && (
            <>
              <div class="field">
                <label for="selector-script">Script</label>
                <input
                  id="selector-script"
                  spellcheck={false}
                  autocapitalize="none"
                  required
                  value={f.script}
                  onInput={(e) => set({ script: e.currentTarget.value })}
                  data-testid="selector-script"
                />
              </div>
              <div class="field">
                <label for="selector-args">Arguments</label>
                <input
                  id="selector-args"
                  placeholder="--dry-run"
                  spellcheck={false}
                  autocapitalize="none"
                  value={f.args}
                  onInput={(e) => set({ args: e.currentTarget.value })}
                />
              </div>
            </>
          )}
          {f.kind === 'set_interval' && (
            <div class="field narrow">
              <label for="selector-seconds">Seconds</label>
              <input
                id="selector-seconds"
                type="number"
                min={1}
                required
                value={f.seconds}
                onInput={(e) => set({ seconds: e.currentTarget.value })}
              />
            </div>
          )}
        </div>
        <p class="hint">
          Each device runs the command only if its own allowlist permits it; others reject it, and the
          rejection shows in the history.
        </p>
        {error && (
          <p class="form-error" role="alert">
            {error}
          </p>
        )}
        <div>
          <button type="submit" class="button primary" data-testid="selector-review">
            Review and send…
          </button>
        </div>
      </form>
      {confirm && (
        <ConfirmDialog
          title={`Send to ${plural(confirm.count, 'device')}?`}
          confirmLabel={`Send to ${plural(confirm.count, 'device')}`}
          danger={confirm.action.kind === 'reboot'}
          onConfirm={async () => {
            const r = await sendCommand({ selector: confirm.selector }, confirm.action);
            if (r.approval) {
              toast(`Waiting for a second admin: ${r.approval.summary}`);
            } else {
              toast(`Sent ${describeAction(confirm.action)} to ${plural(r.commands.length, 'device')}.`);
            }
            onSent();
          }}
          onClose={() => setConfirm(null)}
          testId="selector-confirm"
        >
          <p>
            <span class="mono">{describeAction(confirm.action)}</span> goes to{' '}
            <strong data-testid="selector-confirm-count">{plural(confirm.count, 'device')}</strong> with the
            labels <span class="mono">{labelPairs(confirm.selector).join(', ')}</span>.
          </p>
        </ConfirmDialog>
      )}
    </section>
  );
}
