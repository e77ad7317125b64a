// Labels and label selectors, checked by the controller's rules (`admin::parse_labels`):
// keys are 1–63 of a-z 0-9 _ . - /, values up to 255 printable characters.

import type { Labels } from '../api/types';

export const MAX_LABELS = 64;
const KEY = /^[a-z0-9_./-]{1,63}$/;
// Control characters (C0, DEL, C1), which the controller refuses in values.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

export function labelKeyError(k: string): string | null {
  return KEY.test(k) ? null : `label key "${k}" must be 1–63 of a-z 0-9 _ . - /`;
}

export function labelValueError(k: string, v: string): string | null {
  if (v.length > 255 || CONTROL.test(v)) {
    return `the value of "${k}" must be at most 255 printable characters`;
  }
  return null;
}

/** Parses `k=v, k=v` (commas or new lines between pairs; blanks around them ignored). An
 * empty text is an empty set. */
export function parseLabels(text: string): Parsed<Labels> {
  const items = text
    .split(/[,\n]/)
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (items.length > MAX_LABELS) return { ok: false, error: `at most ${MAX_LABELS} labels` };
  const out: Labels = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq < 0) return { ok: false, error: `"${item}" is not key=value` };
    const k = item.slice(0, eq).trim();
    const v = item.slice(eq + 1).trim();
    const err = labelKeyError(k) ?? labelValueError(k, v);
    if (err) return { ok: false, error: err };
    if (k in out) return { ok: false, error: `the key "${k}" appears twice` };
    out[k] = v;
  }
  return { ok: true, value: out };
}

/** A selector: like [`parseLabels`] but it must name at least one label. */
export function parseSelector(text: string): Parsed<Labels> {
  const r = parseLabels(text);
  if (r.ok && Object.keys(r.value).length === 0) {
    return { ok: false, error: 'name at least one label, as key=value' };
  }
  return r;
}

/** The `label` query parameter of the device list: `k=v,k=v`. */
export function selectorParam(labels: Labels): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
}

/** Labels as sorted `k=v` strings, for display. */
export function labelPairs(labels: Labels): string[] {
  return Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`);
}

/** The labels of the rows (blank rows ignored), or the first problem. */
export function rowsToLabels(rows: { key: string; value: string }[]): { labels: Labels } | { error: string } {
  const labels: Labels = {};
  let n = 0;
  for (const r of rows) {
    const key = r.key.trim();
    if (key === '' && r.value.trim() === '') continue;
    const err = labelKeyError(key) ?? labelValueError(key, r.value);
    if (err) return { error: err };
    if (key in labels) return { error: `the key "${key}" appears twice` };
    labels[key] = r.value;
    n++;
  }
  if (n > MAX_LABELS) return { error: `at most ${MAX_LABELS} labels` };
  return { labels };
}
