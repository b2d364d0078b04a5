/**
 * Merchant webhook benchmark: `npm run bench -- webhooks [--n 20000] [--store embedded|postgres]`.
 *
 * One fast merchant, 20 slow ones (3 s per answer) and 5 failing ones (HTTP 500), all local HTTP servers in
 * this process; Herald runs as its own process (built: `node dist/src/main.js`, as `npm start` runs it;
 * `BENCH_FROM_SOURCE=1` runs src/ through tsx). Each phase first fills the
 * queue with the dispatcher off (WEBHOOK_DISPATCH=false, also measuring intake), then restarts the node with
 * the dispatcher on and measures how fast the queue drains to the fast merchant:
 *
 *   fast-only   N webhooks to the fast merchant
 *   mixed       the same N plus a backlog for the slow and failing merchants queued before them
 *
 * Figures: intake/s, fast deliveries/s in both phases, the mixed/fast-only ratio (the cost of the slow and
 * failing merchants), and Herald's event-loop delay p99 (max and median of its per-second gauge).
 * Flags: --n (fast webhooks, 20000) --slow-backlog (per slow merchant, 30) --failing-backlog (per failing
 * merchant, 30) --store embedded|postgres --database-url (default TEST_DATABASE_URL or the local server)
 * --intake-concurrency (64) --phases fast-only,mixed --env KEY=VALUE,... (Herald settings)
 * --cpu-prof <dir> (profile the Herald process of each drain phase) --herald-dir <dir> (run another checkout,
 * e.g. bench/tools/snapshot.sh of an older commit, for a before/after in one session).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { CLK_TCK, HERALD_NODE_FLAGS, heraldEntry, postgresCpu, postgresCpuSince } from './lib/proc.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
type Flags = Record<string, string | boolean | string[]>;

function parse(argv: readonly string[]): Flags {
  const out: Flags = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else if (argv[i + 1] !== undefined && !(argv[i + 1] as string).startsWith('--'))
      out[a.slice(2)] = argv[++i] as string;
    else out[a.slice(2)] = true;
  }
  return out;
}
const num = (f: Flags, k: string, d: number) => (typeof f[k] === 'string' ? Number(f[k]) : d);
const str = (f: Flags, k: string, d: string) => (typeof f[k] === 'string' ? (f[k] as string) : d);
const log = (m: string) => process.stderr.write(`[webhooks] ${m}\n`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** `250ms`, `3s`, `1m` or a number of ms, as Herald's duration settings. */
function durationMs(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  if (!m) throw new Error(`not a duration: ${text}`);
  return Number(m[1]) * (m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 1);
}

interface Merchant {
  server: Server;
  url: string;
  times: number[];
}

async function merchant(handle: (res: import('node:http').ServerResponse) => void): Promise<Merchant> {
  const times: number[] = [];
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      times.push(performance.now());
      handle(res);
    });
  });
  server.keepAliveTimeout = 60_000;
  server.maxRequestsPerSocket = 0;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/notify`, times };
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const p = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

interface Node {
  child: ChildProcess;
  base: string;
}

/** The Herald checkout to run (`--herald-dir`, e.g. a snapshot of an older commit); this one by default. */
let heraldDir = ROOT;

async function startNode(env: Record<string, string>, nodeFlags: string[] = []): Promise<Node> {
  const port = await freePort();
  const childEnv: NodeJS.ProcessEnv = {
    ...process.env,
    ...env,
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
  };
  if (!env.DATABASE_URL) delete childEnv.DATABASE_URL;
  for (const k of ['REDIS_URL', 'HERALD_CONFIG', 'HERALD_APPS', 'ADMIN_TOKEN']) delete childEnv[k];
  const child = spawn(process.execPath, [...HERALD_NODE_FLAGS, ...nodeFlags, ...heraldEntry(heraldDir)], {
    cwd: ROOT,
    env: childEnv,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const base = `http://127.0.0.1:${port}`;
  const end = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`herald exited with ${child.exitCode} during start-up`);
    try {
      if ((await fetch(`${base}/healthz`)).ok) return { child, base };
    } catch {
      // not yet
    }
    if (Date.now() > end) throw new Error('herald did not start within 120 s');
    await sleep(100);
  }
}

async function stopNode(n: Node): Promise<void> {
  const exited = new Promise((r) => n.child.once('exit', r));
  n.child.kill('SIGTERM');
  await exited;
}

/** CPU time in microseconds of a process (all threads) and of its main thread, from /proc. */
function cpuOf(pid: number): { total: number; main: number } {
  const ticks = (stat: string) => {
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(rest[11]) + Number(rest[12])) * 1e6) / CLK_TCK;
  };
  try {
    return {
      total: ticks(readFileSync(`/proc/${pid}/stat`, 'utf8')),
      main: ticks(readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8')),
    };
  } catch {
    return { total: Number.NaN, main: Number.NaN };
  }
}

