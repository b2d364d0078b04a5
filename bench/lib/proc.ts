import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  createWriteStream,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
} from 'node:fs';
import { setPriority, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { collectGarbage } from './inspect.js';
import { freePort, sleep } from './util.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

/**
 * The V8 flags Herald is started with by `npm start` and the Dockerfile (keep the three in step): a
 * 64 MiB young generation. Notifications, receipts and history entries live for minutes, so with the
 * default 16 MiB more of them were promoted and the old generation grew, collected by major GCs whose
 * concurrent marking took both cores for 200-300 ms (see BENCHMARKS.md, payments). One V8 worker thread
 * (`--v8-pool-size=1`, Node's default is 4): the GC's helper threads then leave the other core to the
 * store (PGlite's worker, or PostgreSQL on the same machine) instead of taking both (payments p99 on
 * PostgreSQL 22-46 ms against 40-62 in 4 alternated pairs, embedded 53-70 against 68-88). The baseline and
 * limit servers keep Node's defaults.
 */
export const HERALD_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=64', '--v8-pool-size=1'];

export type ServerKind = 'herald' | 'baseline' | 'limit';
export const SERVER_KINDS: readonly ServerKind[] = ['herald', 'baseline', 'limit'];

/** CPU time (user + system, all threads) of a process in microseconds, from /proc/<pid>/stat. */
export function cpuMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) start at field 3.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  return ((utime + stime) * 1e6) / CLK_TCK;
}

/** User and system CPU time (all threads) of a process in microseconds, from /proc/<pid>/stat. */
export function cpuSplitMicros(pid: number): { user: number; system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: (Number(rest[11]) * 1e6) / CLK_TCK, system: (Number(rest[12]) * 1e6) / CLK_TCK };
}

/**
 * Write-type system calls a process has made (all threads: write, writev, send*), from `syscw` in
 * /proc/<pid>/io. Over a fan-out phase, nearly all of a server's are its socket writes, so their number per
 * delivery shows how many frames one write carries.
 */
export function writeSyscalls(pid: number): number {
  const m = /^syscw: (\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
  return m ? Number(m[1]) : Number.NaN;
}

/** Resident set size of a process in bytes, from /proc/<pid>/status. */
/**
 * Nanoseconds a thread has run and has waited on a run queue (runnable, not running), from
 * `/proc/<pid>/task/<tid>/schedstat`; the main thread when `tid` is not given. The wait tells a server
 * slowed by other processes on its cores from one slowed by its own work.
 */
export function schedNanos(pid: number, tid: number = pid): { run: number; wait: number } {
  try {
    const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').trim().split(' ');
    return { run: Number(run), wait: Number(wait) };
  } catch {
    return { run: Number.NaN, wait: Number.NaN };
  }
}

export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : Number.NaN;
}

/** Open file descriptors of a process. */
export function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return -1;
  }
}

const children = new Set<ChildProcess>();
let hooked = false;

/** Kills every server child synchronously: on exit, on error and on SIGINT/SIGTERM. */
function hookCleanup(): void {
  if (hooked) return;
  hooked = true;
  const killAll = () => {
    for (const c of children) {
      try {
        if (c.pid) process.kill(c.pid, 'SIGKILL');
      } catch {}
    }
    children.clear();
  };
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`bench: ${sig}, stopping servers\n`);
      killAll();
      process.exit(130);
    });
  }
}

function newestMtime(dir: string): number {
  let t = 0;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const s = statSync(p);
    t = Math.max(t, s.isDirectory() ? newestMtime(p) : s.mtimeMs);
  }
  return t;
}

