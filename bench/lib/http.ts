import { Pool } from 'undici';

/** Keep-alive HTTP client for POST /notify (undici Pool). */
export class Poster {
  readonly pool: Pool;
  constructor(url: string, connections = 8, pipelining = 1) {
    this.pool = new Pool(url, { connections, pipelining, keepAliveTimeout: 60_000 });
  }

  async post(path: string, body: string): Promise<{ status: number; text: string }> {
    const res = await this.pool.request({
      path,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    });
    const text = await res.body.text();
    return { status: res.statusCode, text };
  }

  close(): Promise<void> {
    return this.pool.close();
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
