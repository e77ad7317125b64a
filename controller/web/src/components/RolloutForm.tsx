// Creating a rollout (operators): the release, the devices (a label selector or ids), the
// batch and health settings, a preview of the plan (who takes part, who cannot and why),
// then the rollout itself. Empty settings take the controller's defaults.

import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import { listReleases } from '../api/releases';
import { createRollout } from '../api/rollouts';
import type { CreatedRollout, NewRollout, PlannedDevice } from '../api/types';
import { formatBytes, plural } from '../lib/format';
import { useAsync } from '../lib/hooks';
import {
  buildRollout,
  EMPTY_ROLLOUT_FIELDS,
  releaseName,
  ROLLOUT_DEFAULTS,
  type RolloutFields,
  type TargetKind,
} from '../lib/rollouts';
import { Link } from '../lib/router';
import { errorText } from '../lib/toast';
import { ErrorBox, Loading } from './States';

type SettingKey = keyof typeof ROLLOUT_DEFAULTS;

function Setting(p: {
  name: SettingKey;
  label: string;
  hint?: ComponentChildren;
  f: RolloutFields;
  set: (patch: Partial<RolloutFields>) => void;
  narrow?: boolean;
}) {
  const id = `rollout-${p.name}`;
  return (
    <div class={p.narrow ? 'field narrow' : 'field'}>
      <label for={id}>{p.label}</label>
      <input
        id={id}
        placeholder={ROLLOUT_DEFAULTS[p.name]}
        spellcheck={false}
        autocapitalize="none"
        value={p.f[p.name]}
        aria-describedby={p.hint ? `${id}-hint` : undefined}
        onInput={(e) => p.set({ [p.name]: e.currentTarget.value })}
        data-testid={id}
      />
      {p.hint && (
        <p id={`${id}-hint`} class="hint">
          {p.hint}
        </p>
      )}
    </div>
  );
}

