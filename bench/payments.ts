/**
 * Payment tracking benchmark: `npm run bench -- payments [--machines 2000] [--rate 3000] [--seconds 20]`.
 *
 * Herald runs as its own process (built: `node dist/src/main.js`, as `npm start` runs it; `BENCH_FROM_SOURCE=1`
 * runs src/ through tsx), embedded store by default. This
 * process opens `--machines` machine connections (raw WebSocket clients speaking the Engine.IO v4 /
 * Socket.IO v4 wire protocol, so the load generator costs far less than the server) spread over
 * `--merchants` merchants, and one merchant-app connection per merchant (clientId = merchantId).
 * Each machine runs order lifecycles created -> paying -> succeeded (every 10th order fails instead), one
 * report at a time (the next after the ack, as a terminal does); a pacer keeps the total at `--rate`
 * events/s. A `--dup-pct` share of reports is sent twice with the same eventId.
 *
 * Figures: events/s acknowledged, p50/p99/max from a report being sent to the merchant app's
 * `dataUpdate` for that transition, p50/p99 of the ack, and the check that every acknowledged
 * transition reached the merchant app exactly once (lost = 0, doubled = 0) and that the store agrees
 * (GET /payments/stats). Flags: --store embedded|postgres --database-url --warmup (s, 3)
 * --connect-concurrency (100) --keep (keep Herald's data folder and PostgreSQL schema; the schema's name is
 * printed) --schema <name> (PostgreSQL: run on that schema, e.g. one a --keep run filled, and keep it) --cpu-prof <dir>
 * (profile Herald) --node-flags '<V8 flags>' (after the ones npm start uses, HERALD_NODE_FLAGS)
 * --herald-dir <dir> (another checkout, e.g. from bench/tools/snapshot.sh) --series (the worst latency of
 * every 250 ms window, in order). BENCH_HERALD_STDOUT=<file>
 * keeps Herald's standard output (e.g. with --node-flags=--trace-gc).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import WebSocket from 'ws';
import { HERALD_NODE_FLAGS, heraldEntry, postgresCpu, postgresCpuSince, schedNanos } from './lib/proc.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const APP = 'pos-bench';

type Flags = Record<string, string | boolean>;

/** Accepts raw argv (`['--rate', '3000']`) or flags already parsed by bench/run.ts (`{ rate: '3000' }`). */
function flagsOf(args: readonly string[] | Record<string, unknown>): Flags {
  if (!Array.isArray(args)) {
    const out: Flags = {};
    for (const [k, v] of Object.entries(args))
      if (typeof v === 'string' || typeof v === 'boolean') out[k] = v;
    return out;
  }
  const out: Flags = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else if (args[i + 1] !== undefined && !(args[i + 1] as string).startsWith('--'))
      out[a.slice(2)] = args[++i] as string;
    else out[a.slice(2)] = true;
  }
  return out;
}
const num = (f: Flags, k: string, d: number) => (typeof f[k] === 'string' ? Number(f[k]) : d);
const str = (f: Flags, k: string, d: string) => (typeof f[k] === 'string' ? (f[k] as string) : d);
const log = (m: string) => process.stderr.write(`[payments] ${m}\n`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}
const round = (n: number) => Math.round(n * 100) / 100;

// ---- Herald as a child process ----

interface Node {
  child: ChildProcess;
  url: string;
  dataDir: string;
}

async function startHeraldProcess(
  env: Record<string, string>,
  cpuProfDir?: string,
  extraFlags: string[] = [],
  heraldDir?: string,
): Promise<Node> {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'herald-bench-pay-'));
  const childEnv: NodeJS.ProcessEnv = {
    ...process.env,
    PORT: String(port),
    HOST: '127.0.0.1',
    DATA_DIR: dataDir,
    LOG_LEVEL: 'warn',
    PAYMENT_TIMEOUT: '1h',
    ...env,
  };
  if (!env.DATABASE_URL) delete childEnv.DATABASE_URL;
  const nodeArgs = [...extraFlags, ...(cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : [])];
  const child = spawn(process.execPath, [...HERALD_NODE_FLAGS, ...nodeArgs, ...heraldEntry(heraldDir)], {
    cwd: heraldDir ?? ROOT,
    env: childEnv,
    stdio: [
      'ignore',
      process.env.BENCH_HERALD_STDOUT ? openSync(process.env.BENCH_HERALD_STDOUT, 'w') : 'ignore',
      'inherit',
    ],
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`Herald exited with code ${child.exitCode} while starting`);
    try {
      const r = await fetch(`${url}/readyz`);
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error('Herald did not become ready within 120 s');
    await sleep(200);
  }
  return { child, url, dataDir };
}

