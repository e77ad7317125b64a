import { describe, expect, it } from 'vitest';
import { alertText, decodeThrottled, tempTone, throttledText } from './health';

describe('throttling bits', () => {
  it('decodes current and past conditions', () => {
    expect(decodeThrottled(0)).toEqual({ now: [], past: [] });
    expect(decodeThrottled(0x50005)).toEqual({
      now: ['under-voltage', 'throttled'],
      past: ['under-voltage', 'throttled'],
    });
    expect(decodeThrottled(0x80000)).toEqual({ now: [], past: ['soft temperature limit'] });
    expect(decodeThrottled(null)).toBeNull();
  });

  it('reads as one line', () => {
    expect(throttledText(0)).toBe('OK');
    expect(throttledText(0x1)).toBe('under-voltage');
    expect(throttledText(0x20000)).toBe('OK (earlier: frequency capped)');
    expect(throttledText(null)).toBe('—');
  });
});

describe('alerts and temperatures', () => {
  it('names alerts', () => {
    expect(alertText('under_voltage')).toBe('Under-voltage');
    expect(alertText('disk')).toBe('Disk full');
    expect(alertText('something_new')).toBe('something_new');
  });

  it('gives temperatures a tone', () => {
    expect(tempTone(null)).toBe('');
    expect(tempTone(60)).toBe('');
    expect(tempTone(70)).toBe('warm');
    expect(tempTone(85)).toBe('hot');
  });
});
