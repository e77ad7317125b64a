// A time-series chart on uPlot (loaded on first use, so the fleet page does not pay for it).
// The container is an image to assistive technology, labelled with a text summary.

import { useEffect, useRef, useState } from 'preact/hooks';
import type uPlot from 'uplot';
import { formatTick } from '../lib/format';
import type { Series } from '../lib/series';

export interface ChartLine {
  label: string;
  values: Series;
  /** A CSS custom property holding the colour, e.g. `--chart-1`. */
  color: string;
  dashed?: boolean;
}

interface Props {
  testId: string;
  title: string;
  /** Unix seconds. */
  t: number[];
  /** The window shown, Unix seconds (so a few points sit where they belong in it). */
  from?: number;
  to?: number;
  lines: ChartLine[];
  format: (v: number) => string;
  /** Fixed y range (e.g. 0–100 for percentages); otherwise from the data, from zero. */
  yRange?: [number, number];
  /** Text alternative: what the chart shows and its latest values. */
  summary: string;
}

let uplotModule: Promise<typeof import('./uplot').default> | undefined;
function loadUplot() {
  uplotModule ??= import('./uplot').then((m) => m.default);
  return uplotModule;
}

const HEIGHT = 180;

function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
}

function useColorScheme(): string {
  const query = '(prefers-color-scheme: dark)';
  const [scheme, setScheme] = useState(() => (window.matchMedia(query).matches ? 'dark' : 'light'));
  useEffect(() => {
    const mq = window.matchMedia(query);
    const on = () => setScheme(mq.matches ? 'dark' : 'light');
    mq.addEventListener('change', on);
    return () => mq.removeEventListener('change', on);
  }, []);
  return scheme;
}

export function Chart(p: Props) {
  const box = useRef<HTMLDivElement>(null);
  const scheme = useColorScheme();
  const [failed, setFailed] = useState(false);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    let plot: uPlot | undefined;
    let cancelled = false;
    let observer: ResizeObserver | undefined;
    loadUplot().then(
      (UPlot) => {
        if (cancelled) return;
        const text = cssVar('--text-muted');
        const grid = cssVar('--chart-grid');
        const axis = {
          stroke: text,
          grid: { stroke: grid, width: 1 },
          ticks: { stroke: grid, width: 1 },
        };
        const opts: uPlot.Options = {
          width: Math.max(200, el.clientWidth),
          height: HEIGHT,
          cursor: { drag: { x: false, y: false } },
          legend: { live: true },
          scales: {
            x:
              p.from !== undefined && p.to !== undefined
                ? { time: true, range: [p.from, p.to] }
                : { time: true },
            y: p.yRange ? { range: p.yRange } : { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
          },
          axes: [
            {
              ...axis,
              space: 70,
              values: (u, ticks) => {
                const span = ((u.scales.x?.max ?? 0) - (u.scales.x?.min ?? 0)) * 1000;
                return ticks.map((s) => formatTick(s * 1000, span));
              },
            },
            { ...axis, size: 70, values: (_u, ticks) => ticks.map((v) => p.format(v)) },
          ],
          series: [
            {},
            ...p.lines.map((l) => ({
              label: l.label,
              stroke: cssVar(l.color),
              width: 1.5,
              dash: l.dashed ? [4, 4] : undefined,
              value: (_u: uPlot, v: number | null) => (v === null ? '—' : p.format(v)),
              spanGaps: false,
            })),
          ],
        };
        plot = new UPlot(opts, [p.t, ...p.lines.map((l) => l.values)] as uPlot.AlignedData, el);
        observer = new ResizeObserver(() => {
          if (plot && el.clientWidth > 0) plot.setSize({ width: el.clientWidth, height: HEIGHT });
        });
        observer.observe(el);
      },
      () => setFailed(true),
    );
    return () => {
      cancelled = true;
      observer?.disconnect();
      plot?.destroy();
    };
  }, [p.t, p.lines, p.from, p.to, scheme]);

  return (
    <figure class="chart" data-testid={p.testId} data-points={p.t.length}>
      <figcaption>{p.title}</figcaption>
      {failed ? (
        <p class="muted">{p.summary}</p>
      ) : (
        <div ref={box} class="chart-plot" role="img" aria-label={p.summary} />
      )}
    </figure>
  );
}
