// The command controls of one device: only the actions that both the user's role and the
// device's own allowlist permit (see lib/commands.ts), each sent as a signed command.

import { useState } from 'preact/hooks';
import { sendCommand } from '../api/commands';
import type { Action, ServiceOp } from '../api/types';
import {
  DEFAULT_JOURNAL_LINES,
  describeAction,
  MAX_JOURNAL_LINES,
  type OfferedActions,
  permits,
  SERVICE_OPS,
} from '../lib/commands';
import { toast, toastError } from '../lib/toast';
import { ConfirmDialog } from './ConfirmDialog';

interface Props {
  deviceId: string;
  deviceName: string;
  offer: OfferedActions;
  /** Called with the id of each command sent. */
  onSent: (commandId: string) => void;
}

const OP_LABEL: Record<ServiceOp, string> = {
  status: 'Status',
  start: 'Start',
  stop: 'Stop',
  restart: 'Restart',
};

export function CommandPanel({ deviceId, deviceName, offer, onSent }: Props) {
  const [busy, setBusy] = useState(false);
  const [confirmReboot, setConfirmReboot] = useState(false);
  const [unitPick, setUnit] = useState('');
  const [journalPick, setJournalUnit] = useState('');
  const [lines, setLines] = useState(String(DEFAULT_JOURNAL_LINES));
  const [scriptPick, setScript] = useState('');
  const [args, setArgs] = useState<string[]>([]);
  const [interval, setIntervalText] = useState('');

  /** Sends `action`; rejects on failure (the caller reports it). */
  const send = async (action: Action): Promise<void> => {
    if (!permits(offer, action)) throw new Error(`Not permitted on this device: ${describeAction(action)}`);
    setBusy(true);
    try {
      const sent = await sendCommand({ devices: [deviceId] }, action);
      toast(`Sent: ${describeAction(action)}`);
      for (const c of sent.commands) onSent(c.id);
    } finally {
      setBusy(false);
    }
  };
  const fire = (action: Action) =>
    void send(action).catch((e: unknown) => toastError(e, `Cannot send ${describeAction(action)}`));

  // The picks fall back to the first allowed entry (also when a reload changed the offer).
  const pick = (v: string, allowed: string[]) => (allowed.includes(v) ? v : (allowed[0] ?? ''));
  const unit = pick(unitPick, offer.services);
  const journalUnit = pick(journalPick, offer.journalUnits);
  const script = pick(
    scriptPick,
    offer.scripts.map((s) => s.name),
  );
  const scriptCap = offer.scripts.find((s) => s.name === script);
  const bounds = offer.setInterval;
  const seconds = Number(interval);
  const intervalOk =
    bounds !== null &&
    interval !== '' &&
    Number.isInteger(seconds) &&
    seconds >= bounds.min_s &&
    seconds <= bounds.max_s;
  const lineCount = Number(lines);
  const linesOk = Number.isInteger(lineCount) && lineCount >= 1 && lineCount <= MAX_JOURNAL_LINES;

  return (
    <section class="card" aria-labelledby="command-panel-title" data-testid="command-panel">
      <h2 id="command-panel-title">Commands</h2>
      <p class="hint">
        Only what this device's allowlist permits is offered. Commands are signed and wait for an offline
        device until they expire.
      </p>

      {(offer.ping || offer.reboot) && (
        <div class="command-group">
          {offer.ping && (
            <button
              type="button"
              class="button"
              disabled={busy}
              onClick={() => fire({ kind: 'ping' })}
              data-testid="action-ping"
            >
              Ping
            </button>
          )}
          {offer.reboot && (
            <button
              type="button"
              class="button danger"
              disabled={busy}
              onClick={() => setConfirmReboot(true)}
              data-testid="action-reboot"
            >
              Reboot…
            </button>
          )}
        </div>
      )}

      {offer.services.length > 0 && (
        <div class="command-group">
          <fieldset>
            <legend>Service</legend>
            <div class="field">
              <label for="cmd-service-unit">Unit</label>
              <select
                id="cmd-service-unit"
                value={unit}
                onChange={(e) => setUnit(e.currentTarget.value)}
                data-testid="service-unit"
              >
                {offer.services.map((u) => (
                  <option key={u} value={u}>
                    {u}
                  </option>
                ))}
              </select>
            </div>
            <div class="button-row">
              {SERVICE_OPS.map((op) => (
                <button
                  key={op}
                  type="button"
                  class={op === 'stop' ? 'button danger-outline' : 'button'}
                  disabled={busy || unit === ''}
                  onClick={() => fire({ kind: 'service', op, unit })}
                  data-testid={`action-service-${op}`}
                  data-unit={unit}
                >
                  {OP_LABEL[op]}
                </button>
              ))}
            </div>
          </fieldset>
        </div>
      )}

      {offer.journalUnits.length > 0 && (
        <form
          class="command-group"
          onSubmit={(e) => {
            e.preventDefault();
            if (linesOk) fire({ kind: 'journal', unit: journalUnit, lines: lineCount });
          }}
        >
          <fieldset>
            <legend>Journal</legend>
            <div class="field">
              <label for="cmd-journal-unit">Unit</label>
              <select
                id="cmd-journal-unit"
                value={journalUnit}
                onChange={(e) => setJournalUnit(e.currentTarget.value)}
                data-testid="journal-unit"
              >
                {offer.journalUnits.map((u) => (
                  <option key={u} value={u}>
                    {u}
                  </option>
                ))}
              </select>
            </div>
            <div class="field narrow">
              <label for="cmd-journal-lines">Lines</label>
              <input
                id="cmd-journal-lines"
                type="number"
                min={1}
                max={MAX_JOURNAL_LINES}
                step={1}
                value={lines}
                onInput={(e) => setLines(e.currentTarget.value)}
                data-testid="journal-lines"
              />
            </div>
            <button type="submit" class="button" disabled={busy || !linesOk} data-testid="action-journal">
              Show journal
            </button>
          </fieldset>
        </form>
      )}

      {offer.scripts.length > 0 && (
        <form
          class="command-group"
          onSubmit={(e) => {
            e.preventDefault();
            fire({ kind: 'script', name: script, args });
          }}
        >
          <fieldset>
            <legend>Script</legend>
            <div class="field">
              <label for="cmd-script">Name</label>
              <select
                id="cmd-script"
                value={script}
                onChange={(e) => {
                  setScript(e.currentTarget.value);
                  setArgs([]);
                }}
                data-testid="script-name"
              >
                {offer.scripts.map((s) => (
                  <option key={s.name} value={s.name}>
                    {s.name}
                  </option>
                ))}
              </select>
            </div>
            {scriptCap && scriptCap.allowed_args.length > 0 && (
              <div class="checks" role="group" aria-label="Arguments">
                {scriptCap.allowed_args.map((a, i) => (
                  <label key={a} class="check" for={`cmd-script-arg-${i}`}>
                    <input
                      id={`cmd-script-arg-${i}`}
                      type="checkbox"
                      checked={args.includes(a)}
                      onChange={(e) =>
                        setArgs(
                          e.currentTarget.checked
                            ? scriptCap.allowed_args.filter((x) => x === a || args.includes(x))
                            : args.filter((x) => x !== a),
                        )
                      }
                      data-testid="script-arg"
                    />
                    <span class="mono">{a}</span>
                  </label>
                ))}
              </div>
            )}
            <button type="submit" class="button" disabled={busy || script === ''} data-testid="action-script">
              Run script
            </button>
          </fieldset>
        </form>
      )}

      {bounds && (
        <form
          class="command-group"
          onSubmit={(e) => {
            e.preventDefault();
            if (intervalOk) fire({ kind: 'set_interval', seconds });
          }}
        >
          <fieldset>
            <legend>Telemetry interval</legend>
            <div class="field narrow">
              <label for="cmd-interval">Seconds</label>
              <input
                id="cmd-interval"
                type="number"
                min={bounds.min_s}
                max={bounds.max_s}
                step={1}
                required
                value={interval}
                aria-describedby="cmd-interval-hint"
                onInput={(e) => setIntervalText(e.currentTarget.value)}
                data-testid="interval-seconds"
              />
              <p id="cmd-interval-hint" class="hint">
                {bounds.min_s}–{bounds.max_s} s
              </p>
            </div>
            <button
              type="submit"
              class="button"
              disabled={busy || !intervalOk}
              data-testid="action-set-interval"
            >
              Set interval
            </button>
          </fieldset>
        </form>
      )}

      {confirmReboot && (
        <ConfirmDialog
          title="Reboot this device?"
          confirmLabel="Reboot"
          danger
          onConfirm={() => send({ kind: 'reboot' })}
          onClose={() => setConfirmReboot(false)}
          testId="reboot-dialog"
        >
          <p>
            <strong>{deviceName}</strong> (<span class="mono">{deviceId}</span>) reboots as soon as it
            receives the command. Whatever it runs stops until it is back.
          </p>
        </ConfirmDialog>
      )}
    </section>
  );
}
