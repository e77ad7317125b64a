import { describe, expect, it } from 'vitest';
import {
  formatBytes,
  formatDate,
  formatDateTime,
  formatDuration,
  formatNumber,
  formatPercent,
  formatRate,
  formatRelative,
  formatTemp,
  formatTick,
  NONE,
  parseLocalDateTime,
  plural,
  share,
} from './format';

describe('formatBytes', () => {
  it('uses binary units with one decimal below 100', () => {
    expect(formatBytes(0, 'en')).toBe('0 B');
    expect(formatBytes(512, 'en')).toBe('512 B');
    expect(formatBytes(1536, 'en')).toBe('1.5 KiB');
    expect(formatBytes(25_276_063_744, 'en')).toBe('23.5 GiB');
    expect(formatBytes(270_553_174_016, 'en')).toBe('252 GiB');
    expect(formatBytes(1024 ** 4, 'en')).toBe('1 TiB');
  });
  it('formats in the locale and keeps the sign', () => {
    expect(formatBytes(1536, 'de')).toBe('1,5 KiB');
    expect(formatBytes(-2048, 'en')).toBe('-2 KiB');
  });
  it('shows a dash for missing values', () => {
    expect(formatBytes(null)).toBe(NONE);
    expect(formatBytes(undefined)).toBe(NONE);
    expect(formatBytes(Number.NaN)).toBe(NONE);
    expect(formatRate(null)).toBe(NONE);
  });
  it('formats rates', () => {
    expect(formatRate(1_258_291, 'en')).toBe('1.2 MiB/s');
  });
});

describe('formatPercent', () => {
  it('rounds to whole percent from 10 and keeps one decimal below', () => {
    expect(formatPercent(42.4, 'en')).toBe('42%');
    expect(formatPercent(100, 'en')).toBe('100%');
    expect(formatPercent(3.25, 'en')).toBe('3.3%');
    expect(formatPercent(0, 'en')).toBe('0%');
  });
  it('follows the locale', () => {
    expect(formatPercent(12.5, 'de')).toBe('13\u00a0%');
    expect(formatPercent(5.5, 'de')).toBe('5,5\u00a0%');
  });
  it('handles missing values and shares', () => {
    expect(formatPercent(null)).toBe(NONE);
    expect(share(1, 4)).toBe(25);
    expect(share(null, 4)).toBeNull();
    expect(share(1, 0)).toBeNull();
    expect(share(1, null)).toBeNull();
  });
});

describe('formatTemp', () => {
  it('shows degrees Celsius with one decimal', () => {
    expect(formatTemp(46.25699996948242, 'en')).toBe('46.3°C');
    expect(formatTemp(48, 'de')).toBe('48 °C');
    expect(formatTemp(null)).toBe(NONE);
  });
});

describe('formatDuration', () => {
  it('picks units by size, two at most', () => {
    expect(formatDuration(0.85)).toBe('850 ms');
    expect(formatDuration(4.21)).toBe('4.2 s');
    expect(formatDuration(42)).toBe('42 s');
    expect(formatDuration(312)).toBe('5 min 12 s');
    expect(formatDuration(3_600)).toBe('1 h');
    expect(formatDuration(23_074)).toBe('6 h 24 min');
    expect(formatDuration(3 * 86_400 + 4 * 3_600 + 59)).toBe('3 d 4 h');
    expect(formatDuration(86_400 + 30)).toBe('1 d');
  });
  it('never goes negative and handles missing values', () => {
    expect(formatDuration(-5)).toBe('0 ms');
    expect(formatDuration(null)).toBe(NONE);
  });
});

describe('formatRelative', () => {
  const now = 1_795_510_577_000;
  it('says how long ago', () => {
    expect(formatRelative(now - 500, now, 'en')).toBe('just now');
    expect(formatRelative(now - 12_000, now, 'en')).toBe('12 s ago');
    expect(formatRelative(now - 59_000, now, 'en')).toBe('59 s ago');
    expect(formatRelative(now - 60_000, now, 'en')).toBe('1 min ago');
    expect(formatRelative(now - 3 * 3_600_000 - 5, now, 'en')).toBe('3 h ago');
    expect(formatRelative(now - 400 * 86_400_000, now, 'en')).toBe('400 d ago');
  });
  it('says how long until a future time', () => {
    expect(formatRelative(now + 30 * 86_400_000, now, 'en')).toBe('in 30 d');
    expect(formatRelative(now + 90_000, now, 'en')).toBe('in 1 min');
  });
  it('formats large counts in the locale', () => {
    expect(formatRelative(now - 1_500 * 86_400_000, now, 'en')).toBe('1,500 d ago');
    expect(formatRelative(now - 1_500 * 86_400_000, now, 'de')).toBe('1.500 d ago');
  });
  it('says never for a missing time', () => {
    expect(formatRelative(null, now)).toBe('never');
  });
});

describe('dates', () => {
  const ms = Date.UTC(2026, 10, 24, 8, 56, 10);
  it('formats in the given locale and time zone', () => {
    expect(formatDateTime(ms, { locale: 'en-US', timeZone: 'UTC' })).toBe('Nov 24, 2026, 8:56:10 AM');
    expect(formatDateTime(ms, { locale: 'de-DE', timeZone: 'Europe/Berlin' })).toBe('24.11.2026, 09:56:10');
    expect(formatDate(ms, { locale: 'en-GB', timeZone: 'UTC' })).toBe('24 Nov 2026');
    expect(formatDateTime(null)).toBe(NONE);
  });
  it('labels chart ticks as finely as the span needs', () => {
    const o = { locale: 'en-GB', timeZone: 'UTC' };
    expect(formatTick(ms, 3_600_000, o)).toBe('08:56');
    expect(formatTick(ms, 7 * 86_400_000, o)).toBe('Tue 08:56');
    expect(formatTick(ms, 30 * 86_400_000, o)).toBe('24 Nov');
  });
  it('reads datetime-local values as local time', () => {
    const v = parseLocalDateTime('2026-11-24T09:30');
    expect(v).toBe(new Date(2026, 10, 24, 9, 30).getTime());
    expect(parseLocalDateTime('')).toBeNull();
    expect(parseLocalDateTime('yesterday')).toBeNull();
  });
});

describe('numbers', () => {
  it('formats counts and plurals', () => {
    expect(formatNumber(10_000, 'en')).toBe('10,000');
    expect(formatNumber(null)).toBe(NONE);
    expect(plural(1, 'device', undefined, 'en')).toBe('1 device');
    expect(plural(12, 'device', undefined, 'en')).toBe('12 devices');
    expect(plural(0, 'entry', 'entries', 'en')).toBe('0 entries');
  });
});