async function stopHeraldProcess(n: Node, keep: boolean): Promise<void> {
  if (n.child.exitCode === null) {
    n.child.kill('SIGTERM');
    await new Promise((r) => n.child.once('exit', r));
  }
  if (!keep) rmSync(n.dataDir, { recursive: true, force: true });
}

/** Herald's CPU time in ms (user + system), from /proc (Linux; 0 elsewhere). */
function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const fields = (readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1] ?? '').split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
  } catch {
    return 0;
  }
}
const CLK_TCK = 100;

/** Payment transaction count and total seconds, and the event-loop p99, from Herald's /metrics. */
async function scrape(url: string): Promise<{
  txCount?: number;
  txSum?: number;
  loopP99?: number;
  loopMax?: number;
  heap?: number;
  rss?: number;
  gcSum?: number;
  majorGcs?: number;
  /** Cumulative count of store transactions per bucket upper bound (seconds). */
  txBuckets?: Map<number, number>;
  /** Orders of batches by where they came from (herald_payment_order_cache_total). */
  cache?: Record<string, number>;
  /** Sweep steps (herald_payment_sweep_seconds): count and total seconds by step. */
  sweep?: Record<string, { count: number; sum: number }>;
  /** Embedded store turns (herald_embedded_store_hold_seconds) by op: count, seconds, count over 25 ms. */
  hold?: Record<string, { count: number; sum: number; over25: number; over250: number }>;
}> {
  try {
    const text = await (await fetch(`${url}/metrics`)).text();
    const value = (name: string) => {
      const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'm').exec(text);
      return m ? Number(m[1]) : undefined;
    };
    return {
      txCount: value('herald_payment_store_seconds_count'),
      txSum: value('herald_payment_store_seconds_sum'),
      loopP99: value('herald_event_loop_delay_p99_seconds'),
      loopMax: value('herald_event_loop_delay_max_seconds'),
      heap: value('nodejs_heap_size_used_bytes'),
      rss: value('process_resident_memory_bytes'),
      // prom-client's GC histogram, every kind (minor, major, incremental, weakcb) summed.
      gcSum: [...text.matchAll(/^nodejs_gc_duration_seconds_sum\{[^}]*\} ([0-9.e+-]+)$/gm)].reduce(
        (a, m) => a + Number(m[1]),
        0,
      ),
      majorGcs: value('nodejs_gc_duration_seconds_count\\{kind="major"\\}'),
      txBuckets: new Map(
        [...text.matchAll(/^herald_payment_store_seconds_bucket\{le="([0-9.]+)"\} ([0-9.e+-]+)$/gm)].map(
          (m) => [Number(m[1]), Number(m[2])],
        ),
      ),
      sweep: [
        ...text.matchAll(/^herald_payment_sweep_seconds_(sum|count)\{step="(\w+)"\} ([0-9.e+-]+)$/gm),
      ].reduce(
        (acc, m) => {
          const name = m[2] as string;
          const step = acc[name] ?? { count: 0, sum: 0 };
          acc[name] = step;
          if (m[1] === 'sum') step.sum = Number(m[3]);
          else step.count = Number(m[3]);
          return acc;
        },
        {} as Record<string, { count: number; sum: number }>,
      ),
      hold: [
        ...text.matchAll(
          /^herald_embedded_store_hold_seconds_(sum|count|bucket)\{(?:le="([0-9.+Inf]+)",)?op="([^"]+)"(?:,le="([0-9.+Inf]+)")?\} ([0-9.e+-]+)$/gm,
        ),
      ].reduce(
        (acc, m) => {
          const op = m[3] as string;
          const o = acc[op] ?? { count: 0, sum: 0, over25: 0, over250: 0 };
          acc[op] = o;
          const le = m[2] ?? m[4];
          if (m[1] === 'sum') o.sum = Number(m[5]);
          else if (m[1] === 'count') o.count = Number(m[5]);
          else if (le === '0.025') o.over25 = -Number(m[5]);
          else if (le === '0.25') o.over250 = -Number(m[5]);
          return acc;
        },
        {} as Record<string, { count: number; sum: number; over25: number; over250: number }>,
      ),
      cache: Object.fromEntries(
        [...text.matchAll(/^herald_payment_order_cache_total\{result="(\w+)"\} ([0-9.e+-]+)$/gm)].map((m) => [
          m[1] as string,
          Number(m[2]),
        ]),
      ),
    };
  } catch {
    return {};
  }
}

