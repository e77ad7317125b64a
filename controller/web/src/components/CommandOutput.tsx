// One command in full: its timeline, exit code, reason and the device's output, as text.

import { getCommand } from '../api/commands';
import type { CommandStatus, CommandSummary } from '../api/types';
import { formatBytes, formatDuration } from '../lib/format';
import { useAsync } from '../lib/hooks';
import { ErrorBox, Loading } from './States';
import { DateTime } from './Time';

function Output({ label, text, size }: { label: string; text: string | null; size: number | null }) {
  if (text === null || text === '') return null;
  const capped = size !== null && size > new TextEncoder().encode(text).length;
  return (
    <div class="output">
      <h4>
        {label}
        {capped && <span class="muted"> (first part of {formatBytes(size)})</span>}
      </h4>
      <pre data-testid={`command-${label}`}>{text}</pre>
    </div>
  );
}

interface Props {
  id: string;
  status: CommandStatus;
  /** Receives the command as loaded, so the list row shows the same state. */
  onLoaded: (c: CommandSummary) => void;
}

/** Reloads when `status` changes, so a running command's output appears when it ends. */
export function CommandOutput({ id, status, onLoaded }: Props) {
  const cmd = useAsync(
    (signal) =>
      getCommand(id, signal).then((c) => {
        if (c.status !== status) onLoaded(c);
        return c;
      }),
    [id, status],
  );
  if (cmd.error !== undefined) return <ErrorBox error={cmd.error} onRetry={cmd.reload} />;
  const c = cmd.data;
  if (!c) return <Loading label="Loading the result…" />;
  const empty = !c.stdout && !c.stderr;
  const emptyText =
    c.finished_at === null
      ? 'No output yet.'
      : c.status === 'succeeded' || c.status === 'failed'
        ? 'The command wrote no output.'
        : null;
  return (
    <div class="command-output" data-testid="command-output">
      <dl class="facts">
        <div>
          <dt>Created</dt>
          <dd>
            <DateTime ms={c.created_at} />
          </dd>
        </div>
        {c.sent_at !== null && (
          <div>
            <dt>Sent</dt>
            <dd>
              <DateTime ms={c.sent_at} />
            </dd>
          </div>
        )}
        {c.finished_at !== null && (
          <div>
            <dt>Finished</dt>
            <dd>
              <DateTime ms={c.finished_at} />
            </dd>
          </div>
        )}
        {c.finished_at === null && (
          <div>
            <dt>Expires</dt>
            <dd>
              <DateTime ms={c.expires_at} />
            </dd>
          </div>
        )}
        {c.exit_code !== null && (
          <div>
            <dt>Exit code</dt>
            <dd class="mono">{c.exit_code}</dd>
          </div>
        )}
        {c.duration_ms !== null && (
          <div>
            <dt>Duration</dt>
            <dd>{formatDuration(c.duration_ms / 1000)}</dd>
          </div>
        )}
        <div>
          <dt>Command id</dt>
          <dd class="mono">{c.id}</dd>
        </div>
      </dl>
      {c.reason && (
        <p class="notice notice-bad" data-testid="command-reason">
          {c.reason}
        </p>
      )}
      <Output label="stdout" text={c.stdout} size={c.stdout_len} />
      <Output label="stderr" text={c.stderr} size={c.stderr_len} />
      {empty && emptyText && <p class="muted">{emptyText}</p>}
    </div>
  );
}
