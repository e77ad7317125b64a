import { describe, expect, it } from 'vitest';
import { unitEventKind } from './watchdog';

describe('unitEventKind', () => {
  it('names every kind the agent reports, with a tone', () => {
    expect(unitEventKind('crash_loop')).toEqual({ label: 'crash loop', tone: 'bad' });
    expect(unitEventKind('gave_up').tone).toBe('bad');
    expect(unitEventKind('budget_spent').tone).toBe('bad');
    expect(unitEventKind('flapping').tone).toBe('busy');
    expect(unitEventKind('starting').tone).toBe('busy');
    expect(unitEventKind('recovered')).toEqual({ label: 'recovered', tone: 'ok' });
  });

  it('shows a kind it does not know as it is', () => {
    expect(unitEventKind('new_thing')).toEqual({ label: 'new thing', tone: 'muted' });
  });
});
