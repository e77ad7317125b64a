// A small client-side router on the History API. The controller serves index.html for every
// non-API path, so any route can be loaded directly.

import type { ComponentChildren, JSX } from 'preact';
import { createStore, useStore } from './store';

export interface Location {
  path: string;
  /** With the leading `?`, or empty. */
  search: string;
}

function current(): Location {
  return { path: window.location.pathname, search: window.location.search };
}

const location = createStore<Location>(current());

window.addEventListener('popstate', () => location.set(current()));

export function useLocation(): Location {
  return useStore(location);
}

export function currentLocation(): Location {
  return location.get();
}

/** Goes to `to` (a path with an optional query); `replace` keeps the history entry. */
export function navigate(to: string, opts: { replace?: boolean } = {}): void {
  const here = location.get();
  if (to === here.path + here.search) return;
  if (opts.replace) window.history.replaceState(null, '', to);
  else window.history.pushState(null, '', to);
  location.set(current());
  if (!opts.replace) window.scrollTo(0, 0);
}

type LinkProps = Omit<JSX.HTMLAttributes<HTMLAnchorElement>, 'href' | 'onClick'> & {
  href: string;
  children?: ComponentChildren;
  /** Runs after an in-app navigation (e.g. to close the phone menu). */
  onNavigate?: () => void;
};

/** An `<a>` that navigates in the app (plain clicks) and stays a real link otherwise. */
export function Link({ href, onNavigate, ...rest }: LinkProps) {
  const click = (e: JSX.TargetedMouseEvent<HTMLAnchorElement>) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(href);
    onNavigate?.();
  };
  return <a href={href} onClick={click} {...rest} />;
}
