import { describe, expect, it } from 'vitest';
import type { History, HistoryPoint } from '../api/types';
import { counterRate, historySeries, latest, RANGES } from './series';

function point(t: number, patch: Partial<HistoryPoint> = {}): HistoryPoint {
  return {
    t,
    samples: 6,
    cpu_pct_avg: 10,
    cpu_pct_max: 20,
    load1_avg: 0.5,
    mem_used_avg: 100,
    mem_total_max: 400,
    temp_c_avg: 45,
    temp_c_max: 47,
    disk_used_avg: 1_000,
    disk_total_max: 4_000,
    net_rx_bytes: 0,
    net_tx_bytes: 0,
    ...patch,
  };
}

describe('historySeries', () => {
  it('converts buckets to seconds and series', () => {
    const h: History = {
      from: 0,
      to: 30_000,
      bucket_ms: 10_000,
      points: [
        point(0, { net_rx_bytes: 1_000, net_tx_bytes: 100 }),
        point(10_000, { net_rx_bytes: 21_000, net_tx_bytes: 600, temp_c_avg: null }),
      ],
    };
    const s = historySeries(h);
    expect(s.t).toEqual([0, 10]);
    expect(s.cpuAvg).toEqual([10, 10]);
    expect(s.cpuMax).toEqual([20, 20]);
    expect(s.memTotal).toEqual([400, 400]);
    expect(s.tempAvg).toEqual([45, null]);
    expect(s.rxRate).toEqual([null, 2_000]);
    expect(s.txRate).toEqual([null, 50]);
  });

  it('puts a gap where buckets are missing and restarts rates after it', () => {
    const h: History = {
      from: 0,
      to: 60_000,
      bucket_ms: 10_000,
      points: [
        point(0, { net_rx_bytes: 10 }),
        point(10_000, { net_rx_bytes: 20 }),
        point(50_000, { net_rx_bytes: 90 }),
      ],
    };
    const s = historySeries(h);
    expect(s.t).toEqual([0, 10, 20, 50]);
    expect(s.cpuAvg).toEqual([10, 10, null, 10]);
    expect(s.diskUsed).toEqual([1_000, 1_000, null, 1_000]);
    expect(s.rxRate).toEqual([null, 1, null, null]);
    for (const k of Object.keys(s) as (keyof typeof s)[]) expect(s[k]).toHaveLength(4);
  });

  it('is empty for no points', () => {
    const s = historySeries({ from: 0, to: 1, bucket_ms: 1, points: [] });
    expect(s.t).toEqual([]);
    expect(s.cpuAvg).toEqual([]);
  });
});

describe('helpers', () => {
  it('derives rates from counters, null across resets', () => {
    expect(counterRate(undefined, 10, 1)).toBeNull();
    expect(counterRate(100, 50, 10)).toBeNull();
    expect(counterRate(100, 200, 0)).toBeNull();
    expect(counterRate(100, 300, 10)).toBe(20);
  });

  it('finds the latest value', () => {
    expect(latest([1, 2, null])).toBe(2);
    expect(latest([null, null])).toBeNull();
    expect(latest([])).toBeNull();
  });

  it('keeps ranges within the API limits', () => {
    expect(RANGES.map((r) => r.key)).toEqual(['1h', '24h', '7d', '30d']);
    for (const r of RANGES) expect(r.ms).toBeLessThanOrEqual(31 * 86_400_000);
  });
});