/** Builds dist/ when it is missing or older than src/, so the bench never measures stale code. */
export function ensureBuilt(root: string = ROOT): void {
  const main = join(root, 'dist', 'src', 'main.js');
  if (existsSync(main) && statSync(main).mtimeMs >= newestMtime(join(root, 'src'))) return;
  process.stderr.write('bench: building Herald (tsc -p tsconfig.build.json)\n');
  try {
    execFileSync(
      process.execPath,
      [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'],
      {
        cwd: root,
        stdio: 'inherit',
      },
    );
  } catch {
    // tsc still emits JavaScript when it reports type errors (work in progress elsewhere in the tree).
    if (!existsSync(main)) throw new Error('the build of Herald failed');
    process.stderr.write('bench: tsc reported errors; measuring the JavaScript it emitted anyway\n');
  }
}

/**
 * How a bench starts Herald: built (`dist/src/main.js`, what `npm start` runs; built first when stale), or
 * from src/ through tsx when BENCH_FROM_SOURCE=1 (tsx's loader hooks and source maps cost start-up time and
 * make every error stack dearer, so figures from source are not the product's).
 */
export function heraldEntry(root: string = ROOT): string[] {
  if (process.env.BENCH_FROM_SOURCE === '1') return ['--import', 'tsx', join(root, 'src', 'main.ts')];
  ensureBuilt(root);
  return [join(root, 'dist', 'src', 'main.js')];
}

export interface ServerOptions {
  /** Extra environment (Herald settings such as COUNT_INTERVAL). */
  env?: Record<string, string>;
  /** Node flags, e.g. ['--cpu-prof', '--cpu-prof-dir=/tmp/prof']. */
  nodeFlags?: string[];
  /** Run Herald from src/ through tsx instead of dist/. */
  fromSource?: boolean;
  /** The Herald checkout to build and run (default: this repository), e.g. a snapshot of a commit. */
  heraldDir?: string;
  /** Scheduling priority of the server process (negative: ahead of other processes on a shared machine). */
  nice?: number;
  /** Open V8's inspector on a loopback port, so that the bench can ask for a full GC (`collectGarbage`). */
  inspect?: boolean;
}

export interface RunningServer {
  kind: ServerKind;
  pid: number;
  port: number;
  url: string;
  cpuMicros(): number;
  rssBytes(): number;
  /** herald_event_loop_delay_p99_seconds in ms (Herald only; resets Herald's histogram). */
  loopP99Ms(): Promise<number | null>;
  /** V8 young generation committed (both semi-spaces) in bytes, from `GET /metrics` (Herald only). */
  youngBytes(): Promise<number | null>;
  /** A full, memory-reducing GC of the server (started with `inspect`), then a second to settle. */
  collectGarbage(): Promise<void>;
  stop(): Promise<void>;
}

/** Starts one server under test as its own process on 127.0.0.1 and waits until it answers. */
export async function startServer(kind: ServerKind, opts: ServerOptions = {}): Promise<RunningServer> {
  hookCleanup();
  const port = await freePort();
  const flags = [...(kind === 'herald' ? HERALD_NODE_FLAGS : []), ...(opts.nodeFlags ?? [])];
  const inspectPort = opts.inspect ? await freePort() : 0;
  if (inspectPort) flags.push(`--inspect=127.0.0.1:${inspectPort}`);
  let args: string[];
  let dataDir: string | undefined;
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    NODE_ENV: 'production',
    ...opts.env,
  };
  if (kind === 'herald') {
    dataDir = mkdtempSync(join(tmpdir(), 'herald-bench-'));
    env.DATA_DIR = dataDir;
    const root = opts.heraldDir ?? ROOT;
    if (opts.fromSource) args = [...flags, '--import', 'tsx', join(root, 'src', 'main.ts')];
    else {
      ensureBuilt(root);
      args = [...flags, join(root, 'dist', 'src', 'main.js')];
    }
  } else {
    args = [...flags, '--import', 'tsx', join(ROOT, 'bench', 'servers', `${kind}.ts`)];
  }
  const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let output = '';
  const keep = (b: Buffer) => {
    output = (output + b.toString()).slice(-4000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  // BENCH_SERVER_LOG_DIR: every server's whole output (e.g. with `--node-flags=--trace-gc`) in a file.
  const logDir = process.env.BENCH_SERVER_LOG_DIR;
  if (logDir && child.pid) {
    const file = createWriteStream(join(logDir, `${kind}-${child.pid}.log`));
    child.stdout?.pipe(file);
    child.stderr?.pipe(file);
  }
  let exited = false;
  child.on('exit', () => {
    exited = true;
    children.delete(child);
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) throw new Error(`${kind} exited during start-up:\n${output}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${kind} did not answer within 60 s:\n${output}`);
    }
    try {
      const res = await fetch(`${url}/healthz`);
      if (res.ok) break;
    } catch {}
    await sleep(100);
  }
  const pid = child.pid as number;
  if (opts.nice) setPriority(pid, opts.nice);
  return {
    kind,
    pid,
    port,
    url,
    cpuMicros: () => cpuMicros(pid),
    rssBytes: () => rssBytes(pid),
    async loopP99Ms() {
      if (kind !== 'herald') return null;
      const text = await (await fetch(`${url}/metrics`)).text();
      const m = /^herald_event_loop_delay_p99_seconds (\S+)$/m.exec(text);
      return m ? Number(m[1]) * 1000 : null;
    },
    async youngBytes() {
      if (kind !== 'herald') return null;
      const text = await (await fetch(`${url}/metrics`)).text();
      const m = /^nodejs_heap_space_size_total_bytes\{space="new"\} (\S+)$/m.exec(text);
      return m ? Number(m[1]) : null;
    },
    async collectGarbage() {
      if (!inspectPort) throw new Error(`${kind} was started without the inspector (--gc)`);
      await collectGarbage(inspectPort);
      await sleep(1000);
    },
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        const end = Date.now() + 15_000;
        while (!exited && Date.now() < end) await sleep(50);
        if (!exited) child.kill('SIGKILL');
        while (!exited) await sleep(20);
      }
      if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Busy and total jiffies of the whole machine, from /proc/stat. */
export function machineJiffies(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] as string;
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: total - idle, total };
}

