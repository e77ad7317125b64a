// The fleet table: one row per device of the current page, sortable column headers.

import type { DeviceSort, DeviceSummary, SortOrder } from '../api/types';
import { formatBytes, formatPercent, formatTemp, NONE, share } from '../lib/format';
import { tempTone, throttledText } from '../lib/health';
import { Link } from '../lib/router';
import { AlertBadges, DeviceStatusBadge } from './Badge';
import { LabelChips } from './LabelChips';
import { Meter } from './Meter';
import { RelTime } from './Time';

interface Props {
  devices: DeviceSummary[];
  sort: DeviceSort;
  order: SortOrder;
  busy: boolean;
  onSort: (s: DeviceSort) => void;
  onPickLabel: (pair: string) => void;
}

function SortHeader(p: {
  label: string;
  sortKey: DeviceSort;
  sort: DeviceSort;
  order: SortOrder;
  onSort: (s: DeviceSort) => void;
  numeric?: boolean;
}) {
  const active = p.sort === p.sortKey;
  const dir = active ? (p.order === 'asc' ? 'ascending' : 'descending') : 'none';
  return (
    <th scope="col" aria-sort={dir} class={p.numeric ? 'num' : undefined}>
      <button
        type="button"
        class="sort-button"
        onClick={() => p.onSort(p.sortKey)}
        data-testid={`sort-${p.sortKey}`}
      >
        {p.label}
        <span class="sort-mark" aria-hidden="true">
          {active ? (p.order === 'asc' ? '▲' : '▼') : '↕'}
        </span>
      </button>
    </th>
  );
}

function Row({ d, onPickLabel }: { d: DeviceSummary; onPickLabel: (pair: string) => void }) {
  const mem = share(d.mem_used, d.mem_total);
  const disk = share(d.disk_used, d.disk_total);
  return (
    <tr data-testid="device-row" data-device-id={d.id} data-status={d.status}>
      <th scope="row" class="cell-name">
        <Link href={`/devices/${encodeURIComponent(d.id)}`} data-testid="device-link">
          {d.hostname ?? d.id}
        </Link>
        <span class="sub mono">{d.id}</span>
      </th>
      <td>
        <DeviceStatusBadge status={d.status} />
        <AlertBadges alerts={d.alerts} />
        {d.needs_review && (
          <span class="badge badge-warn" data-testid="needs-review" title={d.review_reason ?? undefined}>
            needs review
          </span>
        )}
      </td>
      <td>
        <LabelChips labels={d.labels} onPick={onPickLabel} />
      </td>
      <td class="num" data-testid="cell-cpu">
        <Meter pct={d.cpu_pct} text={formatPercent(d.cpu_pct)} />
      </td>
      <td
        class="num"
        data-testid="cell-memory"
        title={mem === null ? undefined : `${formatBytes(d.mem_used)} of ${formatBytes(d.mem_total)}`}
      >
        <Meter pct={mem} text={formatPercent(mem)} />
      </td>
      <td class={`num temp ${tempTone(d.temp_c)}`} data-testid="cell-temp">
        {formatTemp(d.temp_c)}
      </td>
      <td data-testid="cell-throttled" class={d.throttled ? 'warn-text' : undefined}>
        {throttledText(d.throttled)}
      </td>
      <td
        class="num"
        data-testid="cell-disk"
        title={disk === null ? undefined : `${formatBytes(d.disk_used)} of ${formatBytes(d.disk_total)}`}
      >
        <Meter pct={disk} text={formatPercent(disk)} />
      </td>
      <td data-testid="cell-last-seen">
        <RelTime ms={d.last_seen} />
      </td>
      <td class="mono">{d.agent_version ?? NONE}</td>
    </tr>
  );
}

export function DeviceTable({ devices, sort, order, busy, onSort, onPickLabel }: Props) {
  const h = { sort, order, onSort };
  return (
    <div class="table-scroll">
      <table class="table devices" aria-busy={busy} data-testid="device-table">
        <thead>
          <tr>
            <SortHeader label="Device" sortKey="hostname" {...h} />
            <th scope="col">Status</th>
            <th scope="col">Labels</th>
            <SortHeader label="CPU" sortKey="cpu" numeric {...h} />
            <SortHeader label="Memory" sortKey="memory" numeric {...h} />
            <SortHeader label="Temp." sortKey="temperature" numeric {...h} />
            <th scope="col">Throttling</th>
            <th scope="col" class="num">
              Disk
            </th>
            <SortHeader label="Last seen" sortKey="last_seen" {...h} />
            <th scope="col">Agent</th>
          </tr>
        </thead>
        <tbody>
          {devices.map((d) => (
            <Row key={d.id} d={d} onPickLabel={onPickLabel} />
          ))}
        </tbody>
      </table>
    </div>
  );
}
