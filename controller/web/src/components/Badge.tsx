// Status badges: a word and a tone, never colour alone.

import type { CommandStatus, DeviceStatus } from '../api/types';
import { statusTone } from '../lib/commands';
import { alertText } from '../lib/health';
import { deviceTone, rolloutTone, stateText } from '../lib/rollouts';

export function DeviceStatusBadge({ status }: { status: DeviceStatus }) {
  const tone = status === 'online' ? 'ok' : status === 'revoked' ? 'muted' : 'bad';
  return <span class={`badge badge-${tone}`}>{status}</span>;
}

export function CommandStatusBadge({ status }: { status: CommandStatus }) {
  return <span class={`badge badge-${statusTone(status)}`}>{status}</span>;
}

export function RolloutStatusBadge({ status }: { status: string }) {
  return (
    <span class={`badge badge-${rolloutTone(status)}`} data-testid="rollout-status" data-status={status}>
      {stateText(status)}
    </span>
  );
}

/** A device's state in a rollout. */
export function RolloutDeviceBadge({ state }: { state: string }) {
  return <span class={`badge badge-${deviceTone(state)}`}>{stateText(state)}</span>;
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
