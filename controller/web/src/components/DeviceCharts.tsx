// History charts of one device over a chosen range.

import { useMemo, useState } from 'preact/hooks';
import { deviceHistory } from '../api/devices';
import type { History } from '../api/types';
import { formatBytes, formatPercent, formatRate, formatTemp } from '../lib/format';
import { useAsync } from '../lib/hooks';
import { historySeries, latest, RANGES, type Range, type Series } from '../lib/series';
import { Chart, type ChartLine } from './Chart';
import { Empty, ErrorBox, Loading } from './States';

const POINTS = 360;

function summaryOf(what: string, range: Range, parts: [string, Series, (v: number) => string][]): string {
  const values = parts
    .map(([label, s, f]) => {
      const v = latest(s);
      return v === null ? null : `${label} ${f(v)}`;
    })
    .filter((x) => x !== null);
  return `${what}, last ${range.label}: ${values.length > 0 ? `latest ${values.join(', ')}` : 'no data'}.`;
}

function Charts({ history, range }: { history: History; range: Range }) {
  const s = useMemo(() => historySeries(history), [history]);
  const lines = useMemo(() => {
    const l = (label: string, values: Series, color: string, dashed?: boolean): ChartLine => ({
      label,
      values,
      color,
      dashed,
    });
    return {
      cpu: [l('average', s.cpuAvg, '--chart-1'), l('peak', s.cpuMax, '--chart-2', true)],
      mem: [l('used', s.memUsed, '--chart-1'), l('total', s.memTotal, '--chart-3', true)],
      temp: [l('average', s.tempAvg, '--chart-1'), l('peak', s.tempMax, '--chart-2', true)],
      disk: [l('used', s.diskUsed, '--chart-1'), l('total', s.diskTotal, '--chart-3', true)],
      net: [l('received', s.rxRate, '--chart-1'), l('sent', s.txRate, '--chart-2')],
    };
  }, [s]);
  const hasTemp = s.tempAvg.some((v) => v !== null);
  const pct = (v: number) => formatPercent(v);
  return (
    <div class="charts">
      <Chart
        testId="chart-cpu"
        title="CPU"
        t={s.t}
        from={history.from / 1000}
        to={history.to / 1000}
        lines={lines.cpu}
        format={pct}
        yRange={[0, 100]}
        summary={summaryOf('CPU', range, [
          ['average', s.cpuAvg, pct],
          ['peak', s.cpuMax, pct],
        ])}
      />
      <Chart
        testId="chart-memory"
        title="Memory"
        t={s.t}
        from={history.from / 1000}
        to={history.to / 1000}
        lines={lines.mem}
        format={formatBytes}
        summary={summaryOf('Memory', range, [
          ['used', s.memUsed, formatBytes],
          ['total', s.memTotal, formatBytes],
        ])}
      />
      {hasTemp ? (
        <Chart
          testId="chart-temperature"
          title="Temperature"
          t={s.t}
          from={history.from / 1000}
          to={history.to / 1000}
          lines={lines.temp}
          format={formatTemp}
          summary={summaryOf('Temperature', range, [
            ['average', s.tempAvg, formatTemp],
            ['peak', s.tempMax, formatTemp],
          ])}
        />
      ) : (
        <figure class="chart" data-testid="chart-temperature">
          <figcaption>Temperature</figcaption>
          <p class="muted">This device reports no temperature.</p>
        </figure>
      )}
      <Chart
        testId="chart-disk"
        title="Disk"
        t={s.t}
        from={history.from / 1000}
        to={history.to / 1000}
        lines={lines.disk}
        format={formatBytes}
        summary={summaryOf('Disk', range, [
          ['used', s.diskUsed, formatBytes],
          ['total', s.diskTotal, formatBytes],
        ])}
      />
      <Chart
        testId="chart-network"
        title="Network"
        t={s.t}
        from={history.from / 1000}
        to={history.to / 1000}
        lines={lines.net}
        format={formatRate}
        summary={summaryOf('Network', range, [
          ['received', s.rxRate, formatRate],
          ['sent', s.txRate, formatRate],
        ])}
      />
    </div>
  );
}

export function DeviceCharts({ deviceId }: { deviceId: string }) {
  const [range, setRange] = useState<Range>(RANGES[0] as Range);
  const history = useAsync(
    (signal) => {
      const to = Date.now();
      return deviceHistory(deviceId, to - range.ms, to, POINTS, signal);
    },
    [deviceId, range.key],
  );

  return (
    <section class="card" aria-labelledby="history-title">
      <div class="card-head">
        <h2 id="history-title">History</h2>
        <div class="segmented" role="group" aria-label="Time range">
          {RANGES.map((r) => (
            <button
              key={r.key}
              type="button"
              aria-pressed={r.key === range.key}
              onClick={() => setRange(r)}
              data-testid={`range-${r.key}`}
            >
              {r.label}
            </button>
          ))}
          <button
            type="button"
            onClick={history.reload}
            aria-label="Reload the charts"
            data-testid="range-reload"
          >
            ↻
          </button>
        </div>
      </div>
      {history.error !== undefined && !history.loading ? (
        <ErrorBox error={history.error} onRetry={history.reload} />
      ) : !history.data ? (
        <Loading label="Loading history…" />
      ) : history.data.points.length === 0 ? (
        <Empty>No telemetry in the last {range.label}.</Empty>
      ) : (
        <Charts history={history.data} range={range} />
      )}
    </section>
  );
}