/** POSTs every item with `concurrency` requests in flight; returns items per second. */
async function intake(base: string, items: { orderNo: string; notifyUrl: string }[], concurrency: number) {
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) {
        const it = items[next++] as { orderNo: string; notifyUrl: string };
        const res = await fetch(`${base}/merchant-notify`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ ...it, payload: { orderNo: it.orderNo, status: 'paid', amount: 99.99 } }),
        });
        if (res.status !== 202) throw new Error(`intake answered ${res.status}: ${await res.text()}`);
        await res.arrayBuffer();
      }
    }),
  );
  return items.length / ((performance.now() - started) / 1000);
}

/** Samples Herald's per-scrape event-loop p99 gauge every second until stopped. */
function loopSampler(base: string) {
  const samples: number[] = [];
  let on = true;
  const done = (async () => {
    while (on) {
      await sleep(1000);
      try {
        const text = await (await fetch(`${base}/metrics`)).text();
        const m = /^herald_event_loop_delay_p99_seconds (\S+)$/m.exec(text);
        if (m) samples.push(Number(m[1]) * 1000);
      } catch {
        // node busy or gone
      }
    }
  })();
  return {
    async stop() {
      on = false;
      await done;
      const sorted = [...samples].sort((a, b) => a - b);
      return {
        maxMs: sorted.length ? Number((sorted[sorted.length - 1] as number).toFixed(2)) : null,
        medianMs: sorted.length ? Number((sorted[Math.floor(sorted.length / 2)] as number).toFixed(2)) : null,
        /** Every per-second sample in order, to tell a start-up spike from one during the drain. */
        samples: samples.map((x) => Number(x.toFixed(1))),
      };
    },
  };
}

