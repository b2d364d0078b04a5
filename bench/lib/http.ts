import { connect, type Socket } from 'node:net';

interface Pending {
  head: Buffer;
  body: Buffer;
  resolve: (r: { status: number; text: string }) => void;
  reject: (err: Error) => void;
}

const CRLFCRLF = Buffer.from('\r\n\r\n');

/**
 * One keep-alive HTTP/1.1 connection, one request at a time (no pipelining). The request is two
 * pre-built buffers in one `write`; the response is parsed in place: status line, `content-length`
 * or `chunked`, body. Far cheaper per request than a general client, so that on a 2-core machine the
 * load generator leaves the CPU to the server under test.
 */
class RawConn {
  private socket: Socket | undefined;
  private readonly queue: Pending[] = [];
  private current: Pending | undefined;
  private buf: Buffer = Buffer.alloc(0);
  private closed = false;

  constructor(
    private readonly host: string,
    private readonly port: number,
  ) {}

  get load(): number {
    return this.queue.length + (this.current ? 1 : 0);
  }

  send(p: Pending): void {
    this.queue.push(p);
    this.pump();
  }

  private open(): Socket {
    const s = connect({ host: this.host, port: this.port });
    s.setNoDelay(true);
    s.on('data', (chunk: Buffer) => this.onData(chunk));
    const fail = (err: Error) => {
      if (this.socket !== s) return;
      this.socket = undefined;
      this.buf = Buffer.alloc(0);
      const cur = this.current;
      this.current = undefined;
      cur?.reject(err);
      if (!this.closed) this.pump();
    };
    s.on('error', fail);
    s.on('close', () => fail(new Error('connection closed')));
    this.socket = s;
    return s;
  }

  private pump(): void {
    if (this.current || this.closed) return;
    const next = this.queue.shift();
    if (!next) return;
    this.current = next;
    const s = this.socket ?? this.open();
    s.write(next.body.length ? Buffer.concat([next.head, next.body]) : next.head);
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    for (;;) {
      const end = this.buf.indexOf(CRLFCRLF);
      if (end < 0) return;
      const head = this.buf.toString('latin1', 0, end);
      const status = Number(head.slice(9, 12));
      const lower = head.toLowerCase();
      let bodyStart = end + 4;
      let text: string;
      let consumed: number;
      const cl = /\r\ncontent-length:\s*(\d+)/.exec(lower);
      if (cl) {
        const len = Number(cl[1]);
        if (this.buf.length < bodyStart + len) return;
        text = this.buf.toString('utf8', bodyStart, bodyStart + len);
        consumed = bodyStart + len;
      } else if (lower.includes('\r\ntransfer-encoding: chunked')) {
        const parts: Buffer[] = [];
        for (;;) {
          const eol = this.buf.indexOf('\r\n', bodyStart);
          if (eol < 0) return;
          const size = Number.parseInt(this.buf.toString('latin1', bodyStart, eol), 16);
          if (this.buf.length < eol + 2 + size + 2) return;
          if (size === 0) {
            consumed = eol + 4;
            break;
          }
          parts.push(this.buf.subarray(eol + 2, eol + 2 + size));
          bodyStart = eol + 2 + size + 2;
        }
        text = Buffer.concat(parts).toString('utf8');
      } else {
        text = '';
        consumed = bodyStart;
      }
      this.buf = this.buf.subarray(consumed);
      const cur = this.current;
      this.current = undefined;
      cur?.resolve({ status, text });
      if (/\r\nconnection:\s*close/.test(lower)) {
        const s = this.socket;
        this.socket = undefined;
        this.buf = Buffer.alloc(0);
        s?.destroy();
      }
      this.pump();
      if (this.buf.length === 0) return;
    }
  }

  close(): void {
    this.closed = true;
    this.socket?.destroy();
    this.socket = undefined;
    for (const p of this.queue.splice(0)) p.reject(new Error('poster closed'));
  }
}

/**
 * Keep-alive HTTP client for POST /notify: `connections` raw HTTP/1.1 connections, each request on the
 * least loaded one.
 */
export class Poster {
  private readonly conns: RawConn[];
  private readonly host: string;
  private next = 0;

  constructor(url: string, connections = 8) {
    const u = new URL(url);
    this.host = u.host;
    const port = Number(u.port || 80);
    this.conns = Array.from({ length: Math.max(1, connections) }, () => new RawConn(u.hostname, port));
  }

  post(path: string, body: string): Promise<{ status: number; text: string }> {
    const b = Buffer.from(body);
    const head = Buffer.from(
      `POST ${path} HTTP/1.1\r\nhost: ${this.host}\r\ncontent-type: application/json\r\ncontent-length: ${b.length}\r\n\r\n`,
      'latin1',
    );
    // Round robin, skipping busier connections.
    let best = this.conns[this.next % this.conns.length] as RawConn;
    for (let i = 0; i < this.conns.length && best.load > 0; i++) {
      const c = this.conns[(this.next + i) % this.conns.length] as RawConn;
      if (c.load < best.load) best = c;
    }
    this.next++;
    return new Promise((resolve, reject) => best.send({ head, body: b, resolve, reject }));
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.close();
  }
}

/** Microseconds on the monotonic clock shared by the poster and the load generator (one process). */
export const nowUs = (): number => Math.round(performance.now() * 1000);

const SEQ = Buffer.from('"dataUpdate",{"s":');

/**
 * Reads the `s` (sequence) and `t` (publish time, µs) integers of a bench payload
 * `42/app,["dataUpdate",{"s":<int>,"t":<int>,...},...]` without decoding the message.
 * Returns false when the message is not a bench payload.
 */
export function readStamp(msg: Buffer, out: { s: number; t: number }): boolean {
  let i = msg.indexOf(SEQ);
  if (i < 0) return false;
  i += SEQ.length;
  let neg = false;
  if (msg[i] === 0x2d) {
    neg = true;
    i++;
  }
  let s = 0;
  for (let c = msg[i]; c !== undefined && c >= 0x30 && c <= 0x39; c = msg[++i]) s = s * 10 + (c - 0x30);
  // skip `,"t":`
  i += 5;
  let t = 0;
  for (let c = msg[i]; c !== undefined && c >= 0x30 && c <= 0x39; c = msg[++i]) t = t * 10 + (c - 0x30);
  out.s = neg ? -s : s;
  out.t = t;
  return true;
}

/** A growable store of latency samples (ms). */
export class Samples {
  private buf: Float64Array;
  n = 0;
  constructor(capacity = 1 << 16) {
    this.buf = new Float64Array(capacity);
  }
  push(v: number): void {
    if (this.n === this.buf.length) {
      if (this.buf.length >= 1 << 25) return; // 32M samples at most (256 MB)
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.n++] = v;
  }
  values(): Float64Array {
    return this.buf.subarray(0, this.n);
  }
  reset(): void {
    this.n = 0;
  }
}
