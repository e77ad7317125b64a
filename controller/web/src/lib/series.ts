// History points → chart series: seconds on the x axis (uPlot's unit), gaps where buckets
// are missing, and network rates derived from the byte counters.

import type { History } from '../api/types';

export type Series = (number | null)[];

export interface HistorySeries {
  /** Bucket starts, Unix seconds. */
  t: number[];
  cpuAvg: Series;
  cpuMax: Series;
  memUsed: Series;
  memTotal: Series;
  tempAvg: Series;
  tempMax: Series;
  diskUsed: Series;
  diskTotal: Series;
  /** Bytes per second; null where a counter went backwards (reboot) or after a gap. */
  rxRate: Series;
  txRate: Series;
}

/** A rate from two counter readings `dtS` seconds apart; null across a counter reset. */
export function counterRate(prev: number | undefined, cur: number, dtS: number): number | null {
  if (prev === undefined || dtS <= 0 || cur < prev) return null;
  return (cur - prev) / dtS;
}

/** The chart series of a history. A bucket missing from the data (no samples) shows as a
 * gap: a null point is put where the next bucket is more than one bucket away. */
export function historySeries(h: History): HistorySeries {
  const s: HistorySeries = {
    t: [],
    cpuAvg: [],
    cpuMax: [],
    memUsed: [],
    memTotal: [],
    tempAvg: [],
    tempMax: [],
    diskUsed: [],
    diskTotal: [],
    rxRate: [],
    txRate: [],
  };
  const gap = () => {
    for (const k of Object.keys(s) as (keyof HistorySeries)[]) if (k !== 't') s[k].push(null);
  };
  let prev: History['points'][number] | undefined;
  for (const p of h.points) {
    const contiguous = prev !== undefined && p.t - prev.t <= h.bucket_ms * 1.5;
    if (prev !== undefined && !contiguous) {
      s.t.push(Math.floor((prev.t + h.bucket_ms) / 1000));
      gap();
    }
    s.t.push(p.t / 1000);
    s.cpuAvg.push(p.cpu_pct_avg);
    s.cpuMax.push(p.cpu_pct_max);
    s.memUsed.push(p.mem_used_avg);
    s.memTotal.push(p.mem_total_max);
    s.tempAvg.push(p.temp_c_avg);
    s.tempMax.push(p.temp_c_max);
    s.diskUsed.push(p.disk_used_avg);
    s.diskTotal.push(p.disk_total_max);
    const dt = prev ? (p.t - prev.t) / 1000 : 0;
    s.rxRate.push(contiguous ? counterRate(prev?.net_rx_bytes, p.net_rx_bytes, dt) : null);
    s.txRate.push(contiguous ? counterRate(prev?.net_tx_bytes, p.net_tx_bytes, dt) : null);
    prev = p;
  }
  return s;
}

/** The last non-null value of a series. */
export function latest(series: Series): number | null {
  for (let i = series.length - 1; i >= 0; i--) {
    const v = series[i];
    if (v !== null && v !== undefined) return v;
  }
  return null;
}

export interface Range {
  key: '1h' | '24h' | '7d' | '30d';
  label: string;
  ms: number;
}

export const RANGES: readonly Range[] = [
  { key: '1h', label: '1 h', ms: 3_600_000 },
  { key: '24h', label: '24 h', ms: 86_400_000 },
  { key: '7d', label: '7 d', ms: 7 * 86_400_000 },
  { key: '30d', label: '30 d', ms: 30 * 86_400_000 },
];
