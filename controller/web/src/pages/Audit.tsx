// The audit log (admin): the hash chain's verification first, then the entries with filters,
// newest first, paged backwards by sequence number.

import { useState } from 'preact/hooks';
import { type AuditQuery, listAudit, verifyAudit } from '../api/admin';
import type { VerifyReport } from '../api/types';
import { Page } from '../components/Page';
import { Empty, ErrorBox, Loading } from '../components/States';
import { DateTime } from '../components/Time';
import { formatNumber, parseLocalDateTime } from '../lib/format';
import { useAsync } from '../lib/hooks';

const PAGE = 50;

interface Filters {
  actor: string;
  action: string;
  since: string;
  until: string;
}

const EMPTY: Filters = { actor: '', action: '', since: '', until: '' };

function Verification({
  report,
  error,
  loading,
  onRetry,
}: {
  report: VerifyReport | undefined;
  error: unknown;
  loading: boolean;
  onRetry: () => void;
}) {
  if (error !== undefined && !loading) return <ErrorBox error={error} onRetry={onRetry} />;
  if (!report) return <Loading label="Verifying the hash chain…" />;
  if (report.intact) {
    return (
      <div class="verify verify-ok" role="status" data-testid="audit-verify" data-intact="true">
        <strong>Chain intact.</strong> All {formatNumber(report.entries)} entries verified: none was edited,
        inserted or deleted.
        <button type="button" class="button small" onClick={onRetry} disabled={loading}>
          Verify again
        </button>
      </div>
    );
  }
  return (
    <div class="verify verify-bad" role="alert" data-testid="audit-verify" data-intact="false">
      <strong>Chain broken at entry #{report.broken_at ?? '?'}.</strong> {report.problem ?? ''} The log may
      have been tampered with: entries from there on cannot be trusted.
      <button type="button" class="button small" onClick={onRetry} disabled={loading}>
        Verify again
      </button>
    </div>
  );
}

export function AuditPage() {
  const verify = useAsync((signal) => verifyAudit(signal), []);
  const [draft, setDraft] = useState<Filters>(EMPTY);
  const [filters, setFilters] = useState<Filters>(EMPTY);
  const [cursors, setCursors] = useState<number[]>([]);
  const [formError, setFormError] = useState<string | null>(null);
  const before = cursors[cursors.length - 1];

  const query: AuditQuery = {
    actor: filters.actor || undefined,
    action: filters.action || undefined,
    since: parseLocalDateTime(filters.since) ?? undefined,
    until: parseLocalDateTime(filters.until) ?? undefined,
    before,
    limit: PAGE,
  };
  const page = useAsync((signal) => listAudit(query, signal), [JSON.stringify(query)]);

  const apply = (e: Event) => {
    e.preventDefault();
    const since = draft.since ? parseLocalDateTime(draft.since) : null;
    const until = draft.until ? parseLocalDateTime(draft.until) : null;
    if (since !== null && until !== null && since > until) {
      setFormError('"From" must not be after "to".');
      return;
    }
    setFormError(null);
    setFilters({ ...draft, actor: draft.actor.trim(), action: draft.action.trim() });
    setCursors([]);
  };

  const filtered = Object.values(filters).some((v) => v !== '');
  const items = page.data?.items ?? [];
  const last = items[items.length - 1];
  const field = (key: keyof Filters, label: string, type = 'text', placeholder?: string) => (
    <div class="field">
      <label for={`audit-${key}`}>{label}</label>
      <input
        id={`audit-${key}`}
        type={type}
        placeholder={placeholder}
        spellcheck={false}
        autocapitalize="none"
        value={draft[key]}
        onInput={(e) => setDraft({ ...draft, [key]: e.currentTarget.value })}
        data-testid={`audit-filter-${key}`}
      />
    </div>
  );

  return (
    <Page title="Audit log">
      <Verification
        report={verify.data}
        error={verify.error}
        loading={verify.loading}
        onRetry={verify.reload}
      />
      <section class="card" aria-labelledby="entries-title">
        <h2 id="entries-title">Entries</h2>
        <form class="toolbar" role="search" onSubmit={apply}>
          {field('actor', 'Actor', 'text', 'user:alice')}
          {field('action', 'Action', 'text', 'device.revoke')}
          {field('since', 'From', 'datetime-local')}
          {field('until', 'To', 'datetime-local')}
          <button type="submit" class="button" data-testid="audit-apply">
            Apply
          </button>
          {filtered && (
            <button
              type="button"
              class="button subtle"
              onClick={() => {
                setDraft(EMPTY);
                setFilters(EMPTY);
                setCursors([]);
              }}
            >
              Clear
            </button>
          )}
        </form>
        {formError && (
          <p class="form-error" role="alert">
            {formError}
          </p>
        )}
        {page.error !== undefined && !page.loading ? (
          <ErrorBox error={page.error} onRetry={page.reload} />
        ) : !page.data ? (
          <Loading label="Loading entries…" />
        ) : items.length === 0 ? (
          <Empty>
            {filters === EMPTY && cursors.length === 0 ? 'The audit log is empty.' : 'No entries match.'}
          </Empty>
        ) : (
          <div class="table-scroll">
            <table class="table audit" aria-busy={page.loading} data-testid="audit-table">
              <thead>
                <tr>
                  <th scope="col" class="num">
                    #
                  </th>
                  <th scope="col">Time</th>
                  <th scope="col">Actor</th>
                  <th scope="col">Source</th>
                  <th scope="col">Action</th>
                  <th scope="col">Target</th>
                  <th scope="col">Outcome</th>
                  <th scope="col">Detail</th>
                </tr>
              </thead>
              <tbody>
                {items.map((e) => (
                  <tr
                    key={e.seq}
                    class={verify.data?.broken_at === e.seq ? 'broken' : undefined}
                    data-testid="audit-row"
                    data-seq={e.seq}
                  >
                    <td class="num mono">{e.seq}</td>
                    <td>
                      <DateTime ms={e.at} />
                    </td>
                    <td class="mono">{e.actor}</td>
                    <td class="mono">{e.source}</td>
                    <td class="mono">{e.action}</td>
                    <td class="mono wrap">{e.target}</td>
                    <td class={e.outcome === 'ok' ? undefined : 'warn-text'}>{e.outcome}</td>
                    <td class="wrap">{e.detail}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        {page.data && (cursors.length > 0 || items.length === PAGE) && (
          <nav class="pager" aria-label="Pages of entries">
            <span class="pager-info">{page.data.head !== null && <>Newest entry #{page.data.head}</>}</span>
            <span class="pager-buttons">
              <button
                type="button"
                class="button"
                disabled={cursors.length === 0}
                onClick={() => setCursors(cursors.slice(0, -1))}
                data-testid="audit-newer"
              >
                Newer
              </button>
              <button
                type="button"
                class="button"
                disabled={items.length < PAGE || !last || last.seq <= 1}
                onClick={() => last && setCursors([...cursors, last.seq])}
                data-testid="audit-older"
              >
                Older
              </button>
            </span>
          </nav>
        )}
      </section>
    </Page>
  );
}
