// Hooks shared by the pages: loading data with cancellation, debouncing, and a clock.

import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { createStore, useStore } from './store';

export interface Async<T> {
  data: T | undefined;
  error: unknown;
  /** True while a load runs (`data` keeps the previous result meanwhile). */
  loading: boolean;
  reload: () => void;
  /** Replaces the data in place (live updates, optimistic changes). */
  setData: (update: (prev: T | undefined) => T | undefined) => void;
}

/** Runs `load` now and whenever `deps` change; a newer load aborts the older one. */
export function useAsync<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[]): Async<T> {
  const [state, setState] = useState<{ data: T | undefined; error: unknown; loading: boolean }>({
    data: undefined,
    error: undefined,
    loading: true,
  });
  const [generation, setGeneration] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;

  useEffect(() => {
    const ctrl = new AbortController();
    setState((s) => ({ ...s, loading: true }));
    loadRef.current(ctrl.signal).then(
      (data) => {
        if (!ctrl.signal.aborted) setState({ data, error: undefined, loading: false });
      },
      (error: unknown) => {
        if (!ctrl.signal.aborted) setState((s) => ({ ...s, error, loading: false }));
      },
    );
    return () => ctrl.abort();
    // The caller lists what `load` depends on; `load` itself is read through a ref.
  }, [...deps, generation]);

  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  const setData = useCallback(
    (update: (prev: T | undefined) => T | undefined) => setState((s) => ({ ...s, data: update(s.data) })),
    [],
  );
  return { ...state, reload, setData };
}

/** `value`, once it has stopped changing for `ms`. */
export function useDebounced<T>(value: T, ms: number): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setSettled(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return settled;
}

/** One clock for every relative time on screen, ticking each second while watched. */
const clock = createStore(Date.now());
let clockUsers = 0;
let clockTimer: ReturnType<typeof setInterval> | undefined;

export function useNow(): number {
  useEffect(() => {
    if (clockUsers++ === 0) {
      clock.set(Date.now());
      clockTimer = setInterval(() => clock.set(Date.now()), 1000);
    }
    return () => {
      if (--clockUsers === 0) clearInterval(clockTimer);
    };
  }, []);
  return useStore(clock);
}

/** Reloads `a` every `ms` after its previous load finished, while `active` (and the page is
 * visible: a hidden tab waits until it is shown again). */
export function usePolling(a: Pick<Async<unknown>, 'loading' | 'reload'>, ms: number, active: boolean): void {
  const { loading, reload } = a;
  const [visible, setVisible] = useState(() => typeof document === 'undefined' || !document.hidden);
  useEffect(() => {
    const onChange = () => setVisible(!document.hidden);
    document.addEventListener('visibilitychange', onChange);
    return () => document.removeEventListener('visibilitychange', onChange);
  }, []);
  useEffect(() => {
    if (!active || loading || !visible) return;
    const t = setTimeout(reload, ms);
    return () => clearTimeout(t);
  }, [active, loading, visible, ms, reload]);
}
