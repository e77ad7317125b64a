// Fleet-wide command history with filters, and (operators) sending to a label selector.

import { useEffect, useState } from 'preact/hooks';
import { type ActionKind, COMMAND_STATUSES, type CommandStatus, type Whoami } from '../api/types';
import { CommandList } from '../components/CommandList';
import { Page } from '../components/Page';
import { Pager } from '../components/Pager';
import { SelectorSend } from '../components/SelectorSend';
import { Empty, ErrorBox, Loading } from '../components/States';
import { useCommandPage } from '../components/useCommandPage';
import { canOperate } from '../lib/commands';
import { ACTION_KINDS, isActionKind, isCommandStatus, PAGE_SIZE } from '../lib/fleet';
import { DEVICE_ID_RULE, isDeviceId } from '../lib/ids';
import { navigate, useLocation } from '../lib/router';

interface Filters {
  device: string;
  status: CommandStatus | '';
  action: ActionKind | '';
  page: number;
}

function parse(search: string): Filters {
  const p = new URLSearchParams(search);
  const status = p.get('status') ?? '';
  const action = p.get('action') ?? '';
  const page = Number(p.get('page'));
  return {
    device: p.get('device') ?? '',
    status: isCommandStatus(status) ? status : '',
    action: isActionKind(action) ? action : '',
    page: Number.isInteger(page) && page > 0 ? page : 1,
  };
}

function toSearch(f: Filters): string {
  const p = new URLSearchParams();
  if (f.device) p.set('device', f.device);
  if (f.status) p.set('status', f.status);
  if (f.action) p.set('action', f.action);
  if (f.page > 1) p.set('page', String(f.page));
  const s = p.toString();
  return s ? `?${s}` : '';
}

export function CommandsPage({ user }: { user: Whoami }) {
  const { search } = useLocation();
  const filters = parse(search);
  const update = (patch: Partial<Filters>) =>
    navigate(`/commands${toSearch({ ...filters, ...patch })}`, { replace: true });

  const [deviceText, setDeviceText] = useState(filters.device);
  const [deviceError, setDeviceError] = useState<string | null>(null);
  useEffect(() => setDeviceText(filters.device), [filters.device]);

  const {
    list,
    expanded,
    toggle,
    update: updateCommand,
  } = useCommandPage({
    device: filters.device || undefined,
    status: filters.status || undefined,
    action: filters.action || undefined,
    page: filters.page,
    limit: PAGE_SIZE,
  });

  const applyDevice = () => {
    const id = deviceText.trim();
    if (id !== '' && !isDeviceId(id)) {
      setDeviceError(DEVICE_ID_RULE);
      return;
    }
    setDeviceError(null);
    if (id !== filters.device) update({ device: id, page: 1 });
  };

  const filtered = filters.device !== '' || filters.status !== '' || filters.action !== '';
  return (
    <Page title="Commands">
      {canOperate(user.role) && (
        <SelectorSend
          onSent={() => {
            update({ page: 1 });
            list.reload();
          }}
        />
      )}
      <section class="card" aria-labelledby="history-title">
        <h2 id="history-title">History</h2>
        <form
          class="toolbar"
          role="search"
          onSubmit={(e) => {
            e.preventDefault();
            applyDevice();
          }}
        >
          <div class="field">
            <label for="commands-device">Device</label>
            <input
              id="commands-device"
              placeholder="device id"
              spellcheck={false}
              autocapitalize="none"
              value={deviceText}
              aria-invalid={deviceError !== null}
              onInput={(e) => setDeviceText(e.currentTarget.value)}
              onBlur={applyDevice}
              data-testid="commands-filter-device"
            />
            {deviceError && (
              <p class="field-error" role="alert">
                {deviceError}
              </p>
            )}
          </div>
          <div class="field">
            <label for="commands-status">Status</label>
            <select
              id="commands-status"
              value={filters.status}
              onChange={(e) => update({ status: e.currentTarget.value as CommandStatus | '', page: 1 })}
              data-testid="commands-filter-status"
            >
              <option value="">Any</option>
              {COMMAND_STATUSES.map((s) => (
                <option key={s} value={s}>
                  {s}
                </option>
              ))}
            </select>
          </div>
          <div class="field">
            <label for="commands-action">Action</label>
            <select
              id="commands-action"
              value={filters.action}
              onChange={(e) => update({ action: e.currentTarget.value as ActionKind | '', page: 1 })}
              data-testid="commands-filter-action"
            >
              <option value="">Any</option>
              {ACTION_KINDS.map((k) => (
                <option key={k} value={k}>
                  {k.replace('_', ' ')}
                </option>
              ))}
            </select>
          </div>
          {filtered && (
            <button
              type="button"
              class="button subtle toolbar-reset"
              onClick={() => update({ device: '', status: '', action: '', page: 1 })}
            >
              Clear
            </button>
          )}
        </form>
        {list.error !== undefined && !list.loading ? (
          <ErrorBox error={list.error} onRetry={list.reload} />
        ) : !list.data ? (
          <Loading label="Loading commands…" />
        ) : list.data.items.length === 0 ? (
          <Empty>{filtered ? 'No commands match these filters.' : 'No commands have been sent yet.'}</Empty>
        ) : (
          <>
            <CommandList
              commands={list.data.items}
              showDevice
              canCancel={canOperate(user.role)}
              onUpdate={updateCommand}
              expanded={expanded}
              onToggle={toggle}
              busy={list.loading}
            />
            <Pager
              page={filters.page}
              total={list.data.total}
              size={PAGE_SIZE}
              noun="commands"
              onPage={(page) => update({ page })}
            />
          </>
        )}
      </section>
    </Page>
  );
}
