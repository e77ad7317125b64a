// Status badges: a word and a tone, never colour alone.

import type { CommandStatus, DeviceStatus } from '../api/types';
import { statusTone } from '../lib/commands';
import { alertText } from '../lib/health';

export function DeviceStatusBadge({ status }: { status: DeviceStatus }) {
  const tone = status === 'online' ? 'ok' : status === 'revoked' ? 'muted' : 'bad';
  return <span class={`badge badge-${tone}`}>{status}</span>;
}

export function CommandStatusBadge({ status }: { status: CommandStatus }) {
  return <span class={`badge badge-${statusTone(status)}`}>{status}</span>;
}

export function AlertBadges({ alerts }: { alerts: readonly string[] }) {
  if (alerts.length === 0) return null;
  return (
    <span class="alerts">
      {alerts.map((a) => (
        <span key={a} class="badge badge-warn" data-testid={`alert-${a}`}>
          {alertText(a)}
        </span>
      ))}
    </span>
  );
}
