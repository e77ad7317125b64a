// How the device page shows the agent's watchdog events: a label and a badge tone per kind.

export type Tone = 'ok' | 'bad' | 'busy' | 'muted';

const KINDS: Record<string, { label: string; tone: Tone }> = {
  crash_loop: { label: 'crash loop', tone: 'bad' },
  flapping: { label: 'flapping', tone: 'busy' },
  gave_up: { label: 'systemd gave up', tone: 'bad' },
  starting: { label: 'watchdog start', tone: 'busy' },
  budget_spent: { label: 'out of starts', tone: 'bad' },
  recovered: { label: 'recovered', tone: 'ok' },
};

/** The kind in words and its badge tone; an unknown kind is shown as it is. */
export function unitEventKind(kind: string): { label: string; tone: Tone } {
  return KINDS[kind] ?? { label: kind.replaceAll('_', ' '), tone: 'muted' };
}
