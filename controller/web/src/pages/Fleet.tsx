// The fleet overview: totals, and the device table with search, filters, sorting and
// server-side paging, kept current by the live stream (only the visible page is watched).

import { useEffect, useRef, useState } from 'preact/hooks';
import { fleetSummary, listDevices } from '../api/devices';
import { live } from '../api/live';
import type { DevicePage, DeviceSort, DeviceStatus, FleetSummary } from '../api/types';
import { Page } from '../components/Page';
import { Pager } from '../components/Pager';
import { Empty, ErrorBox, Loading } from '../components/States';
import { DeviceTable } from '../components/DeviceTable';
import {
  applyDevice,
  DEFAULT_FLEET_QUERY,
  type FleetQuery,
  fleetQueryString,
  nextSort,
  PAGE_SIZE,
  pageCount,
  parseFleetQuery,
} from '../lib/fleet';
import { formatNumber } from '../lib/format';
import { useAsync, useDebounced } from '../lib/hooks';
import { parseSelector, selectorParam } from '../lib/labels';
import { navigate, useLocation } from '../lib/router';

const CARDS: { key: keyof FleetSummary; label: string; tone: string }[] = [
  { key: 'enrolled', label: 'Enrolled', tone: '' },
  { key: 'online', label: 'Online', tone: 'ok' },
  { key: 'offline', label: 'Offline', tone: 'bad' },
  { key: 'alerting', label: 'Alerting', tone: 'warn' },
];

function Totals({ summary, error }: { summary: FleetSummary | undefined; error: unknown }) {
  return (
    <section class="totals" aria-label="Fleet totals">
      {CARDS.map((c) => (
        <div key={c.key} class={`total total-${c.tone || 'plain'}`} data-testid={`total-${c.key}`}>
          <span class="total-label">{c.label}</span>
          <span class="total-value" aria-live="polite">
            {summary ? formatNumber(summary[c.key]) : '—'}
          </span>
        </div>
      ))}
      {error !== undefined && !summary && (
        <p class="muted totals-note">Totals are unavailable: the live stream will fill them in.</p>
      )}
    </section>
  );
}

function LabelFilter({ value, onApply }: { value: string; onApply: (v: string) => void }) {
  const [text, setText] = useState(value);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => setText(value), [value]);

  const apply = () => {
    const t = text.trim();
    if (t === '') {
      setError(null);
      if (value !== '') onApply('');
      return;
    }
    const r = parseSelector(t);
    if (!r.ok) {
      setError(r.error);
      return;
    }
    setError(null);
    onApply(selectorParam(r.value));
  };

  return (
    <div class="field filter-label">
      <label for="fleet-label">Labels</label>
      <input
        id="fleet-label"
        placeholder="site=lobby,role=kiosk"
        spellcheck={false}
        autocapitalize="none"
        value={text}
        aria-invalid={error !== null}
        aria-describedby={error ? 'fleet-label-error' : undefined}
        onInput={(e) => setText(e.currentTarget.value)}
        onKeyDown={(e) => {
          if (e.key === 'Enter') apply();
        }}
        onBlur={apply}
        data-testid="filter-label"
      />
      {error && (
        <p id="fleet-label-error" class="field-error" role="alert">
          {error}
        </p>
      )}
    </div>
  );
}

