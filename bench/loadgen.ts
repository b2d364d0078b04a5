/**
 * A light Socket.IO v4 load generator: raw WebSocket clients that speak just enough of the Engine.IO
 * v4 and Socket.IO v4 wire protocol (open `0{...}`, namespace connect `40/<app>,{auth}`, ping `2` →
 * pong `3`, events `42/<app>,[...]`, acks `43/<app>,<id>[...]`), so that the client side costs far
 * less than the server under test.
 *
 * The WebSocket layer is written here on `net.connect` rather than taken from the `ws` client: the
 * upgrade request is written by hand, every socket reads into ONE shared buffer through the `onread`
 * option (no stream machinery, no allocation per read), frames are parsed in place and a handler sees
 * a view of the message that is valid only during the call. Client frames are masked with a zero key
 * (allowed by RFC 6455, and XOR with zero leaves the payload as is).
 *
 * One process can hold as many connections as its open-file limit allows: source addresses are
 * spread over 127.0.0.2-127.0.0.250 so the ephemeral ports of one address never run out (about 28k
 * per address on Linux), and connections are opened at a bounded rate with bounded concurrency.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { sleep } from './lib/util.js';

export interface ClientSpec {
  clientId?: string;
  deviceId?: string;
  /** Topics to subscribe to once connected (one `subscribe` call with an ack). */
  topics?: string[];
  /** Topics whose counts to watch (`subscribeCount`). */
  watch?: string[];
}

const C_0 = 0x30;
const C_2 = 0x32;
const C_3 = 0x33;
const C_4 = 0x34;

/** Called for every `42` event packet with the Engine.IO message (`42/app,[...]`); do not keep `msg`. */
export type EventHandler = (client: Client, msg: Buffer) => void;

/** All sockets read into this one buffer: a read is handled synchronously before the next one. */
const SHARED = Buffer.allocUnsafe(256 * 1024);
const HEADER_END = Buffer.from('\r\n\r\n');

function frame(text: string): Buffer {
  const payload = Buffer.from(text);
  const len = payload.length;
  const head = len < 126 ? 6 : len < 65536 ? 8 : 14;
  const out = Buffer.alloc(head + len); // zeroed: the 4-byte mask key is 0
  out[0] = 0x81;
  if (len < 126) out[1] = 0x80 | len;
  else if (len < 65536) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeBigUInt64BE(BigInt(len), 2);
  }
  payload.copy(out, head);
  return out;
}

export class Client {
  socket: Socket | undefined;
  /** Set by the scenario, e.g. the last sequence number seen. */
  last = -Infinity;
  received = 0;
  open = false;
  private ackId = 0;
  private acks: Map<number, (v: unknown) => void> | undefined;
  private onOpenPacket: (() => void) | undefined;
  private nsReady: ((ok: boolean, why?: string) => void) | undefined;
  /** Bytes of an incomplete frame (or of the HTTP response during the handshake). */
  private pending: Buffer | undefined;
  private upgraded = false;
  /** Fragments of a message sent in several frames. */
  private fragments: Buffer[] | undefined;

  constructor(
    readonly index: number,
    readonly gen: LoadGen,
  ) {}