// ---- a minimal Socket.IO v4 client over ws ----

type Ack = (payload: Record<string, unknown>) => void;

class WireClient {
  private ws: WebSocket | undefined;
  private nextAck = 1;
  private readonly acks = new Map<number, Ack>();
  onEvent: ((name: string, args: unknown[]) => void) | undefined;

  constructor(
    private readonly url: string,
    private readonly auth: Record<string, string>,
  ) {}

  connect(timeoutMs = 20_000): Promise<void> {
    const ws = new WebSocket(`${this.url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`, {
      perMessageDeflate: false,
    });
    this.ws = ws;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('connect timeout')), timeoutMs);
      ws.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      ws.on('message', (raw: Buffer) => {
        const msg = raw.toString();
        const c = msg.charCodeAt(0);
        if (c === 0x32 /* 2 ping */) {
          ws.send('3');
          return;
        }
        if (c === 0x30 /* 0 open */) {
          ws.send(`40/${APP},${JSON.stringify(this.auth)}`);
          return;
        }
        if (msg.startsWith('40/')) {
          clearTimeout(timer);
          resolve();
          return;
        }
        if (msg.startsWith('44/')) {
          clearTimeout(timer);
          reject(new Error(`connect refused: ${msg}`));
          return;
        }
        const comma = msg.indexOf(',');
        if (msg.startsWith('43/')) {
          const open = msg.indexOf('[', comma);
          const id = Number(msg.slice(comma + 1, open));
          const ack = this.acks.get(id);
          if (ack) {
            this.acks.delete(id);
            ack((JSON.parse(msg.slice(open)) as Record<string, unknown>[])[0] as Record<string, unknown>);
          }
          return;
        }
        if (msg.startsWith('42/') && this.onEvent) {
          const arr = JSON.parse(msg.slice(comma + 1)) as unknown[];
          this.onEvent(arr[0] as string, arr.slice(1));
        }
      });
    });
  }

  emit(event: string, data: unknown, ack: Ack): void {
    const id = this.nextAck++;
    this.acks.set(id, ack);
    this.ws?.send(`42/${APP},${id}${JSON.stringify([event, data])}`);
  }

  close(): void {
    this.ws?.close();
  }
}

async function inBatches<T>(items: T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (i < items.length) await fn(items[i++] as T);
    }),
  );
}

// ---- the scenario ----

interface Machine {
  deviceId: string;
  merchantId: string;
  client: WireClient;
  busy: boolean;
  order: string;
  step: number;
  orders: number;
}

const LIFE = ['created', 'paying', 'succeeded'] as const;
const FAILING = ['created', 'paying', 'failed'] as const;
/** Bit groups of the statuses in a run's per-order outcome (6: any other status). */
const STATUS_BIT: Record<string, number> = {
  created: 0,
  paying: 1,
  succeeded: 2,
  failed: 3,
  closed: 4,
  refunded: 5,
};

