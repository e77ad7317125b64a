// Page controls for offset-paged lists.

import { formatNumber } from '../lib/format';
import { pageCount } from '../lib/fleet';

interface Props {
  /** 1-based. */
  page: number;
  total: number;
  size: number;
  onPage: (page: number) => void;
  noun: string;
}

export function Pager({ page, total, size, onPage, noun }: Props) {
  const pages = pageCount(total, size);
  const first = total === 0 ? 0 : (page - 1) * size + 1;
  const last = Math.min(total, page * size);
  return (
    <nav class="pager" aria-label={`Pages of ${noun}`} data-testid="pager">
      <span class="pager-info" aria-live="polite">
        {formatNumber(first)}–{formatNumber(last)} of {formatNumber(total)} {noun}
      </span>
      <span class="pager-buttons">
        <button
          type="button"
          class="button pager-edge"
          disabled={page <= 1}
          onClick={() => onPage(1)}
          aria-label="First page"
        >
          «
        </button>
        <button
          type="button"
          class="button"
          disabled={page <= 1}
          onClick={() => onPage(page - 1)}
          data-testid="pager-prev"
        >
          Previous
        </button>
        <span class="pager-page">
          Page {formatNumber(page)} of {formatNumber(pages)}
        </span>
        <button
          type="button"
          class="button"
          disabled={page >= pages}
          onClick={() => onPage(page + 1)}
          data-testid="pager-next"
        >
          Next
        </button>
        <button
          type="button"
          class="button pager-edge"
          disabled={page >= pages}
          onClick={() => onPage(pages)}
          aria-label="Last page"
        >
          »
        </button>
      </span>
    </nav>
  );
}
