import { describe, expect, it } from 'vitest';
import { buildUpload, EMPTY_UPLOAD_FIELDS, healthGateText, isAppName, sourceText } from './releases';

describe('isAppName', () => {
  it('follows the agent’s rule', () => {
    for (const ok of ['web', 'kiosk-2', 'a_b', '9lives', 'x'.repeat(64)])
      expect(isAppName(ok), ok).toBe(true);
    for (const bad of ['', 'Web', '-web', '_web', 'web.app', 'web app', 'x'.repeat(65)]) {
      expect(isAppName(bad), bad).toBe(false);
    }
  });
});

describe('buildUpload', () => {
  it('sends what was filled in', () => {
    expect(buildUpload({ ...EMPTY_UPLOAD_FIELDS, app: ' web ', version: '1.4.2' })).toEqual({
      ok: true,
      value: { app: 'web', version: '1.4.2' },
    });
    expect(
      buildUpload({
        app: 'web',
        version: '2.0',
        arches: 'aarch64, armv7l  x86_64',
        startTimeout: '30',
        soak: '0',
        probeHttp: '8080/healthz',
      }),
    ).toEqual({
      ok: true,
      value: {
        app: 'web',
        version: '2.0',
        arches: 'aarch64,armv7l,x86_64',
        start_timeout_s: 30,
        soak_s: 0,
        probe_http: '8080/healthz',
      },
    });
  });

  it('names the field of the first problem', () => {
    expect(buildUpload({ ...EMPTY_UPLOAD_FIELDS, app: 'Web', version: '1' })).toMatchObject({
      error: expect.stringMatching(/^App:/),
    });
    expect(buildUpload({ ...EMPTY_UPLOAD_FIELDS, app: 'web', version: ' ' })).toMatchObject({
      error: expect.stringMatching(/^Version:/),
    });
    expect(buildUpload({ ...EMPTY_UPLOAD_FIELDS, app: 'web', version: '1', soak: '1m' })).toMatchObject({
      error: 'Soak: a whole number of seconds',
    });
    expect(
      buildUpload({ ...EMPTY_UPLOAD_FIELDS, app: 'web', version: '1', probeHttp: 'healthz' }),
    ).toMatchObject({ error: expect.stringMatching(/^Probe:/) });
  });
});

describe('release text', () => {
  it('says where a release came from', () => {
    expect(sourceText({ source: 'upload', source_name: 'web.tar.gz', source_rev: null })).toBe(
      'upload web.tar.gz',
    );
    expect(sourceText({ source: 'upload', source_name: null, source_rev: null })).toBe('upload');
    expect(
      sourceText({ source: 'git', source_name: 'https://example.org/web.git', source_rev: 'a'.repeat(40) }),
    ).toBe(`git https://example.org/web.git @ ${'a'.repeat(12)}`);
  });

  it('says the health gate', () => {
    expect(healthGateText({ start_timeout_s: 60, soak_s: 120 })).toBe(
      'active within 1 min, then 2 min without restarts',
    );
    expect(healthGateText({ start_timeout_s: 30, soak_s: 0 })).toBe('active within 30 s');
  });
});
