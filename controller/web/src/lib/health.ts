// Reading a device's health: the Raspberry Pi `get_throttled` bits and the alert names.

import type { AlertKind } from '../api/types';

const NOW_BITS: [number, string][] = [
  [0, 'under-voltage'],
  [1, 'frequency capped'],
  [2, 'throttled'],
  [3, 'soft temperature limit'],
];
const PAST_OFFSET = 16;

export interface Throttling {
  /** Conditions active now. */
  now: string[];
  /** Conditions that occurred since boot. */
  past: string[];
}

/** Decodes `vcgencmd get_throttled` bits; null when the device reports none (not a Pi). */
export function decodeThrottled(bits: number | null | undefined): Throttling | null {
  if (bits === null || bits === undefined) return null;
  const has = (bit: number) => Math.floor(bits / 2 ** bit) % 2 === 1;
  return {
    now: NOW_BITS.filter(([b]) => has(b)).map(([, name]) => name),
    past: NOW_BITS.filter(([b]) => has(b + PAST_OFFSET)).map(([, name]) => name),
  };
}

/** One line for a table cell: `OK`, `throttled, under-voltage`, `OK (earlier: throttled)`. */
export function throttledText(bits: number | null | undefined): string {
  const t = decodeThrottled(bits);
  if (!t) return '—';
  if (t.now.length > 0) return t.now.join(', ');
  if (t.past.length > 0) return `OK (earlier: ${t.past.join(', ')})`;
  return 'OK';
}

const ALERT_TEXT: Record<AlertKind, string> = {
  temperature: 'Hot',
  under_voltage: 'Under-voltage',
  throttling: 'Throttled',
  disk: 'Disk full',
};

export function alertText(a: string): string {
  return (ALERT_TEXT as Record<string, string>)[a] ?? a;
}

/** A temperature's tone: warm from 70 °C, hot from 80 °C (a Pi throttles at 80–85 °C). */
export function tempTone(c: number | null): string {
  if (c === null) return '';
  return c >= 80 ? 'hot' : c >= 70 ? 'warm' : '';
}
