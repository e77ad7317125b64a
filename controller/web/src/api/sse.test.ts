import { describe, expect, it } from 'vitest';
import { readEvents, type SseEvent, SseParser } from './sse';

const STREAM =
  ': keep-alive\n' +
  'event: fleet\n' +
  'data: {"enrolled":3,"online":2}\n' +
  '\n' +
  'event: device\r\n' +
  'data: {"id":"pi-1",\r\n' +
  'data: "status":"online"}\r\n' +
  '\r\n' +
  ':another comment\r' +
  'data:plain\r' +
  'id: 7\r' +
  '\r' +
  'event: command\n' +
  'data: {"id":"ab","device":"pi-2","note":"caf\u00e9 \u2713"}\n' +
  '\n';

const EXPECTED: SseEvent[] = [
  { event: 'fleet', data: '{"enrolled":3,"online":2}', id: undefined },
  { event: 'device', data: '{"id":"pi-1",\n"status":"online"}', id: undefined },
  { event: 'message', data: 'plain', id: '7' },
  { event: 'command', data: '{"id":"ab","device":"pi-2","note":"caf\u00e9 \u2713"}', id: '7' },
];

function parseInChunks(text: string, cuts: number[]): SseEvent[] {
  const p = new SseParser();
  const out: SseEvent[] = [];
  let last = 0;
  for (const c of [...cuts, text.length]) {
    out.push(...p.push(text.slice(last, c)));
    last = c;
  }
  return out;
}

describe('SseParser', () => {
  it('parses a whole stream', () => {
    expect(parseInChunks(STREAM, [])).toEqual(EXPECTED);
  });

  it('gives the same events however the text is split', () => {
    for (let i = 0; i <= STREAM.length; i++) {
      expect(parseInChunks(STREAM, [i]), `cut at ${i}`).toEqual(EXPECTED);
    }
    for (let i = 0; i <= STREAM.length; i++) {
      for (let j = i; j <= STREAM.length; j += 7) {
        expect(parseInChunks(STREAM, [i, j]), `cuts at ${i}, ${j}`).toEqual(EXPECTED);
      }
    }
  });

  it('parses one character at a time', () => {
    const cuts = Array.from({ length: STREAM.length }, (_, i) => i);
    expect(parseInChunks(STREAM, cuts)).toEqual(EXPECTED);
  });

  it('treats a CR LF split across chunks as one line end', () => {
    const p = new SseParser();
    expect(p.push('data: a\r')).toEqual([]);
    expect(p.push('\n')).toEqual([]);
    expect(p.push('\r')).toEqual([{ event: 'message', data: 'a', id: undefined }]);
    expect(p.push('\ndata: b\n\n')).toEqual([{ event: 'message', data: 'b', id: undefined }]);
  });

  it('ignores events without data, comments and unknown fields, and keeps an incomplete event', () => {
    const p = new SseParser();
    expect(p.push('event: fleet\n\n: ping\n\nfoo: bar\ndata\n\n')).toEqual([
      { event: 'message', data: '', id: undefined },
    ]);
    expect(p.push('event: device\ndata: {"id":"pi-1"}\n')).toEqual([]);
    expect(p.push('\n')).toEqual([{ event: 'device', data: '{"id":"pi-1"}', id: undefined }]);
  });

  it('strips only one leading space and a leading BOM, and reads retry', () => {
    const p = new SseParser();
    expect(p.push('\ufeffdata:  two\nretry: 2500\nretry: soon\n\n')).toEqual([
      { event: 'message', data: ' two', id: undefined },
    ]);
    expect(p.retry).toBe(2500);
  });
});

describe('readEvents', () => {
  it('decodes UTF-8 split inside a character and yields events in order', async () => {
    const bytes = new TextEncoder().encode(STREAM);
    const chunks = [
      bytes.slice(0, 3),
      bytes.slice(3, 150),
      bytes.slice(150, bytes.length - 20),
      bytes.slice(bytes.length - 20),
    ];
    // Cut inside the multi-byte é of the last event as well.
    const e = STREAM.indexOf('\u00e9');
    const cut = new TextEncoder().encode(STREAM.slice(0, e)).length + 1;
    const split = [bytes.slice(0, cut), bytes.slice(cut)];
    for (const parts of [chunks, split]) {
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          for (const p of parts) c.enqueue(p);
          c.close();
        },
      });
      const got: SseEvent[] = [];
      for await (const ev of readEvents(body)) got.push(ev);
      expect(got).toEqual(EXPECTED);
    }
  });

  it('stops when the signal aborts', async () => {
    const ctrl = new AbortController();
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode('data: one\n\n'));
      },
    });
    const got: string[] = [];
    for await (const ev of readEvents(body, ctrl.signal)) {
      got.push(ev.data);
      ctrl.abort();
    }
    expect(got).toEqual(['one']);
  });
});
