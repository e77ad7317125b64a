// One device: live values, inventory, history charts, services, watchdog events, the command
// panel (what role and allowlist both permit), its command history, and for admins labels and
// revoke.

import { useEffect, useState } from 'preact/hooks';
import { getDevice, revokeDevice, setLabels } from '../api/devices';
import { live } from '../api/live';
import type { DeviceDetail, Whoami } from '../api/types';
import { AlertBadges, DeviceStatusBadge } from '../components/Badge';
import { CommandList } from '../components/CommandList';
import { CommandPanel } from '../components/CommandPanel';
import { ConfirmDialog } from '../components/ConfirmDialog';
import { DeviceApps } from '../components/DeviceApps';
import { DeviceCharts } from '../components/DeviceCharts';
import { Inventory, LiveValues, Services } from '../components/DeviceInfo';
import { LabelChips } from '../components/LabelChips';
import { LabelEditor } from '../components/LabelEditor';
import { Page } from '../components/Page';
import { Pager } from '../components/Pager';
import { Empty, ErrorBox, Loading } from '../components/States';
import { useCommandPage } from '../components/useCommandPage';
import { Watchdog } from '../components/Watchdog';
import { canOperate, commandOffer, isAdmin } from '../lib/commands';
import { useAsync } from '../lib/hooks';
import { Link } from '../lib/router';
import { toast, toastError } from '../lib/toast';

const HISTORY_SIZE = 10;

function DeviceCommands({ d, user }: { d: DeviceDetail; user: Whoami }) {
  const [page, setPage] = useState(1);
  const { list, expanded, toggle, expand, update } = useCommandPage({
    device: d.id,
    page,
    limit: HISTORY_SIZE,
  });
  const offer = commandOffer(user.role, d.status, d.capabilities);

  const sent = (id: string) => {
    expand(id);
    setPage(1);
    list.reload();
  };

  return (
    <>
      {offer.kind === 'actions' && (
        <CommandPanel deviceId={d.id} deviceName={d.hostname ?? d.id} offer={offer.actions} onSent={sent} />
      )}
      {offer.kind === 'unavailable' && (
        <section class="card" aria-labelledby="command-panel-title" data-testid="command-panel">
          <h2 id="command-panel-title">Commands</h2>
          <p class="muted" data-testid="command-unavailable">
            {offer.reason}
          </p>
        </section>
      )}
      <section class="card" aria-labelledby="device-commands-title" data-testid="device-commands">
        <div class="card-head">
          <h2 id="device-commands-title">Command history</h2>
          <Link href={`/commands?device=${encodeURIComponent(d.id)}`}>All commands of this device</Link>
        </div>
        {list.error !== undefined && !list.loading ? (
          <ErrorBox error={list.error} onRetry={list.reload} />
        ) : !list.data ? (
          <Loading label="Loading commands…" />
        ) : list.data.items.length === 0 ? (
          <Empty>No commands have been sent to this device.</Empty>
        ) : (
          <>
            <CommandList
              commands={list.data.items}
              showDevice={false}
              canCancel={canOperate(user.role)}
              onUpdate={update}
              expanded={expanded}
              onToggle={toggle}
              busy={list.loading}
            />
            {list.data.total > HISTORY_SIZE && (
              <Pager
                page={page}
                total={list.data.total}
                size={HISTORY_SIZE}
                noun="commands"
                onPage={setPage}
              />
            )}
          </>
        )}
      </section>
    </>
  );
}

function AdminSection({ d, onChanged }: { d: DeviceDetail; onChanged: (d?: DeviceDetail) => void }) {
  const [revoking, setRevoking] = useState(false);
  const save = async (labels: Record<string, string>) => {
    try {
      onChanged(await setLabels(d.id, labels));
      toast('Labels saved.');
    } catch (e) {
      toastError(e, 'Cannot save the labels');
      throw e;
    }
  };
  return (
    <section class="card" aria-labelledby="admin-title" data-testid="device-admin">
      <h2 id="admin-title">Administration</h2>
      <h3>Labels</h3>
      <LabelEditor key={JSON.stringify(d.labels)} initial={d.labels} idPrefix="device-label" onSave={save} />
      {d.status !== 'revoked' && (
        <>
          <h3>Revoke</h3>
          <p class="hint">
            Revoking puts the device's certificates on the revocation list: the broker drops it at once and it
            cannot reconnect without enrolling again.
          </p>
          <button
            type="button"
            class="button danger"
            onClick={() => setRevoking(true)}
            data-testid="device-revoke"
          >
            Revoke device…
          </button>
        </>
      )}
      {revoking && (
        <ConfirmDialog
          title="Revoke this device?"
          confirmLabel="Revoke"
          danger
          typeToConfirm={d.id}
          onConfirm={async () => {
            await revokeDevice(d.id);
            toast(`Device ${d.id} revoked.`);
            onChanged();
          }}
          onClose={() => setRevoking(false)}
          testId="revoke-dialog"
        >
          <p>
            <strong>{d.hostname ?? d.id}</strong> loses its connection now and cannot come back without a new
            enrollment. This cannot be undone.
          </p>
        </ConfirmDialog>
      )}
    </section>
  );
}

export function DevicePage({ id, user }: { id: string; user: Whoami }) {
  const device = useAsync((signal) => getDevice(id, signal), [id]);
  // Bumped when the device's details change (a service or watchdog report arrived).
  const [detailsGeneration, setDetailsGeneration] = useState(0);

  useEffect(
    () =>
      live.watch([id], {
        device: (d) => {
          if (d.id === id) device.setData((p) => (p ? { ...p, ...d } : p));
        },
        details: (d) => {
          if (d.id !== id) return;
          device.setData((p) => (p ? { ...p, ...d } : p));
          setDetailsGeneration((g) => g + 1);
        },
      }),
    [id],
  );

  const d = device.data;
  const title = d ? (d.hostname ?? d.id) : id;

  if (device.error !== undefined && !device.loading) {
    return (
      <Page title={id}>
        <ErrorBox error={device.error} onRetry={device.reload} />
        <p>
          <Link href="/">Back to the fleet</Link>
        </p>
      </Page>
    );
  }
  if (!d) {
    return (
      <Page title={id}>
        <Loading label="Loading the device…" />
      </Page>
    );
  }

  return (
    <Page
      title={title}
      subtitle={
        <>
          <span class="mono" data-testid="device-id">
            {d.id}
          </span>{' '}
          <DeviceStatusBadge status={d.status} /> <AlertBadges alerts={d.alerts} />
        </>
      }
      actions={<LabelChips labels={d.labels} />}
    >
      <div class="device-grid">
        <LiveValues d={d} />
        <Inventory d={d} />
      </div>
      <DeviceCharts deviceId={d.id} />
      <Services d={d} />
      <Watchdog deviceId={d.id} generation={detailsGeneration} />
      <DeviceApps deviceId={d.id} />
      <DeviceCommands d={d} user={user} />
      {isAdmin(user.role) && (
        <AdminSection d={d} onChanged={(next) => (next ? device.setData(() => next) : device.reload())} />
      )}
    </Page>
  );
}
