// Display formats: numbers and dates in the browser's locale (tests pass one explicitly).

/** What the formatters show for a missing value. */
export const NONE = '—';

const numberFormats = new Map<string, Intl.NumberFormat>();

function numberFormat(locale: string | undefined, opts: Intl.NumberFormatOptions) {
  const key = `${locale ?? ''}|${JSON.stringify(opts)}`;
  let f = numberFormats.get(key);
  if (!f) {
    f = new Intl.NumberFormat(locale, opts);
    numberFormats.set(key, f);
  }
  return f;
}

export function formatNumber(n: number | null | undefined, locale?: string, digits = 0): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return NONE;
  return numberFormat(locale, { maximumFractionDigits: digits }).format(n);
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** Bytes in binary units: `512 B`, `1.5 KiB`, `3.7 GiB`. */
export function formatBytes(bytes: number | null | undefined, locale?: string): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return NONE;
  let v = Math.abs(bytes);
  let unit = 0;
  while (v >= 1024 && unit < BYTE_UNITS.length - 1) {
    v /= 1024;
    unit++;
  }
  const digits = unit === 0 || v >= 100 ? 0 : 1;
  const sign = bytes < 0 ? '-' : '';
  return `${sign}${numberFormat(locale, { maximumFractionDigits: digits }).format(v)} ${BYTE_UNITS[unit]}`;
}

/** A byte rate: `1.2 MiB/s`. */
export function formatRate(bytesPerSecond: number | null | undefined, locale?: string): string {
  const b = formatBytes(bytesPerSecond, locale);
  return b === NONE ? NONE : `${b}/s`;
}

/** A percentage given as 0–100: `42 %` in the locale's style. */
export function formatPercent(pct: number | null | undefined, locale?: string): string {
  if (pct === null || pct === undefined || !Number.isFinite(pct)) return NONE;
  const digits = Math.abs(pct) < 10 && pct !== 0 ? 1 : 0;
  return numberFormat(locale, { style: 'percent', maximumFractionDigits: digits }).format(pct / 100);
}

/** `used` of `total` as 0–100, or null. */
export function share(used: number | null | undefined, total: number | null | undefined) {
  if (used === null || used === undefined || !total) return null;
  return (used / total) * 100;
}

/** Degrees Celsius with one decimal: `48.3 °C`. */
export function formatTemp(celsius: number | null | undefined, locale?: string): string {
  if (celsius === null || celsius === undefined || !Number.isFinite(celsius)) return NONE;
  return numberFormat(locale, {
    style: 'unit',
    unit: 'celsius',
    maximumFractionDigits: 1,
  }).format(celsius);
}

/** A duration in seconds, two units at most: `850 ms`, `42 s`, `5 min 12 s`, `3 d 4 h`. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return NONE;
  const s = Math.max(0, seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s < 10 ? Math.round(s * 10) / 10 : Math.round(s)} s`;
  const units: [number, string][] = [
    [86_400, 'd'],
    [3_600, 'h'],
    [60, 'min'],
    [1, 's'],
  ];
  let rest = Math.round(s);
  const parts: string[] = [];
  for (const [size, name] of units) {
    if (parts.length === 2) break;
    const n = Math.floor(rest / size);
    rest -= n * size;
    if (n > 0 || parts.length > 0) parts.push(`${n} ${name}`);
  }
  return parts.filter((p) => !p.startsWith('0 ')).join(' ');
}

/** Time from `now` to `ms`, coarse: `12 s ago`, `3 min ago`, `in 5 d`. */
export function formatRelative(ms: number | null | undefined, now: number, locale?: string): string {
  if (ms === null || ms === undefined) return 'never';
  const diff = Math.round((ms - now) / 1000);
  const abs = Math.abs(diff);
  if (abs < 2) return 'just now';
  const [value, unit]: [number, string] =
    abs < 60
      ? [abs, 's']
      : abs < 3_600
        ? [Math.floor(abs / 60), 'min']
        : abs < 86_400
          ? [Math.floor(abs / 3_600), 'h']
          : [Math.floor(abs / 86_400), 'd'];
  const n = formatNumber(value, locale);
  return diff < 0 ? `${n} ${unit} ago` : `in ${n} ${unit}`;
}

export interface DateOptions {
  locale?: string;
  timeZone?: string;
}

/** Date and time in the locale's style, to the second. */
export function formatDateTime(ms: number | null | undefined, o: DateOptions = {}): string {
  if (ms === null || ms === undefined) return NONE;
  return new Intl.DateTimeFormat(o.locale, {
    dateStyle: 'medium',
    timeStyle: 'medium',
    timeZone: o.timeZone,
  }).format(ms);
}

/** The date alone, in the locale's style. */
export function formatDate(ms: number | null | undefined, o: DateOptions = {}): string {
  if (ms === null || ms === undefined) return NONE;
  return new Intl.DateTimeFormat(o.locale, { dateStyle: 'medium', timeZone: o.timeZone }).format(ms);
}

/** A count with its noun: `1 device`, `12 devices`. */
export function plural(n: number, one: string, many = `${one}s`, locale?: string): string {
  return `${formatNumber(n, locale)} ${n === 1 ? one : many}`;
}

/** Unix ms of a `<input type="datetime-local">` value, read as local time; null if empty or
 * invalid. */
export function parseLocalDateTime(value: string): number | null {
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(value)) return null;
  const ms = new Date(value).getTime();
  return Number.isNaN(ms) ? null : ms;
}

/** A chart's time-axis label for `ms`, as detailed as the visible span needs: the time of
 * day up to a day and a half, then day and hour up to ten days, then the date. */
export function formatTick(ms: number, spanMs: number, o: DateOptions = {}): string {
  const opts: Intl.DateTimeFormatOptions =
    spanMs <= 36 * 3_600_000
      ? { hour: '2-digit', minute: '2-digit' }
      : spanMs <= 10 * 86_400_000
        ? { weekday: 'short', hour: '2-digit', minute: '2-digit' }
        : { month: 'short', day: 'numeric' };
  return new Intl.DateTimeFormat(o.locale, { ...opts, timeZone: o.timeZone }).format(ms);
}
