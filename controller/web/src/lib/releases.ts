// Releases as the dashboard shows them, and the upload form turned into the upload's query
// (pure functions, unit-tested). The controller checks everything again.

import type { ReleaseParams, ReleaseView } from '../api/types';
import { formatDuration } from './format';
import type { Parsed } from './labels';

/** An app name: 1–64 of a-z 0-9 _ -, starting with a letter or digit (it names a directory
 * on the device and a section of its agent.toml). */
const APP_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;

export const APP_NAME_RULE = '1–64 of a-z 0-9 _ -, starting with a letter or digit';

export function isAppName(s: string): boolean {
  return APP_NAME.test(s);
}

/** Where a release came from: the uploaded file, or the git URL and commit. */
export function sourceText(r: Pick<ReleaseView, 'source' | 'source_name' | 'source_rev'>): string {
  if (r.source === 'git') {
    const rev = r.source_rev ? ` @ ${r.source_rev.slice(0, 12)}` : '';
    return `git ${r.source_name ?? ''}${rev}`.trim();
  }
  return r.source_name ? `upload ${r.source_name}` : r.source;
}

/** The health gate in words: `active within 1 min, then 1 min without restarts`. */
export function healthGateText(r: Pick<ReleaseView, 'start_timeout_s' | 'soak_s'>): string {
  const start = `active within ${formatDuration(r.start_timeout_s)}`;
  return r.soak_s > 0 ? `${start}, then ${formatDuration(r.soak_s)} without restarts` : start;
}

/** The upload form's fields, as typed. */
export interface UploadFields {
  app: string;
  version: string;
  arches: string;
  startTimeout: string;
  soak: string;
  probeHttp: string;
}

export const EMPTY_UPLOAD_FIELDS: UploadFields = {
  app: '',
  version: '',
  arches: '',
  startTimeout: '',
  soak: '',
  probeHttp: '',
};

/** A comma or blank separated list as the API's comma list; undefined when empty. */
function commaList(text: string): string | undefined {
  const items = text.split(/[\s,]+/).filter((s) => s !== '');
  return items.length === 0 ? undefined : items.join(',');
}

/** The upload's query parameters, or the first problem (named after its field). */
export function buildUpload(f: UploadFields): Parsed<ReleaseParams> {
  const app = f.app.trim();
  if (!isAppName(app)) return { ok: false, error: `App: ${APP_NAME_RULE}` };
  const version = f.version.trim();
  if (version === '') return { ok: false, error: 'Version: give the version, e.g. 1.4.2' };
  const params: ReleaseParams = { app, version };
  const arches = commaList(f.arches);
  if (arches) params.arches = arches;
  for (const [name, text, key] of [
    ['Start timeout', f.startTimeout, 'start_timeout_s'],
    ['Soak', f.soak, 'soak_s'],
  ] as const) {
    const t = text.trim();
    if (t === '') continue;
    if (!/^\d+$/.test(t)) return { ok: false, error: `${name}: a whole number of seconds` };
    params[key] = Number(t);
  }
  const probe = f.probeHttp.trim();
  if (probe !== '') {
    if (!/^\d{1,5}\/\S*$/.test(probe)) return { ok: false, error: 'Probe: PORT/PATH, e.g. 8080/healthz' };
    params.probe_http = probe;
  }
  return { ok: true, value: params };
}