export async function run(
  args: readonly string[] | Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const f = flagsOf(args);
  const machinesN = num(f, 'machines', 2000);
  const merchantsN = num(f, 'merchants', 200);
  const rate = num(f, 'rate', 3000);
  const seconds = num(f, 'seconds', 20);
  const warmup = num(f, 'warmup', 3);
  const dupPct = num(f, 'dup-pct', 2);
  const connectConcurrency = num(f, 'connect-concurrency', 100);
  const store = str(f, 'store', 'embedded');
  const series = f.series === true || f.series === 'true';
  const env: Record<string, string> = {};
  let schema: string | undefined;
  const databaseUrl = str(
    f,
    'database-url',
    process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
  );
  // --schema <name>: run on an existing schema (kept afterwards), e.g. one a longer --keep run filled, to tell
  // what the size of the tables does from what a long-running node does.
  const givenSchema = typeof f.schema === 'string' ? f.schema : undefined;
  if (store === 'postgres') {
    schema = givenSchema ?? `bench_payments_${randomBytes(4).toString('hex')}`;
    env.DATABASE_URL = databaseUrl;
    env.DATABASE_SCHEMA = schema;
  } else if (store !== 'embedded') throw new Error('--store is embedded or postgres');

  log(`starting Herald (${store} store${schema ? `, schema ${schema}` : ''})`);
  const cpuProf = typeof f['cpu-prof'] === 'string' ? (f['cpu-prof'] as string) : undefined;
  // More V8 flags for Herald, after HERALD_NODE_FLAGS (the last one wins), e.g.
  // --node-flags=--max-semi-space-size=16 to compare with Node's default young generation.
  const extraFlags = typeof f['node-flags'] === 'string' ? (f['node-flags'] as string).split(' ') : [];
  // --herald-dir <checkout>: run another build of Herald (bench/tools/snapshot.sh) under the same bench.
  const heraldDir = typeof f['herald-dir'] === 'string' ? (f['herald-dir'] as string) : undefined;
  const node = await startHeraldProcess(env, cpuProf, extraFlags, heraldDir);
  const statsBefore = givenSchema
    ? ((await (await fetch(`${node.url}/payments/stats?appId=${APP}&minutes=5`)).json()) as {
        total: number;
        counts: Record<string, number>;
      })
    : { total: 0, counts: {} as Record<string, number> };
  const run = `${Date.now().toString(36)}`;
  // What each order's transitions did, in one small integer per order (a string per transition in three
  // collections took ~200 MB of this process's heap in a 300 s run, and its full GCs stalled it ~200 ms,
  // which the latencies then counted): per status (STATUS_BIT), bit 0 acknowledged as a transition,
  // bits 1-2 notifications received (0-3, 3 meaning three or more).
  const outcome = new Map<string, number>();
  const sentAt = new Map<string, number>(); // `${orderId}:${status}` -> first send time, until notified
  let transitions = 0;
  const mark = (orderId: string, status: string, f: (bits: number) => number) => {
    const shift = 3 * (STATUS_BIT[status] ?? 6);
    const all = outcome.get(orderId) ?? 0;
    const bits = f((all >>> shift) & 7) & 7;
    outcome.set(orderId, (all & ~(7 << shift)) | (bits << shift));
  };
  const latencies: number[] = [];
  const ackLatencies: number[] = [];
  const worst = new Map<number, number>();
  let measuring = false;
  let acked = 0;
  let duplicates = 0;
  let stale = 0;
  let rejected = 0;
  const apps: WireClient[] = [];
  const machines: Machine[] = [];
  try {
    log(`connecting ${merchantsN} merchant apps and ${machinesN} machines`);
    for (let m = 0; m < merchantsN; m++) {
      const merchantId = `m-${run}-${m}`;
      const app = new WireClient(node.url, { clientId: merchantId });
      app.onEvent = (name, evArgs) => {
        if (name !== 'dataUpdate') return;
        const data = evArgs[0] as { type?: string; orderId?: string; status?: string };
        if (data.type !== 'payment') return;
        const orderId = String(data.orderId);
        const status = String(data.status);
        mark(orderId, status, (b) => (b & 1) | (Math.min(3, (b >> 1) + 1) << 1));
        const key = `${orderId}:${status}`;
        const t = sentAt.get(key);
        sentAt.delete(key);
        if (t !== undefined && measuring) {
          const now = performance.now();
          latencies.push(now - t);
          // The worst latency of each 250 ms window (by send time): tells a few long stalls from a
          // generally slow tail.
          const w = Math.floor(t / 250);
          worst.set(w, Math.max(worst.get(w) ?? 0, now - t));
        }
      };
      apps.push(app);
    }
    await inBatches(apps, connectConcurrency, (a) => a.connect());
    for (let i = 0; i < machinesN; i++) {
      const deviceId = `pos-${run}-${i}`;
      const merchantId = `m-${run}-${i % merchantsN}`;
      machines.push({
        deviceId,
        merchantId,
        client: new WireClient(node.url, { deviceId, merchantId }),
        busy: false,
        order: '',
        step: 0,
        orders: 0,
      });
    }
    const connectStarted = performance.now();
    await inBatches(machines, connectConcurrency, (m) => m.client.connect());
    const connectSeconds = (performance.now() - connectStarted) / 1000;
    log(`connected in ${round(connectSeconds)} s`);

    const send = (m: Machine) => {
      if (m.step === 0) {
        m.order = `${m.deviceId}-${m.orders++}`;
      }
      const life = m.orders % 10 === 0 ? FAILING : LIFE;
      const type = life[m.step] as string;
      const event = {
        eventId: `${m.order}:${type}`,
        orderId: m.order,
        type,
        amount: 4,
        occurredAt: Date.now(),
      };
      const key = `${m.order}:${type}`;
      const t0 = performance.now();
      if (!sentAt.has(key)) sentAt.set(key, t0);
      m.busy = true;
      const onAck = (ack: Record<string, unknown>) => {
        if (measuring) ackLatencies.push(performance.now() - t0);
        if (ack.ok !== true) {
          rejected++;
          m.busy = false;
          return;
        }
        acked++;
        if (ack.duplicate) duplicates++;
        else if (ack.stale) stale++;
        else {
          transitions++;
          mark(event.orderId, type, (b) => b | 1);
        }
        m.step = (m.step + 1) % life.length;
        m.busy = false;
      };
      m.client.emit('payment:report', event, onAck);
      if (Math.random() * 100 < dupPct) {
        // The same event again (a machine retrying): must be answered duplicate and notify nobody.
        m.client.emit('payment:report', event, (ack) => {
          if (ack.ok === true && ack.duplicate) duplicates++;
          else if (ack.ok !== true) rejected++;
        });
      }
    };

    // Pacer: every 5 ms, send what the rate allows to idle machines, round robin.
    let cursor = 0;
    let credit = 0;
    let last = performance.now();
    let sent = 0;
    const tick = () => {
      const now = performance.now();
      credit += ((now - last) / 1000) * rate;
      last = now;
      let scanned = 0;
      while (credit >= 1 && scanned < machines.length) {
        const m = machines[cursor] as Machine;
        cursor = (cursor + 1) % machines.length;
        scanned++;
        if (m.busy) continue;
        send(m);
        sent++;
        credit -= 1;
      }
      if (credit > rate) credit = rate; // do not bank more than a second of backlog
    };
    const timer = setInterval(tick, 5);
    log(`warming up ${warmup} s`);
    await sleep(warmup * 1000);
    const cpu0 = cpuMs(node.child.pid);
    const sched0 = schedNanos(node.child.pid as number);
    const selfCpu0 = process.cpuUsage();
    const pgCpu0 = postgresCpu();
    const metrics0 = await scrape(node.url);
    const load0 = loadavg()[0] as number;
    const acked0 = acked;
    const sent0 = sent;
    // The load generator's own event-loop delay: a stall here delays the receive time stamps too.
    const selfLoop = monitorEventLoopDelay({ resolution: 5 });
    selfLoop.enable();
    measuring = true;
    const t0 = performance.now();
    log(`measuring ${seconds} s at ${rate} events/s`);
    await sleep(seconds * 1000);
    measuring = false;
    selfLoop.disable();
    const elapsed = (performance.now() - t0) / 1000;
    const eventsPerSecond = (acked - acked0) / elapsed;
    const sentPerSecond = (sent - sent0) / elapsed;
    const cpu = (cpuMs(node.child.pid) - cpu0) / 1000 / elapsed;
    const sched1 = schedNanos(node.child.pid as number);
    const selfCpu = process.cpuUsage(selfCpu0);
    const pgCpu = store === 'postgres' ? postgresCpuSince(pgCpu0) / 1000 / elapsed : null;
    const metrics1 = await scrape(node.url);
    const load1 = loadavg()[0] as number;
    clearInterval(timer);
    const txCount = (metrics1.txCount ?? 0) - (metrics0.txCount ?? 0);
    const txSum = (metrics1.txSum ?? 0) - (metrics0.txSum ?? 0);
    log('draining: waiting for the last acks and notifications');
    const drainEnd = Date.now() + 30_000;
    while (Date.now() < drainEnd && machines.some((m) => m.busy)) await sleep(50);
    await sleep(1000);

    let lost = 0;
    let doubled = 0;
    let unexpected = 0;
    for (const all of outcome.values()) {
      for (let i = 0; i <= 6; i++) {
        const b = (all >>> (3 * i)) & 7;
        const n = b >> 1;
        if (b & 1) {
          if (n === 0) lost++;
          else if (n > 1) doubled++;
        } else if (n > 0) unexpected++;
      }
    }

    // The store's view must agree with what the machines were told.
    const statsRes = await fetch(`${node.url}/payments/stats?appId=${APP}&minutes=5`);
    const stats = (await statsRes.json()) as { total: number; counts: Record<string, number> };
    // What earlier runs left in a --schema given.
    for (const [state, n] of Object.entries(statsBefore.counts))
      stats.counts[state] = (stats.counts[state] ?? 0) - n;
    stats.total -= statsBefore.total;
    const told = (status: string) => {
      const shift = 3 * (STATUS_BIT[status] ?? 6);
      let n = 0;
      for (const all of outcome.values()) if ((all >>> shift) & 1) n++;
      return n;
    };
    const ordersStarted = told('created');
    const finishedTold = told('succeeded') + told('failed');
    const finishedStored = (stats.counts.succeeded ?? 0) + (stats.counts.failed ?? 0);

    latencies.sort((a, b) => a - b);
    ackLatencies.sort((a, b) => a - b);
    const result = {
      scenario: 'payments',
      store,
      machines: machinesN,
      merchants: merchantsN,
      targetRate: rate,
      seconds: round(elapsed),
      connectSeconds: round(connectSeconds),
      sentPerSecond: Math.round(sentPerSecond),
      eventsPerSecond: Math.round(eventsPerSecond),
      reportToAppMs: {
        p50: round(percentile(latencies, 50)),
        p99: round(percentile(latencies, 99)),
        max: round(latencies.at(-1) ?? Number.NaN),
        samples: latencies.length,
      },
      ackMs: { p50: round(percentile(ackLatencies, 50)), p99: round(percentile(ackLatencies, 99)) },
      // 250 ms windows (by send time) whose worst report -> app latency was over 50 ms, and the five worst,
      // as [seconds since the first window, ms].
      slowWindows: {
        over50ms: [...worst.values()].filter((v) => v > 50).length,
        of: worst.size,
        worst: (() => {
          const first = Math.min(...worst.keys());
          return [...worst.entries()]
            .sort((a, b) => b[1] - a[1])
            .slice(0, 5)
            .map(([w, v]) => [round((w - first) / 4), round(v)]);
        })(),
      },
      // --series: the worst latency of every window, in order (to see whether the stalls are periodic).
      ...(series
        ? (() => {
            const first = Math.min(...worst.keys());
            const last = Math.max(...worst.keys());
            const all: number[] = [];
            for (let w = first; w <= last; w++) all.push(Math.round(worst.get(w) ?? 0));
            // The first window's start as a wall-clock time (to line the windows up with a log of Herald's).
            return {
              windowSeries: all,
              windowSeriesStartMs: Math.round(performance.timeOrigin + first * 250),
            };
          })()
        : {}),
      heraldCpuCores: round(cpu),
      // Share of the measured time Herald's main thread was runnable but waiting for a core (others
      // on the same cores: PostgreSQL, the load generator), and the share it ran.
      heraldMainWaitPct: round(((sched1.wait - sched0.wait) / 1e9 / elapsed) * 100),
      heraldMainRunPct: round(((sched1.run - sched0.run) / 1e9 / elapsed) * 100),
      heraldCpuMsPerEvent: round((cpu * 1000) / eventsPerSecond),
      postgresCpuCores: pgCpu === null ? null : round(pgCpu),
      postgresCpuMsPerEvent: pgCpu === null ? null : round((pgCpu * 1000) / eventsPerSecond),
      loadgenCpuCores: round((selfCpu.user + selfCpu.system) / 1e6 / elapsed),
      loadgenLoopP99Ms: round(selfLoop.percentile(99) / 1e6),
      loadgenLoopMaxMs: round(selfLoop.max / 1e6),
      transactionsPerSecond: round(txCount / elapsed),
      eventsPerTransaction: txCount > 0 ? round((eventsPerSecond * elapsed) / txCount) : null,
      transactionMs: txCount > 0 ? round((txSum / txCount) * 1000) : null,
      // Share of the measured window's store transactions that took longer than 20, 50 and 100 ms.
      transactionsOverMs: Object.fromEntries(
        [0.02, 0.05, 0.1].map((le) => {
          const at = (m: typeof metrics0) => m.txBuckets?.get(le) ?? 0;
          const within = at(metrics1) - at(metrics0);
          return [String(le * 1000), txCount > 0 ? round(((txCount - within) / txCount) * 100) : null];
        }),
      ),
      eventLoopP99Ms: metrics1.loopP99 === undefined ? null : round(metrics1.loopP99 * 1000),
      eventLoopMaxMs: metrics1.loopMax === undefined ? null : round(metrics1.loopMax * 1000),
      heraldGcMsPerSecond: round((((metrics1.gcSum ?? 0) - (metrics0.gcSum ?? 0)) * 1000) / elapsed),
      heraldMajorGcs: (metrics1.majorGcs ?? 0) - (metrics0.majorGcs ?? 0),
      // Sweep steps in the measured window: runs and average ms (waits for the store included).
      sweepMs: Object.fromEntries(
        Object.entries(metrics1.sweep ?? {}).flatMap(([step, v]) => {
          const was = metrics0.sweep?.[step] ?? { count: 0, sum: 0 };
          const n = v.count - was.count;
          return n > 0 ? [[step, { runs: n, avg: round(((v.sum - was.sum) / n) * 1000) }]] : [];
        }),
      ),
      // Embedded store turns in the measured window, by op: the ten that held it longest in total
      // (turns, average ms, turns over 25 and 250 ms).
      storeHold: Object.fromEntries(
        Object.entries(metrics1.hold ?? {})
          .map(([op, v]) => {
            const was = metrics0.hold?.[op] ?? { count: 0, sum: 0, over25: 0, over250: 0 };
            const n = v.count - was.count;
            const over = v.count + v.over25 - (was.count + was.over25);
            const over250 = v.count + v.over250 - (was.count + was.over250);
            return [
              op,
              { turns: n, ms: (v.sum - was.sum) * 1000, over25ms: over, over250ms: over250 },
            ] as const;
          })
          .filter(([, v]) => v.turns > 0)
          .sort((a, b) => b[1].ms - a[1].ms)
          .slice(0, 10)
          .map(([op, v]) => [
            op,
            { turns: v.turns, avgMs: round(v.ms / v.turns), over25ms: v.over25ms, over250ms: v.over250ms },
          ]),
      ),
      // Orders of the measured batches by source: cache hit, assumed new, read from the store, stale.
      orderCache: Object.fromEntries(
        ['hit', 'new', 'read', 'stale'].map((k) => [
          k,
          (metrics1.cache?.[k] ?? 0) - (metrics0.cache?.[k] ?? 0),
        ]),
      ),
      heraldHeapMb: metrics1.heap === undefined ? null : round(metrics1.heap / 2 ** 20),
      heraldRssMb: metrics1.rss === undefined ? null : round(metrics1.rss / 2 ** 20),
      loadAverage: [round(load0), round(load1)],
      transitions,
      duplicatesAnswered: duplicates,
      staleAnswered: stale,
      rejected,
      lost,
      doubled,
      unexpected,
      store_orders: stats.total,
      orders_told_created: ordersStarted,
      finished_told: finishedTold,
      finished_stored: finishedStored,
      ok:
        lost === 0 &&
        doubled === 0 &&
        unexpected === 0 &&
        rejected === 0 &&
        stats.total === ordersStarted &&
        finishedStored === finishedTold,
    };
    log(JSON.stringify(result));
    return result;
  } finally {
    for (const m of machines) m.client.close();
    for (const a of apps) a.close();
    await stopHeraldProcess(node, f.keep === true);
    if (schema && f.keep !== true && !givenSchema) {
      const c = new pg.Client({ connectionString: databaseUrl });
      await c.connect();
      await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await c.end();
    }
  }
}

// `tsx bench/payments.ts --rate 3000` runs it directly too.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  run(process.argv.slice(2)).then(
    (r) => {
      process.stdout.write(`${JSON.stringify(r)}\n`);
      process.exit(r.ok ? 0 : 1);
    },
    (err: unknown) => {
      process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
