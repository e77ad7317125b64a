// A server-sent events parser (the WHATWG "event stream interpretation"), fed text in
// chunks split anywhere. EventSource cannot send an Authorization header, so the live
// stream is read with fetch() and parsed here.

const CR = 13;
const LF = 10;

export interface SseEvent {
  /** `message` when the server named none. */
  event: string;
  data: string;
  id: string | undefined;
}

export class SseParser {
  private buf = '';
  private afterCr = false;
  private started = false;
  private event = '';
  private data: string[] = [];
  private id: string | undefined;
  /** The reconnection time the server asked for (`retry:`), ms. */
  retry: number | undefined;

  /** Parses a chunk and returns the events it completes. */
  push(chunk: string): SseEvent[] {
    const out: SseEvent[] = [];
    let text = chunk;
    if (!this.started && text.length > 0) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (this.afterCr) {
        this.afterCr = false;
        if (c === LF) {
          // The LF of a CR LF pair, possibly split across chunks.
          start = i + 1;
          continue;
        }
      }
      if (c === CR || c === LF) {
        this.line(this.buf + text.slice(start, i), out);
        this.buf = '';
        start = i + 1;
        this.afterCr = c === CR;
      }
    }
    this.buf += text.slice(start);
    return out;
  }

  private line(line: string, out: SseEvent[]): void {
    if (line === '') {
      this.dispatch(out);
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event':
        this.event = value;
        break;
      case 'data':
        this.data.push(value);
        break;
      case 'id':
        if (!value.includes('\0')) this.id = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break;
    }
  }

  private dispatch(out: SseEvent[]): void {
    if (this.data.length > 0) {
      out.push({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
    }
    this.event = '';
    this.data = [];
  }
}

/** Reads a response body as server-sent events until it ends or `signal` aborts. */
export async function* readEvents(
  body: ReadableStream<Uint8Array>,
  signal?: AbortSignal,
): AsyncGenerator<SseEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser();
  const cancel = () => void reader.cancel().catch(() => undefined);
  signal?.addEventListener('abort', cancel, { once: true });
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      yield* parser.push(decoder.decode(value, { stream: true }));
    }
    yield* parser.push(decoder.decode());
  } finally {
    signal?.removeEventListener('abort', cancel);
    cancel();
  }
}
