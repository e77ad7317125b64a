import { describe, expect, it } from 'vitest';
import { matchRoute, safeReturnPath } from './paths';

describe('matchRoute', () => {
  it('matches fixed paths and parameters', () => {
    expect(matchRoute('/', '/')).toEqual({});
    expect(matchRoute('/commands', '/commands')).toEqual({});
    expect(matchRoute('/commands', '/commands/')).toEqual({});
    expect(matchRoute('/devices/:id', '/devices/pi-1')).toEqual({ id: 'pi-1' });
    expect(matchRoute('/devices/:id', '/devices/a%20b')).toEqual({ id: 'a b' });
  });

  it('refuses other paths', () => {
    expect(matchRoute('/', '/users')).toBeNull();
    expect(matchRoute('/devices/:id', '/devices')).toBeNull();
    expect(matchRoute('/devices/:id', '/devices/')).toBeNull();
    expect(matchRoute('/devices/:id', '/devices/pi-1/history')).toBeNull();
    expect(matchRoute('/devices/:id', '/devices/%E0%A4%A')).toBeNull();
  });
});

describe('safeReturnPath', () => {
  it('returns in-app paths only', () => {
    expect(safeReturnPath('/devices/pi-1?x=1')).toBe('/devices/pi-1?x=1');
    expect(safeReturnPath(null)).toBe('/');
    expect(safeReturnPath('https://evil.example/')).toBe('/');
    expect(safeReturnPath('//evil.example/')).toBe('/');
    expect(safeReturnPath('/\\evil.example')).toBe('/');
    expect(safeReturnPath('/login?next=/x')).toBe('/');
    expect(safeReturnPath('javascript:alert(1)')).toBe('/');
  });
});