export async function run(
  args: string[] | Record<string, unknown> = process.argv.slice(2),
): Promise<Record<string, unknown>> {
  const standalone = Array.isArray(args);
  const f: Flags = standalone ? parse(args) : (args as Flags);
  const n = num(f, 'n', 20_000);
  const slowBacklog = num(f, 'slow-backlog', 30);
  const failingBacklog = num(f, 'failing-backlog', 30);
  const concurrency = num(f, 'intake-concurrency', 64);
  const store = str(f, 'store', 'embedded');
  const dbUrl = str(
    f,
    'database-url',
    process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
  );
  if (store !== 'embedded' && store !== 'postgres') throw new Error('--store is embedded or postgres');
  const profDir = str(f, 'cpu-prof', '');
  heraldDir = str(f, 'herald-dir', ROOT);
  const drainFlags = profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [];
  const extraEnv: Record<string, string> = {};
  for (const kv of str(f, 'env', '').split(',').filter(Boolean)) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new Error(`--env takes KEY=VALUE,...; got ${kv}`);
    extraEnv[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const phases = str(f, 'phases', 'fast-only,mixed').split(',');

  const fast = await merchant((res) => res.end('success'));
  const slow = await Promise.all(
    Array.from({ length: 20 }, () => merchant((res) => setTimeout(() => res.end('success'), 3000))),
  );
  const failing = await Promise.all(
    Array.from({ length: 5 }, () =>
      merchant((res) => {
        res.statusCode = 500;
        res.end('error');
      }),
    ),
  );
  const dir = mkdtempSync(join(tmpdir(), 'herald-bench-webhooks-'));
  const schemas: string[] = [];
  const common: Record<string, string> = {
    WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true',
    WEBHOOK_RETRY_DELAYS: '1s,2s,4s',
    WEBHOOK_POLL_INTERVAL: '50ms',
    ...extraEnv,
  };

  const phase = async (name: string, withOthers: boolean) => {
    const env: Record<string, string> = { ...common, DATA_DIR: join(dir, name) };
    if (store === 'postgres') {
      const schema = `bench_webhooks_${name.replace(/\W/g, '_')}_${process.pid}`;
      schemas.push(schema);
      env.DATABASE_URL = dbUrl;
      env.DATABASE_SCHEMA = schema;
    }
    const items: { orderNo: string; notifyUrl: string }[] = [];
    if (withOthers) {
      for (const m of slow)
        for (let i = 0; i < slowBacklog; i++) items.push({ orderNo: `S${items.length}`, notifyUrl: m.url });
      for (const m of failing) {
        for (let i = 0; i < failingBacklog; i++)
          items.push({ orderNo: `E${items.length}`, notifyUrl: m.url });
      }
    }
    for (let i = 0; i < n; i++) items.push({ orderNo: `F${name}${i}`, notifyUrl: fast.url });
    log(`${name}: filling the queue with ${items.length} webhooks (dispatcher off)`);
    let node = await startNode({ ...env, WEBHOOK_DISPATCH: 'false' });
    const intakePerSec = await intake(node.base, items, concurrency);
    await stopNode(node);
    fast.times.length = 0;
    log(`${name}: intake ${Math.round(intakePerSec)}/s; draining with the dispatcher on`);
    node = await startNode(env, drainFlags);
    const sampler = loopSampler(node.base);
    const end = Date.now() + 600_000;
    // Herald's CPU time (all threads, and its main thread alone) from the first fast delivery to the
    // last: a figure that depends much less on what else the shared machine runs than a rate does.
    let cpuStart: { total: number; main: number; at: number } | undefined;
    let pgStart: Map<string, number> | undefined;
    const pid = node.child.pid as number;
    while (fast.times.length < n && Date.now() < end) {
      if (!cpuStart && fast.times.length > 0) {
        cpuStart = { ...cpuOf(pid), at: fast.times.length };
        if (store === 'postgres') pgStart = postgresCpu();
      }
      await sleep(50);
    }
    const cpuEnd = cpuOf(pid);
    const pgMs = pgStart ? postgresCpuSince(pgStart) : null;
    const loop = await sampler.stop();
    await stopNode(node);
    const t = fast.times;
    const seconds = t.length > 1 ? ((t[t.length - 1] as number) - (t[0] as number)) / 1000 : Number.NaN;
    const perSec = t.length / seconds;
    // The rate once the dispatcher's slow start (WEBHOOK_SLOW_START, 3 s by default, during which the
    // concurrency limits grow from a tenth to their full value) is over, up to the last 250 ms (the queue
    // running dry): what a node that has been running delivers.
    const ramp = durationMs(common.WEBHOOK_SLOW_START ?? '3s');
    const first = t[0] as number;
    const last = t[t.length - 1] as number;
    const from = first + ramp;
    const to = last - 250;
    const steady =
      to - from >= 1000 ? t.filter((x) => x >= from && x <= to).length / ((to - from) / 1000) : null;
    log(
      `${name}: ${t.length} fast deliveries at ${Math.round(perSec)}/s, event-loop p99 max ${loop.maxMs} ms`,
    );
    const counted = t.length - (cpuStart?.at ?? 0);
    const perK = (us: number) => Math.round(us / 1000 / (counted / 1000));
    return {
      intakePerSec: Math.round(intakePerSec),
      heraldCpuMsPer1000: cpuStart ? perK(cpuEnd.total - cpuStart.total) : null,
      heraldMainThreadCpuMsPer1000: cpuStart ? perK(cpuEnd.main - cpuStart.main) : null,
      // Every postgres process of the machine over the same window (PostgreSQL store only).
      postgresCpuMsPer1000: pgMs === null ? null : perK(pgMs * 1000),
      fastDelivered: t.length,
      fastPerSec: Math.round(perSec),
      fastPerSecAfterSlowStart: steady === null ? null : Math.round(steady),
      loopP99MaxMs: loop.maxMs,
      loopP99MedianMs: loop.medianMs,
      loopP99Samples: loop.samples,
    };
  };

  try {
    const alone = phases.includes('fast-only') ? await phase('fast-only', false) : null;
    const mixed = phases.includes('mixed') ? await phase('mixed', true) : null;
    const result: Record<string, unknown> = {
      scenario: 'webhooks',
      store,
      n,
      slowMerchants: slow.length,
      slowBacklogEach: slowBacklog,
      failingMerchants: failing.length,
      failingBacklogEach: failingBacklog,
      fastOnly: alone,
      mixed,
      mixedVsFastOnly: mixed && alone ? Number((mixed.fastPerSec / alone.fastPerSec).toFixed(3)) : null,
      loadAverage: loadavg().map((x) => Number(x.toFixed(2))),
      slowMerchantRequests: slow.reduce((s, m) => s + m.times.length, 0),
      failingMerchantRequests: failing.reduce((s, m) => s + m.times.length, 0),
    };
    if (standalone) process.stdout.write(`${JSON.stringify(result)}\n`);
    return result;
  } finally {
    for (const m of [fast, ...slow, ...failing]) {
      m.server.closeAllConnections();
      m.server.close();
    }
    rmSync(dir, { recursive: true, force: true });
    if (schemas.length > 0) {
      const c = new pg.Client({ connectionString: dbUrl });
      await c.connect();
      for (const s of schemas) await c.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
      await c.end();
    }
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  run(process.argv.slice(2)).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