export function FleetPage() {
  const { search } = useLocation();
  const query = parseFleetQuery(search);
  const update = (patch: Partial<FleetQuery>) =>
    navigate(`/${fleetQueryString({ ...query, ...patch })}`, { replace: true });

  const [text, setText] = useState(query.q);
  const typed = useDebounced(text, 300);
  useEffect(() => {
    if (typed.trim() !== query.q) update({ q: typed.trim(), page: 1 });
  }, [typed]);
  useEffect(() => {
    if (query.q !== text.trim()) setText(query.q);
  }, [query.q]);

  const summary = useAsync((signal) => fleetSummary(signal), []);
  const list = useAsync(
    (signal) =>
      listDevices(
        {
          q: query.q || undefined,
          status: query.status || undefined,
          label: query.label || undefined,
          sort: query.sort,
          order: query.order,
          limit: PAGE_SIZE,
          offset: (query.page - 1) * PAGE_SIZE,
        },
        signal,
      ),
    [query.q, query.status, query.label, query.sort, query.order, query.page],
  );

  // The enrolled count the list was loaded with: when the fleet grows or shrinks, offer a
  // reload instead of moving rows under the user's cursor.
  const loadedWith = useRef<number | null>(null);
  useEffect(() => {
    if (!list.loading) loadedWith.current = summary.data?.enrolled ?? null;
  }, [list.loading, list.data]);

  const ids = list.data?.items.map((d) => d.id) ?? [];
  const idsKey = ids.join(',');
  useEffect(
    () =>
      live.watch(ids, {
        fleet: (s) => summary.setData(() => s),
        device: (d) => list.setData((p: DevicePage | undefined) => (p ? applyDevice(p, d) : p)),
      }),
    [idsKey],
  );

  // A page past the end (the fleet shrank, or an old link): go to the last page.
  useEffect(() => {
    const d = list.data;
    if (d && !list.loading && d.items.length === 0 && d.total > 0 && query.page > 1) {
      update({ page: pageCount(d.total) });
    }
  }, [list.data, list.loading]);

  const filtered = query.q !== '' || query.status !== '' || query.label !== '';
  const changed =
    loadedWith.current !== null && summary.data !== undefined && summary.data.enrolled !== loadedWith.current;

  const pickLabel = (pair: string) => {
    const current = query.label ? query.label.split(',') : [];
    if (!current.includes(pair)) update({ label: [...current, pair].join(','), page: 1 });
  };

  return (
    <Page title="Fleet">
      <Totals summary={summary.data} error={summary.error} />
      <section class="card" aria-label="Devices">
        <div class="toolbar" role="search">
          <div class="field filter-search">
            <label for="fleet-search">Search</label>
            <input
              id="fleet-search"
              type="search"
              placeholder="Id or hostname"
              spellcheck={false}
              autocapitalize="none"
              value={text}
              onInput={(e) => setText(e.currentTarget.value)}
              data-testid="filter-search"
            />
          </div>
          <div class="field">
            <label for="fleet-status">Status</label>
            <select
              id="fleet-status"
              value={query.status}
              onChange={(e) => update({ status: e.currentTarget.value as DeviceStatus | '', page: 1 })}
              data-testid="filter-status"
            >
              <option value="">Any</option>
              <option value="online">Online</option>
              <option value="offline">Offline</option>
              <option value="revoked">Revoked</option>
            </select>
          </div>
          <LabelFilter value={query.label} onApply={(label) => update({ label, page: 1 })} />
          {(filtered || query.sort !== 'id' || query.order !== 'asc') && (
            <button
              type="button"
              class="button subtle toolbar-reset"
              onClick={() => {
                setText('');
                update(DEFAULT_FLEET_QUERY);
              }}
              data-testid="filter-clear"
            >
              Clear
            </button>
          )}
        </div>
        {changed && (
          <p class="notice" role="status">
            The fleet has changed since this list was loaded.{' '}
            <button type="button" class="link-button" onClick={list.reload} data-testid="fleet-reload">
              Reload the list
            </button>
          </p>
        )}
        {list.error !== undefined && !list.loading ? (
          <ErrorBox error={list.error} onRetry={list.reload} />
        ) : !list.data ? (
          <Loading label="Loading devices…" />
        ) : list.data.items.length === 0 ? (
          <Empty>
            {filtered ? (
              <>
                No devices match these filters.{' '}
                <button
                  type="button"
                  class="link-button"
                  onClick={() => {
                    setText('');
                    update({ q: '', status: '', label: '', page: 1 });
                  }}
                >
                  Clear the filters
                </button>
              </>
            ) : (
              'No devices are enrolled yet. An administrator can create an enrollment token on the Enrollment page.'
            )}
          </Empty>
        ) : (
          <>
            <DeviceTable
              devices={list.data.items}
              sort={query.sort}
              order={query.order}
              busy={list.loading}
              onSort={(s: DeviceSort) => update({ ...nextSort(query, s), page: 1 })}
              onPickLabel={pickLabel}
            />
            <Pager
              page={query.page}
              total={list.data.total}
              size={PAGE_SIZE}
              noun="devices"
              onPage={(page) => update({ page })}
            />
          </>
        )}
      </section>
    </Page>
  );
}
