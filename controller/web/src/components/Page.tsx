// A page: its heading (focused after navigation, for screen readers and keyboards), the
// document title, and optional actions beside the heading.

import type { ComponentChildren } from 'preact';
import { useEffect } from 'preact/hooks';

interface Props {
  title: string;
  /** Under the heading, e.g. the device id. */
  subtitle?: ComponentChildren;
  actions?: ComponentChildren;
  children: ComponentChildren;
}

export function Page({ title, subtitle, actions, children }: Props) {
  useEffect(() => {
    document.title = `${title} · pifleet`;
  }, [title]);
  return (
    <>
      <div class="page-head">
        <div>
          <h1 tabIndex={-1} data-testid="page-heading">
            {title}
          </h1>
          {subtitle && <p class="page-subtitle">{subtitle}</p>}
        </div>
        {actions && <div class="page-actions">{actions}</div>}
      </div>
      {children}
    </>
  );
}