  connect(spec: ClientSpec, localAddress: string | undefined, timeoutMs: number): Promise<void> {
    const { gen } = this;
    return new Promise<void>((resolve, reject) => {
      let done = false;
      const fail = (why: string) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.socket?.destroy();
        reject(new Error(why));
      };
      const timer = setTimeout(() => fail('connect timeout'), timeoutMs);
      const socket = netConnect({
        host: gen.host,
        port: gen.port,
        ...(localAddress ? { localAddress } : {}),
        noDelay: true,
        onread: { buffer: SHARED, callback: (n: number, buf: Uint8Array) => this.onRead(n, buf as Buffer) },
      });
      this.socket = socket;
      socket.on('connect', () => {
        socket.write(
          `GET ${gen.path} HTTP/1.1\r\nHost: ${gen.host}:${gen.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
            'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
        );
      });
      socket.on('error', (err) => fail(`socket error: ${err.message}`));
      socket.on('close', () => {
        if (this.open) gen.closed++;
        this.open = false;
        fail('closed during connect');
      });
      this.onOpenPacket = () => {
        const auth: Record<string, string> = {};
        if (spec.clientId) auth.clientId = spec.clientId;
        if (spec.deviceId) auth.deviceId = spec.deviceId;
        this.send(`40/${gen.appId},${JSON.stringify(auth)}`);
      };
      this.nsReady = (ok, why) => {
        if (!ok) return fail(`connect_error ${why ?? ''}`);
        this.open = true;
        const steps: Promise<unknown>[] = [];
        if (spec.topics?.length) steps.push(this.call('subscribe', spec.topics));
        if (spec.watch?.length) steps.push(this.call('subscribeCount', spec.watch));
        Promise.all(steps).then(
          (acks) => {
            for (const a of acks) {
              if (!(a as { ok?: boolean } | undefined)?.ok) return fail(`ack not ok: ${JSON.stringify(a)}`);
            }
            if (done) return;
            done = true;
            clearTimeout(timer);
            resolve();
          },
          (err: Error) => fail(err.message),
        );
      };
    });
  }

  send(text: string): void {
    this.socket?.write(frame(text));
  }

  private onRead(n: number, shared: Buffer): boolean {
    let buf = shared.subarray(0, n);
    if (this.pending) {
      buf = Buffer.concat([this.pending, buf]);
      this.pending = undefined;
    }
    let i = 0;
    if (!this.upgraded) {
      const end = buf.indexOf(HEADER_END);
      if (end < 0) {
        this.pending = Buffer.from(buf);
        return true;
      }
      if (buf.toString('latin1', 0, 12) !== 'HTTP/1.1 101') {
        this.socket?.destroy(new Error(`upgrade refused: ${buf.toString('latin1', 0, Math.min(end, 80))}`));
        return false;
      }
      this.upgraded = true;
      i = end + 4;
    }
    const len = buf.length;
    while (i < len) {
      if (len - i < 2) break;
      const b0 = buf[i] as number;
      let size = (buf[i + 1] as number) & 0x7f;
      let head = 2;
      if (size === 126) {
        if (len - i < 4) break;
        size = buf.readUInt16BE(i + 2);
        head = 4;
      } else if (size === 127) {
        if (len - i < 10) break;
        size = Number(buf.readBigUInt64BE(i + 2));
        head = 10;
      }
      if (len - i < head + size) break;
      const payload = buf.subarray(i + head, i + head + size);
      i += head + size;
      const opcode = b0 & 0x0f;
      const fin = (b0 & 0x80) !== 0;
      if (opcode === 0x8) {
        this.socket?.destroy();
        return false;
      }
      if (opcode === 0x9) {
        const pong = Buffer.alloc(6 + payload.length);
        pong[0] = 0x8a;
        pong[1] = 0x80 | payload.length;
        payload.copy(pong, 6);
        this.socket?.write(pong);
        continue;
      }
      if (opcode === 0xa) continue;
      if (!fin || opcode === 0) {
        if (!this.fragments) this.fragments = [];
        this.fragments.push(Buffer.from(payload));
        if (!fin) continue;
        const whole = Buffer.concat(this.fragments);
        this.fragments = undefined;
        this.onMessage(whole);
      } else this.onMessage(payload);
    }
    if (i < len) this.pending = Buffer.from(buf.subarray(i));
    return true;
  }

  private onMessage(data: Buffer): void {
    const t = data[0];
    if (t === C_4) {
      const p = data[1];
      if (p === C_2) {
        this.received++;
        this.gen.onEvent(this, data);
      } else if (p === C_3) this.onAck(data);
      else if (p === C_0) {
        this.nsReady?.(true);
        this.nsReady = undefined;
      } else if (p === C_4) {
        this.nsReady?.(false, data.toString());
        this.nsReady = undefined;
      }
    } else if (t === C_2) {
      this.send('3');
    } else if (t === C_0) {
      this.onOpenPacket?.();
      this.onOpenPacket = undefined;
    }
  }

  /** Emits `event` with `arg` and resolves with the first argument of the ack. */
  call(event: string, arg: unknown, timeoutMs = 20_000): Promise<unknown> {
    const id = ++this.ackId;
    if (!this.acks) this.acks = new Map();
    const acks = this.acks;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        acks.delete(id);
        reject(new Error(`${event}: no ack`));
      }, timeoutMs);
      acks.set(id, (v) => {
        clearTimeout(timer);
        resolve(v);
      });
      this.send(`42/${this.gen.appId},${id}${JSON.stringify([event, arg])}`);
    });
  }

  private onAck(data: Buffer): void {
    const text = data.toString();
    const m = /^43\/[^,]*,(\d+)(.*)$/s.exec(text);
    if (!m || !this.acks) return;
    const id = Number(m[1]);
    const cb = this.acks.get(id);
    if (!cb) return;
    this.acks.delete(id);
    if (this.acks.size === 0) this.acks = undefined;
    cb((JSON.parse(m[2] as string) as unknown[])[0]);
  }

  close(): void {
    this.socket?.destroy();
  }

  get closed(): boolean {
    return this.socket === undefined || this.socket.destroyed;
  }
}

export interface LoadGenOptions {
  /** http://127.0.0.1:<port> of the server under test. */
  url: string;
  appId: string;
  onEvent?: EventHandler;
  /** Number of source addresses 127.0.0.2.. to spread over (0: let the kernel pick 127.0.0.1). */
  sourceAddresses?: number;
}

export interface ConnectResult {
  connected: number;
  failed: number;
  seconds: number;
  /** Connections per second over the whole ramp. */
  rate: number;
  errors: Record<string, number>;
}

export class LoadGen {
  readonly host: string;
  readonly port: number;
  readonly path = '/socket.io/?EIO=4&transport=websocket';
  readonly appId: string;
  readonly clients: Client[] = [];
  onEvent: EventHandler;
  /** Clients whose connection closed after they were connected. */
  closed = 0;
  private readonly sources: number;
  private next = 0;

  constructor(opts: LoadGenOptions) {
    const u = new URL(opts.url);
    this.host = u.hostname;
    this.port = Number(u.port);
    this.appId = opts.appId;
    this.onEvent = opts.onEvent ?? (() => undefined);
    this.sources = opts.sourceAddresses ?? 249;
  }

  private localAddress(i: number): string | undefined {
    if (this.sources <= 0) return undefined;
    return `127.0.0.${2 + (i % this.sources)}`;
  }

  /**
   * Opens `n` clients with `spec(i)`, at most `rate` new connections per second and `concurrency` in
   * flight, and resolves when all are connected and subscribed (or failed). Bounded by `timeoutMs`.
   * `onConnected` runs for each client as soon as it is ready (e.g. to schedule its departure).
   */
  async connect(
    n: number,
    spec: (i: number) => ClientSpec,
    opts: {
      rate?: number;
      concurrency?: number;
      timeoutMs?: number;
      perClientTimeoutMs?: number;
      onConnected?: (c: Client) => void;
      keep?: boolean;
    } = {},
  ): Promise<ConnectResult & { list: Client[] }> {
    const rate = opts.rate ?? 2000;
    const concurrency = opts.concurrency ?? 200;
    const deadline = Date.now() + (opts.timeoutMs ?? 300_000);
    const perClient = opts.perClientTimeoutMs ?? 30_000;
    const keep = opts.keep ?? true;
    const started = performance.now();
    let inflight = 0;
    let connected = 0;
    let failed = 0;
    const errors: Record<string, number> = {};
    const list: Client[] = [];
    let wake: (() => void) | undefined;
    for (let k = 0; k < n; k++) {
      if (Date.now() > deadline) {
        failed += n - k;
        errors['ramp timeout'] = (errors['ramp timeout'] ?? 0) + n - k;
        break;
      }
      const due = started + (k * 1000) / rate;
      const now = performance.now();
      if (due > now + 1) await sleep(due - now);
      while (inflight >= concurrency) await new Promise<void>((r) => (wake = r));
      const c = new Client(this.next, this);
      const addr = this.localAddress(this.next++);
      inflight++;
      c.connect(spec(k), addr, perClient)
        .then(
          () => {
            connected++;
            if (keep) {
              this.clients.push(c);
              list.push(c);
            }
            opts.onConnected?.(c);
          },
          (err: Error) => {
            failed++;
            const key = err.message.slice(0, 60);
            errors[key] = (errors[key] ?? 0) + 1;
          },
        )
        .finally(() => {
          inflight--;
          const w = wake;
          wake = undefined;
          w?.();
        });
    }
    while (inflight > 0) await new Promise<void>((r) => (wake = r));
    const seconds = (performance.now() - started) / 1000;
    return { connected, failed, seconds, rate: connected / seconds, errors, list };
  }

  /** Closes every client and waits (bounded) for the closes to complete. */
  async closeAll(timeoutMs = 10_000): Promise<void> {
    const all = this.clients.splice(0);
    for (const c of all) c.close();
    const end = Date.now() + timeoutMs;
    while (Date.now() < end && all.some((c) => !c.closed)) await sleep(50);
  }
}
