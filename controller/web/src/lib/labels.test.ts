import { describe, expect, it } from 'vitest';
import { labelPairs, parseLabels, parseSelector, rowsToLabels, selectorParam } from './labels';

describe('parseSelector', () => {
  it('parses key=value pairs separated by commas', () => {
    expect(parseSelector('site=lobby,role=kiosk')).toEqual({
      ok: true,
      value: { site: 'lobby', role: 'kiosk' },
    });
    expect(parseSelector(' site = lobby , role=kiosk ,')).toEqual({
      ok: true,
      value: { site: 'lobby', role: 'kiosk' },
    });
    expect(parseSelector('app.kubernetes.io/name=x')).toEqual({
      ok: true,
      value: { 'app.kubernetes.io/name': 'x' },
    });
  });

  it('allows empty values and = inside values', () => {
    expect(parseSelector('note=')).toEqual({ ok: true, value: { note: '' } });
    expect(parseSelector('expr=a=b')).toEqual({ ok: true, value: { expr: 'a=b' } });
  });

  it('refuses what the controller refuses', () => {
    const bad = [
      '',
      '   ',
      'site',
      'Site=x',
      '=x',
      `${'k'.repeat(64)}=v`,
      'a b=c',
      'site=a,site=b',
      `k=${'v'.repeat(256)}`,
      'k=\u0007',
    ];
    for (const b of bad) {
      const r = parseSelector(b);
      expect(r.ok, JSON.stringify(b)).toBe(false);
    }
    expect(parseSelector('site=a,site=b')).toEqual({ ok: false, error: 'the key "site" appears twice' });
    expect(parseSelector('Site=x')).toMatchObject({ ok: false, error: expect.stringMatching(/a-z 0-9/) });
  });

  it('caps the number of pairs', () => {
    const many = Array.from({ length: 65 }, (_, i) => `k${i}=v`).join(',');
    expect(parseSelector(many).ok).toBe(false);
    const enough = Array.from({ length: 64 }, (_, i) => `k${i}=v`).join(',');
    expect(parseSelector(enough).ok).toBe(true);
  });

  it('accepts an empty label set only where it is allowed', () => {
    expect(parseLabels('')).toEqual({ ok: true, value: {} });
    expect(parseLabels('a=1\nb=2')).toEqual({ ok: true, value: { a: '1', b: '2' } });
  });
});

describe('selectorParam and labelPairs', () => {
  it('round-trips through the query parameter', () => {
    const sel = { site: 'lobby', role: 'kiosk' };
    const p = selectorParam(sel);
    expect(p).toBe('site=lobby,role=kiosk');
    expect(parseSelector(p)).toEqual({ ok: true, value: sel });
  });

  it('lists labels sorted by key', () => {
    expect(labelPairs({ rack: '1', demo: 'true' })).toEqual(['demo=true', 'rack=1']);
    expect(labelPairs({})).toEqual([]);
  });
});

describe('rowsToLabels', () => {
  it('skips blank rows and keeps values as typed (commas included)', () => {
    expect(
      rowsToLabels([
        { key: ' site ', value: 'lobby, east' },
        { key: '', value: '' },
        { key: 'rack', value: '' },
      ]),
    ).toEqual({ labels: { site: 'lobby, east', rack: '' } });
  });

  it('reports bad keys and duplicates', () => {
    expect(rowsToLabels([{ key: '', value: 'x' }])).toHaveProperty('error');
    expect(rowsToLabels([{ key: 'Bad', value: 'x' }])).toHaveProperty('error');
    expect(
      rowsToLabels([
        { key: 'a', value: '1' },
        { key: 'a', value: '2' },
      ]),
    ).toEqual({
      error: 'the key "a" appears twice',
    });
  });
});