function Plan({ plan }: { plan: PlannedDevice[] }) {
  const taking = plan.filter((d) => d.incompatible === null).length;
  const incompatible = plan.length - taking;
  return (
    <div class="preview" data-testid="rollout-plan" data-count={taking} aria-live="polite">
      <p>
        <strong data-testid="rollout-plan-count">{plural(taking, 'device')}</strong> would take part
        {incompatible > 0 && (
          <>
            ; <span data-testid="rollout-plan-incompatible">{plural(incompatible, 'device')}</span> cannot
            take the release
          </>
        )}
        .
      </p>
      {plan.length > 0 && (
        <div class="table-scroll">
          <table class="table compact">
            <thead>
              <tr>
                <th scope="col">Device</th>
                <th scope="col">Plan</th>
                <th scope="col">Runs now</th>
              </tr>
            </thead>
            <tbody>
              {plan.map((d) => (
                <tr
                  key={d.device}
                  data-testid="plan-row"
                  data-device-id={d.device}
                  data-compatible={d.incompatible === null}
                >
                  <td class="mono">
                    <Link href={`/devices/${encodeURIComponent(d.device)}`}>{d.device}</Link>
                  </td>
                  <td class="wrap">
                    {d.incompatible === null ? (
                      <span class="badge badge-ok">takes part</span>
                    ) : (
                      <>
                        <span class="badge badge-muted">incompatible</span>
                        <span class="sub" data-testid="plan-reason">
                          {d.incompatible}
                        </span>
                      </>
                    )}
                  </td>
                  <td class="mono">
                    {d.current_release === null ? (
                      <span class="muted">nothing</span>
                    ) : (
                      `#${d.current_release}`
                    )}
                    {d.revertible && <span class="sub">can revert</span>}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}

interface Props {
  /** The release to start with (e.g. from the Releases page). */
  initialRelease?: number;
  onCreated: (r: CreatedRollout) => void;
}

export function RolloutForm({ initialRelease, onCreated }: Props) {
  const releases = useAsync((signal) => listReleases(undefined, signal), []);
  const [f, setF] = useState<RolloutFields>({
    ...EMPTY_ROLLOUT_FIELDS,
    release: initialRelease ? String(initialRelease) : '',
  });
  const [preview, setPreview] = useState<{ for: string; plan: PlannedDevice[] } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState<'preview' | 'create' | null>(null);
  const set = (patch: Partial<RolloutFields>) => setF({ ...f, ...patch });

  // A preview is shown only while the form still asks for what it previewed.
  const built = buildRollout(f, false);
  const key = built.ok ? JSON.stringify(built.value) : null;
  const shown = preview && preview.for === key ? preview : null;

  const send = async (mode: 'preview' | 'create') => {
    const r = buildRollout(f, mode === 'preview');
    if (!r.ok) {
      setError(r.error);
      return;
    }
    const body: NewRollout = r.value;
    setBusy(mode);
    setError(null);
    try {
      const created = await createRollout(body);
      if (mode === 'preview') {
        setPreview({ for: JSON.stringify({ ...body, preview: false }), plan: created.plan });
      } else {
        onCreated(created);
      }
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(null);
    }
  };

  const release = releases.data?.find((x) => String(x.id) === f.release);
  return (
    <form
      class="form"
      onSubmit={(e) => {
        e.preventDefault();
        void send('create');
      }}
      data-testid="rollout-form"
    >
      <div class="field">
        <label for="rollout-release">Release</label>
        {releases.error !== undefined ? (
          <ErrorBox error={releases.error} onRetry={releases.reload} />
        ) : !releases.data ? (
          <Loading label="Loading releases…" />
        ) : (
          <select
            id="rollout-release"
            required
            value={f.release}
            onChange={(e) => set({ release: e.currentTarget.value })}
            data-testid="rollout-release"
          >
            <option value="">Choose a release</option>
            {releases.data.map((r) => (
              <option key={r.id} value={String(r.id)}>
                {releaseName(r.app, r.release)} — {r.version} ({formatBytes(r.archive_size)})
              </option>
            ))}
          </select>
        )}
        {release && (
          <p class="hint">
            {release.arches.length > 0 ? `Built for ${release.arches.join(', ')}. ` : ''}Devices must
            allowlist the app <span class="mono">{release.app}</span> in their agent.toml.
          </p>
        )}
      </div>
      <fieldset>
        <legend>Devices</legend>
        <div class="checks" role="radiogroup" aria-label="Choose devices by">
          {(
            [
              ['selector', 'By label selector'],
              ['devices', 'By device ids'],
            ] as [TargetKind, string][]
          ).map(([kind, label]) => (
            <label key={kind} class="check">
              <input
                type="radio"
                name="rollout-target-kind"
                value={kind}
                checked={f.targetKind === kind}
                onChange={() => set({ targetKind: kind })}
                data-testid={`rollout-target-${kind}`}
              />
              {label}
            </label>
          ))}
        </div>
        <div class="field">
          <label for="rollout-target">{f.targetKind === 'selector' ? 'Selector' : 'Device ids'}</label>
          <input
            id="rollout-target"
            required
            placeholder={f.targetKind === 'selector' ? 'site=lobby,role=kiosk' : 'lobby-pi-1, lobby-pi-2'}
            spellcheck={false}
            autocapitalize="none"
            value={f.target}
            aria-describedby="rollout-target-hint"
            onInput={(e) => set({ target: e.currentTarget.value })}
            data-testid="rollout-target"
          />
          <p id="rollout-target-hint" class="hint">
            {f.targetKind === 'selector'
              ? 'Every unrevoked device with all of these labels, as key=value pairs.'
              : 'Separated by commas or spaces.'}
          </p>
        </div>
      </fieldset>
      <fieldset>
        <legend>Batches</legend>
        <div class="form-row">
          <Setting name="canary" label="Canary devices" f={f} set={set} narrow hint="0: no canary" />
          <Setting
            name="batches"
            label="Batches (% reached)"
            f={f}
            set={set}
            hint="Cumulative, increasing, the last 100."
          />
          <Setting name="threshold" label="Success threshold (%)" f={f} set={set} narrow />
          <Setting name="bake" label="Bake time" f={f} set={set} narrow hint="e.g. 10m" />
        </div>
      </fieldset>
      <fieldset>
        <legend>Health and deadlines</legend>
        <div class="form-row">
          <Setting name="abortPct" label="Pause at failures (%)" f={f} set={set} narrow />
          <Setting name="abortMin" label="…once results" f={f} set={set} narrow />
          <Setting
            name="delivery"
            label="Delivery deadline"
            f={f}
            set={set}
            narrow
            hint="to start downloading"
          />
          <Setting name="install" label="Install deadline" f={f} set={set} narrow hint="download to result" />
          <Setting name="downloads" label="Download cap" f={f} set={set} narrow hint="0: no cap" />
        </div>
        <Setting
          name="window"
          label="Maintenance window"
          f={f}
          set={set}
          hint={
            <>
              Deploys go out only inside it, e.g. <span class="mono">mon-fri 02:00-05:00 UTC+01:00</span>;
              empty: any time.
            </>
          }
        />
      </fieldset>
      <p class="hint">
        Each batch waits until its devices report; a batch whose healthy share falls below the threshold
        pauses the rollout. Large rollouts wait for a second admin’s approval.
      </p>
      {error && (
        <p class="form-error" role="alert" data-testid="rollout-form-error">
          {error}
        </p>
      )}
      {shown && <Plan plan={shown.plan} />}
      <div class="button-row">
        <button
          type="button"
          class="button"
          disabled={busy !== null}
          onClick={() => void send('preview')}
          data-testid="rollout-preview"
        >
          {busy === 'preview' ? 'Planning…' : 'Preview'}
        </button>
        <button type="submit" class="button primary" disabled={busy !== null} data-testid="rollout-create">
          {busy === 'create' ? 'Creating…' : 'Create rollout'}
        </button>
      </div>
    </form>
  );
}
