// A table of commands with their status (updated live by the caller), the output of each
// on demand, and cancellation of queued ones.

import { Fragment } from 'preact';
import { useState } from 'preact/hooks';
import { cancelCommand } from '../api/commands';
import type { CommandSummary } from '../api/types';
import { describeAction } from '../lib/commands';
import { formatDuration, NONE } from '../lib/format';
import { Link } from '../lib/router';
import { toast, toastError } from '../lib/toast';
import { CommandStatusBadge } from './Badge';
import { CommandOutput } from './CommandOutput';
import { RelTime } from './Time';

interface Props {
  commands: CommandSummary[];
  showDevice: boolean;
  canCancel: boolean;
  /** Called with a command's newer state (cancelled here, or loaded with its output). */
  onUpdate: (c: CommandSummary) => void;
  /** Commands to show expanded (e.g. one just sent). */
  expanded: ReadonlySet<string>;
  onToggle: (id: string) => void;
  busy?: boolean;
}

export function CommandList(p: Props) {
  const [cancelling, setCancelling] = useState<string | null>(null);
  const cols = p.showDevice ? 7 : 6;

  const cancel = async (c: CommandSummary) => {
    setCancelling(c.id);
    try {
      await cancelCommand(c.id);
      p.onUpdate({ ...c, status: 'cancelled' });
      toast(`Cancelled: ${describeAction(c.action)} on ${c.device}`);
    } catch (e) {
      toastError(e, 'Cannot cancel');
    } finally {
      setCancelling(null);
    }
  };

  return (
    <div class="table-scroll">
      <table class="table commands" aria-busy={p.busy ?? false} data-testid="command-table">
        <thead>
          <tr>
            <th scope="col">Created</th>
            {p.showDevice && <th scope="col">Device</th>}
            <th scope="col">Action</th>
            <th scope="col">Status</th>
            <th scope="col" class="num">
              Exit
            </th>
            <th scope="col" class="num">
              Duration
            </th>
            <th scope="col">
              <span class="visually-hidden">Details</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {p.commands.map((c) => {
            const open = p.expanded.has(c.id);
            return (
              <Fragment key={c.id}>
                <tr data-testid="command-row" data-command-id={c.id} data-status={c.status}>
                  <td>
                    <RelTime ms={c.created_at} />
                  </td>
                  {p.showDevice && (
                    <td class="mono">
                      <Link href={`/devices/${encodeURIComponent(c.device)}`}>{c.device}</Link>
                    </td>
                  )}
                  <td class="mono">{describeAction(c.action)}</td>
                  <td>
                    <CommandStatusBadge status={c.status} />
                    {c.reason && <span class="sub">{c.reason}</span>}
                  </td>
                  <td class="num mono">{c.exit_code ?? NONE}</td>
                  <td class="num">{c.duration_ms === null ? NONE : formatDuration(c.duration_ms / 1000)}</td>
                  <td class="actions">
                    {p.canCancel && c.status === 'queued' && (
                      <button
                        type="button"
                        class="button small"
                        disabled={cancelling === c.id}
                        onClick={() => void cancel(c)}
                        data-testid="command-cancel"
                      >
                        Cancel
                      </button>
                    )}
                    <button
                      type="button"
                      class="button small"
                      aria-expanded={open}
                      aria-controls={`command-detail-${c.id}`}
                      onClick={() => p.onToggle(c.id)}
                      data-testid="command-toggle"
                    >
                      {open ? 'Hide' : 'Output'}
                    </button>
                  </td>
                </tr>
                {open && (
                  <tr class="detail-row" id={`command-detail-${c.id}`}>
                    <td colSpan={cols}>
                      <CommandOutput id={c.id} status={c.status} onLoaded={p.onUpdate} />
                    </td>
                  </tr>
                )}
              </Fragment>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}
