// Releases: the list, upload (operators), and one release in full with its rollouts, a
// "Roll out" action (operators) and delete (admins; refused while a rollout uses it).

import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import { deleteRelease, getRelease, listReleases } from '../api/releases';
import { listRollouts } from '../api/rollouts';
import type { ReleaseView, Whoami } from '../api/types';
import { ConfirmDialog } from '../components/ConfirmDialog';
import { Page } from '../components/Page';
import { ReleaseUpload } from '../components/ReleaseUpload';
import { RolloutList } from '../components/RolloutList';
import { Empty, ErrorBox, Loading } from '../components/States';
import { DateTime, RelTime } from '../components/Time';
import { canOperate, isAdmin } from '../lib/commands';
import { formatBytes, formatNumber } from '../lib/format';
import { useAsync } from '../lib/hooks';
import { healthGateText, sourceText } from '../lib/releases';
import { releaseName } from '../lib/rollouts';
import { Link, navigate } from '../lib/router';
import { toast } from '../lib/toast';

const rolloutHref = (id: number) => `/rollouts/new?release=${id}`;

function ReleaseTable({ items, operate }: { items: ReleaseView[]; operate: boolean }) {
  return (
    <div class="table-scroll">
      <table class="table" data-testid="release-table">
        <thead>
          <tr>
            <th scope="col">App</th>
            <th scope="col" class="num">
              Release
            </th>
            <th scope="col">Version</th>
            <th scope="col" class="num">
              Size
            </th>
            <th scope="col">Source</th>
            <th scope="col">Created</th>
            {operate && (
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            )}
          </tr>
        </thead>
        <tbody>
          {items.map((r) => (
            <tr key={r.id} data-testid="release-row" data-release-id={r.id} data-app={r.app}>
              <th scope="row" class="mono">
                {r.app}
              </th>
              <td class="num mono">
                <Link href={`/releases/${r.id}`} data-testid="release-link">
                  #{r.release}
                </Link>
              </td>
              <td class="mono">{r.version}</td>
              <td class="num">{formatBytes(r.archive_size)}</td>
              <td class="wrap">{sourceText(r)}</td>
              <td>
                <RelTime ms={r.created_at} />
                <span class="sub mono">{r.created_by}</span>
              </td>
              {operate && (
                <td class="actions">
                  <Link href={rolloutHref(r.id)} class="button small" data-testid="release-rollout">
                    Roll out…
                  </Link>
                </td>
              )}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function ReleasesPage({ user }: { user: Whoami }) {
  const items = useAsync((signal) => listReleases(undefined, signal), []);
  const operate = canOperate(user.role);
  return (
    <Page title="Releases">
      <p class="hint">
        A release is an app’s files at one version, signed by the controller’s release key. Devices take it in
        a rollout.
      </p>
      <section class="card" aria-labelledby="releases-title">
        <h2 id="releases-title">All releases</h2>
        {items.error !== undefined && !items.loading ? (
          <ErrorBox error={items.error} onRetry={items.reload} />
        ) : !items.data ? (
          <Loading label="Loading releases…" />
        ) : items.data.length === 0 ? (
          <Empty>
            No releases yet.{' '}
            {operate
              ? 'Upload one below, or make one with pifleet-controller release create.'
              : 'An operator makes them.'}
          </Empty>
        ) : (
          <ReleaseTable items={items.data} operate={operate} />
        )}
      </section>
      {operate && (
        <section class="card" aria-labelledby="upload-title">
          <h2 id="upload-title">Upload a release</h2>
          <ReleaseUpload
            onUploaded={(r) => {
              toast(`Release ${releaseName(r.app, r.release)} created.`);
              navigate(`/releases/${r.id}`);
            }}
          />
        </section>
      )}
    </Page>
  );
}

function Fact({ label, children, testId }: { label: string; children: ComponentChildren; testId?: string }) {
  return (
    <div data-testid={testId}>
      <dt>{label}</dt>
      <dd>{children}</dd>
    </div>
  );
}

function ReleaseFacts({ r }: { r: ReleaseView }) {
  return (
    <section class="card" aria-labelledby="release-facts-title" data-testid="release-detail">
      <h2 id="release-facts-title">Release</h2>
      <dl class="facts">
        <Fact label="App">
          <span class="mono">{r.app}</span>
        </Fact>
        <Fact label="Release">
          <span class="mono">#{r.release}</span>
        </Fact>
        <Fact label="Version">
          <span class="mono">{r.version}</span>
        </Fact>
        <Fact label="Archive">
          {formatBytes(r.archive_size)} <span class="sub">{formatBytes(r.unpacked_size)} unpacked</span>
        </Fact>
        <Fact label="Entries">{formatNumber(r.entries)}</Fact>
        <Fact label="Architectures" testId="release-arches">
          {r.arches.length === 0 ? 'any' : <span class="mono">{r.arches.join(', ')}</span>}
        </Fact>
        <Fact label="Hooks">
          {r.hooks.length === 0 ? 'none' : <span class="mono">{r.hooks.join(', ')}</span>}
        </Fact>
        <Fact label="Health gate">{healthGateText(r)}</Fact>
        <Fact label="Source">{sourceText(r)}</Fact>
        <Fact label="Created">
          <DateTime ms={r.created_at} /> <span class="sub mono">{r.created_by}</span>
        </Fact>
      </dl>
      <dl class="facts facts-wide">
        <Fact label="Manifest digest (SHA-256)" testId="release-manifest">
          <span class="mono">{r.manifest_sha256}</span>
        </Fact>
        <Fact label="Archive SHA-256">
          <span class="mono">{r.archive_sha256}</span>
        </Fact>
        <Fact label="Signed by release key" testId="release-key">
          <span class="mono">{r.key_id}</span>
        </Fact>
      </dl>
    </section>
  );
}

export function ReleasePage({ id, user }: { id: number; user: Whoami }) {
  const release = useAsync((signal) => getRelease(id, signal), [id]);
  const rollouts = useAsync((signal) => listRollouts({ release_id: id }, signal), [id]);
  const [deleting, setDeleting] = useState(false);
  const r = release.data;

  if (release.error !== undefined && !release.loading) {
    return (
      <Page title={`Release ${id}`}>
        <ErrorBox error={release.error} onRetry={release.reload} />
        <p>
          <Link href="/releases">Back to the releases</Link>
        </p>
      </Page>
    );
  }
  if (!r) {
    return (
      <Page title="Release">
        <Loading label="Loading the release…" />
      </Page>
    );
  }
  const name = releaseName(r.app, r.release);
  return (
    <Page
      title={name}
      subtitle={
        <>
          version <span class="mono">{r.version}</span> · <Link href="/releases">all releases</Link>
        </>
      }
      actions={
        <span class="button-row">
          {canOperate(user.role) && (
            <Link href={rolloutHref(r.id)} class="button primary" data-testid="release-rollout">
              Roll out…
            </Link>
          )}
          {isAdmin(user.role) && (
            <button
              type="button"
              class="button danger-outline"
              onClick={() => setDeleting(true)}
              data-testid="release-delete"
            >
              Delete…
            </button>
          )}
        </span>
      }
    >
      <ReleaseFacts r={r} />
      <section class="card" aria-labelledby="release-rollouts-title">
        <h2 id="release-rollouts-title">Rollouts of this release</h2>
        {rollouts.error !== undefined && !rollouts.loading ? (
          <ErrorBox error={rollouts.error} onRetry={rollouts.reload} />
        ) : !rollouts.data ? (
          <Loading label="Loading rollouts…" />
        ) : rollouts.data.length === 0 ? (
          <Empty>This release has not been rolled out.</Empty>
        ) : (
          <RolloutList rollouts={rollouts.data} />
        )}
      </section>
      {deleting && (
        <ConfirmDialog
          title={`Delete release ${name}?`}
          confirmLabel="Delete"
          danger
          onConfirm={async () => {
            // While a rollout uses it the controller refuses (409): the dialog shows why.
            await deleteRelease(r.id);
            toast(`Release ${name} deleted.`);
            navigate('/releases');
          }}
          onClose={() => setDeleting(false)}
          testId="release-delete-dialog"
        >
          <p>
            Its archive and manifest are removed from the controller. Devices keep what they installed, but no
            rollout can send it again. This cannot be undone.
          </p>
        </ConfirmDialog>
      )}
    </Page>
  );
}
