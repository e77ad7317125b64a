// Uploading an archive as a new release (operators): the browser streams the file as the
// request body; what the release is goes in the query.

import { useState } from 'preact/hooks';
import { uploadRelease } from '../api/releases';
import type { ReleaseView } from '../api/types';
import { formatBytes } from '../lib/format';
import { APP_NAME_RULE, buildUpload, EMPTY_UPLOAD_FIELDS, type UploadFields } from '../lib/releases';
import { errorText } from '../lib/toast';

export function ReleaseUpload({ onUploaded }: { onUploaded: (r: ReleaseView) => void }) {
  const [file, setFile] = useState<File | null>(null);
  const [f, setF] = useState<UploadFields>(EMPTY_UPLOAD_FIELDS);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const set = (patch: Partial<UploadFields>) => setF({ ...f, ...patch });

  const submit = async (e: Event) => {
    e.preventDefault();
    if (!file) {
      setError('Archive: choose a .zip, .tar.gz or .tar file');
      return;
    }
    const params = buildUpload(f);
    if (!params.ok) {
      setError(params.error);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      onUploaded(await uploadRelease(file, params.value));
    } catch (err) {
      setError(errorText(err));
      setBusy(false);
    }
  };

  return (
    <form class="form" onSubmit={submit} data-testid="release-upload">
      <div class="field">
        <label for="release-file">Archive</label>
        <input
          id="release-file"
          type="file"
          accept=".zip,.tar.gz,.tgz,.tar,application/zip,application/gzip,application/x-tar"
          required
          aria-describedby="release-file-hint"
          onChange={(e) => setFile(e.currentTarget.files?.[0] ?? null)}
          data-testid="release-file"
        />
        <p id="release-file-hint" class="hint">
          A .zip, .tar.gz or .tar of the app’s files{file ? ` (${formatBytes(file.size)})` : ''}. The
          controller refuses absolute paths, .., device files, setuid bits and links that leave the release.
        </p>
      </div>
      <div class="form-row">
        <div class="field">
          <label for="release-app">App</label>
          <input
            id="release-app"
            required
            placeholder="web"
            spellcheck={false}
            autocapitalize="none"
            value={f.app}
            aria-describedby="release-app-hint"
            onInput={(e) => set({ app: e.currentTarget.value })}
            data-testid="release-app"
          />
          <p id="release-app-hint" class="hint">
            As allowlisted on devices (<span class="mono">[apps.NAME]</span>): {APP_NAME_RULE}.
          </p>
        </div>
        <div class="field">
          <label for="release-version">Version</label>
          <input
            id="release-version"
            required
            placeholder="1.4.2"
            spellcheck={false}
            value={f.version}
            onInput={(e) => set({ version: e.currentTarget.value })}
            data-testid="release-version"
          />
        </div>
        <div class="field">
          <label for="release-arches">Architectures</label>
          <input
            id="release-arches"
            placeholder="any"
            spellcheck={false}
            autocapitalize="none"
            value={f.arches}
            aria-describedby="release-arches-hint"
            onInput={(e) => set({ arches: e.currentTarget.value })}
          />
          <p id="release-arches-hint" class="hint">
            <span class="mono">uname -m</span> values, e.g. aarch64, armv7l; empty: any.
          </p>
        </div>
      </div>
      <fieldset>
        <legend>Health gate</legend>
        <div class="form-row">
          <div class="field narrow">
            <label for="release-start">Start timeout (s)</label>
            <input
              id="release-start"
              type="number"
              min={0}
              placeholder="60"
              value={f.startTimeout}
              onInput={(e) => set({ startTimeout: e.currentTarget.value })}
            />
          </div>
          <div class="field narrow">
            <label for="release-soak">Soak (s)</label>
            <input
              id="release-soak"
              type="number"
              min={0}
              placeholder="60"
              value={f.soak}
              onInput={(e) => set({ soak: e.currentTarget.value })}
            />
          </div>
          <div class="field">
            <label for="release-probe">HTTP probe</label>
            <input
              id="release-probe"
              placeholder="8080/healthz"
              spellcheck={false}
              autocapitalize="none"
              value={f.probeHttp}
              aria-describedby="release-probe-hint"
              onInput={(e) => set({ probeHttp: e.currentTarget.value })}
            />
            <p id="release-probe-hint" class="hint">
              Optional: GET http://127.0.0.1:PORT/PATH must answer 2xx.
            </p>
          </div>
        </div>
      </fieldset>
      {error && (
        <p class="form-error" role="alert" data-testid="release-upload-error">
          {error}
        </p>
      )}
      <div>
        <button type="submit" class="button primary" disabled={busy} data-testid="release-upload-submit">
          {busy ? 'Uploading…' : 'Upload and sign'}
        </button>
      </div>
    </form>
  );
}