/**
 * Measures the CPU used by processes other than the server under test and this bench process, as a
 * percentage of one core, between `begin()` and `end()`: a noise indicator for the run.
 */
export function othersMeter(serverPid: number): { end(): number } {
  const m0 = machineJiffies();
  const s0 = cpuMicros(serverPid);
  const b0 = cpuMicros(process.pid);
  const t0 = performance.now();
  return {
    end() {
      const m1 = machineJiffies();
      const busyUs = ((m1.busy - m0.busy) * 1e6) / CLK_TCK;
      const ours = cpuMicros(serverPid) - s0 + (cpuMicros(process.pid) - b0);
      const wallUs = (performance.now() - t0) * 1000;
      return Math.max(0, Math.round(((busyUs - ours) / wallUs) * 100));
    },
  };
}

/**
 * Waits (at most `maxMs`) until the other processes on the machine use less than `pct` % of one core
 * over a second, so that a figure is not taken while someone else's test suite runs. Returns the last
 * reading.
 */
export async function waitQuiet(pct: number, maxMs: number, log: (m: string) => void): Promise<number> {
  const end = Date.now() + maxMs;
  let said = false;
  for (;;) {
    const m0 = machineJiffies();
    const b0 = cpuMicros(process.pid);
    await sleep(1000);
    const m1 = machineJiffies();
    const busy = ((m1.busy - m0.busy) * 1e6) / CLK_TCK - (cpuMicros(process.pid) - b0);
    const others = Math.round(busy / 1e4);
    if (others < pct || Date.now() > end) {
      if (said) log(`machine quiet enough (others ${others}% of a core)`);
      return others;
    }
    if (!said) log(`waiting for other processes to calm down (${others}% of a core busy)`);
    said = true;
  }
}

/** CPU ms of every postgres process (PostgreSQL server and backends) on this machine, per pid. */
export function postgresCpu(): Map<string, number> {
  const out = new Map<string, number>();
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (!stat.includes('(postgres)')) continue;
      const fields = (stat.split(') ')[1] ?? '').split(' ');
      // utime + stime, and cutime + cstime: the postmaster's include the backends that exited (a pool
      // closing an idle connection during a run took its backend's CPU out of the sum).
      const ticks = [11, 12, 13, 14].reduce((n, i) => n + Number(fields[i]), 0);
      out.set(pid, (ticks * 1000) / CLK_TCK);
    } catch {
      // the process ended
    }
  }
  return out;
}

/** CPU ms the postgres processes used since `before` (those that ended meanwhile through the postmaster). */
export function postgresCpuSince(before: Map<string, number>): number {
  let total = 0;
  const now = postgresCpu();
  for (const [pid, ms] of now) total += ms - (before.get(pid) ?? 0);
  // A backend that ended is now in its postmaster's children time, with what it had used before.
  for (const [pid, ms] of before) if (!now.has(pid)) total -= ms;
  return total;
}
