import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { pingStore } from './ping.js';
import { type Queryable, type QueryResult, type Statement, type Store, statement } from './types.js';

interface WorkerInit {
  dir: string;
  schema: string;
  templatePath: string | undefined;
  settings: Record<string, string>;
}

/**
 * PostgreSQL settings of the embedded store, on top of PGlite's (which already runs without fsync: its
 * writes reach the operating system's cache, so a killed process loses nothing committed; a power cut may lose
 * what the system had not written yet, or damage the folder).
 * - `wal_init_zero=off`: a new 16 MB WAL segment is not first filled with zeros. Under the payment intake
 *   (~4.5 MB of WAL a second at 3,000 events/s) that fill held a batch write for 25-100 ms every ~3 s
 *   (`npm run bench -- payments --series`: the worst latency of a 250 ms window peaked at that period).
 * - `full_page_writes=off`: after a checkpoint, the first change of each page would log the whole page,
 *   against pages torn by a crash in the middle of their write. PGlite writes a page with one `write`
 *   call to the operating system, which a killed process cannot tear, and what a power cut can do is
 *   already uncovered without fsync; the page images doubled the WAL written after each checkpoint.
 * - `max_wal_size`, `min_wal_size`: how much finished WAL is kept for reuse after a checkpoint.
 */
export const EMBEDDED_SETTINGS: Readonly<Record<string, string>> = {
  wal_init_zero: 'off',
  full_page_writes: 'off',
  max_wal_size: '512MB',
  min_wal_size: '64MB',
};

/**
 * When the embedded store checkpoints. PGlite runs PostgreSQL as a single process, without the
 * checkpointer that would do it on its own: its WAL grew without end while a node ran (1.1 GB in
 * 200 s of payment intake, `npx tsx bench/tools/wal-cost.mts --seconds 200`), to be replayed in full
 * after a crash. A `CHECKPOINT` holds the store while it writes the changed pages (60-105 ms after
 * 128 MiB of WAL, every ~30 s at 3,000 events/s; 20-50 ms after 32 MiB, every ~8 s), so it runs when the
 * WAL written since the last one passes `walBytes`, or after `intervalMs` when any was written; checked
 * every `checkMs`.
 */
export interface CheckpointPolicy {
  walBytes: number;
  intervalMs: number;
  checkMs: number;
}

export const DEFAULT_CHECKPOINTS: CheckpointPolicy = {
  walBytes: 128 * 1024 * 1024,
  intervalMs: 5 * 60_000,
  checkMs: 10_000,
};

/** WAL written since the last checkpoint began (its redo point), in bytes. */
const WAL_SINCE_CHECKPOINT = statement(
  'wal_since_checkpoint',
  'SELECT (pg_current_wal_insert_lsn() - (pg_control_checkpoint()).redo_lsn)::float8 AS bytes',
);

/** What the checkpointer did (for metrics). */
export interface CheckpointStats {
  checkpoints: number;
  failures: number;
  /** WAL written since the last checkpoint, as of the last check. */
  walBytes: number;
  lastMs: number;
}

export interface EmbeddedOptions {
  settings?: Record<string, string>;
  checkpoints?: CheckpointPolicy;
}

type WorkerRequest =
  | { id: number; op: 'query'; sql: string; params: unknown[]; name?: string }
  | { id: number; op: 'exec'; sql: string }
  | { id: number; op: 'close' };

type WorkerResponse =
  | { id: number; ok: true; rows: unknown[]; rowCount: number }
  | { id: number; ok: false; message: string; code?: string; detail?: string }
  | { id: 0; ready: true; ms: number }
  | { id: 0; fatal: string };

/** An error raised by SQL, with PostgreSQL's SQLSTATE code when there is one. */
export class SqlError extends Error {
  constructor(
    message: string,
    readonly code?: string,
    readonly detail?: string,
  ) {
    super(message);
    this.name = 'SqlError';
  }
}

/**
 * What one turn on the embedded store's single connection cost: `op` names it (a prepared statement's
 * name, `transaction`, `exec`, or the verb and first table of an unnamed statement), `waitMs` is the time
 * it queued behind other turns, `holdMs` the time it held the connection (a transaction's whole span,
 * main-thread work between its statements included).
 */
export type StoreTurnObserver = (op: string, waitMs: number, holdMs: number) => void;

/** A short, bounded name for an unnamed statement: its verb and first table (`select payment_orders`). */
export function statementLabel(sql: string): string {
  const verb = /^\s*(\w+)/.exec(sql)?.[1]?.toLowerCase() ?? 'sql';
  const table =
    /\b(?:FROM|INTO|UPDATE|TABLE|VACUUM)\s+(?:ONLY\s+|IF\s+(?:NOT\s+)?EXISTS\s+)?"?([a-z_][a-z0-9_]*)/i.exec(
      sql,
    )?.[1];
  return table ? `${verb} ${table.toLowerCase()}` : verb;
}

class Mutex {
  private tail: Promise<void> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn);
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}

function pgliteVersion(): string {
  try {
    const require = createRequire(import.meta.url);
    let dir = dirname(require.resolve('@electric-sql/pglite'));
    while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
    return (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** Refuses a second live process on the same data folder: PGlite is single-process. */
function takeLock(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const lock = join(dir, 'herald.lock');
  if (existsSync(lock)) {
    const pid = Number(readFileSync(lock, 'utf8').trim());
    let alive = false;
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid) {
      try {
        process.kill(pid, 0);
        alive = true;
      } catch {
        alive = false;
      }
    }
    if (alive) {
      throw new Error(
        `DATA_DIR ${dir} is in use by process ${pid}; the embedded store serves one process. ` +
          'Use another DATA_DIR, or DATABASE_URL for several nodes.',
      );
    }
  }
  writeFileSync(lock, String(process.pid));
  return lock;
}

/**
 * The embedded store: PGlite in a worker thread, data under `<dataDir>/pg`. One connection, so
 * statements are serialised; a transaction holds the connection until it ends.
 */
export class EmbeddedStore implements Store {
  readonly kind = 'embedded' as const;
  private readonly worker: Worker;
  private readonly pending = new Map<
    number,
    { resolve: (r: QueryResult<unknown>) => void; reject: (e: Error) => void }
  >();
  private nextId = 1;
  private readonly mutex = new Mutex();
  private closed = false;
  private readonly lockFile: string;
  private observer: StoreTurnObserver | undefined;
  private readonly labels = new Map<string, string>();
  private readonly checkpointTimer: NodeJS.Timeout;
  private checkpointRunning = false;
  private lastCheckpoint = Date.now();
  readonly checkpointStats: CheckpointStats = { checkpoints: 0, failures: 0, walBytes: 0, lastMs: 0 };

  private constructor(
    worker: Worker,
    lockFile: string,
    private readonly checkpoints: CheckpointPolicy,
  ) {
    this.worker = worker;
    this.lockFile = lockFile;
    this.checkpointTimer = setInterval(() => void this.checkpointIfDue(), checkpoints.checkMs);
    this.checkpointTimer.unref();
    worker.on('message', (msg: WorkerResponse) => {
      if (!('ok' in msg)) return;
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.ok) p.resolve({ rows: msg.rows, rowCount: msg.rowCount });
      else p.reject(new SqlError(msg.message, msg.code, msg.detail));
    });
    worker.on('error', (err) => this.failAll(err));
    worker.on('exit', () => this.failAll(new Error('embedded store worker exited')));
  }

  static async open(dataDir: string, schema: string, options: EmbeddedOptions = {}): Promise<EmbeddedStore> {
    const dir = resolve(dataDir);
    const lockFile = takeLock(dir);
    const workerUrl = new URL('./pglite-worker.js', import.meta.url);
    const init: WorkerInit = {
      dir: join(dir, 'pg'),
      schema,
      templatePath: join(tmpdir(), `herald-pglite-${pgliteVersion()}.tar`),
      settings: { ...EMBEDDED_SETTINGS, ...options.settings },
    };
    const worker = new Worker(workerUrl, { workerData: init });
    try {
      await new Promise<void>((resolveReady, reject) => {
        const onMsg = (msg: WorkerResponse) => {
          if (msg.id !== 0) return;
          worker.off('message', onMsg);
          if ('fatal' in msg) reject(new Error(`embedded store failed to open ${init.dir}: ${msg.fatal}`));
          else resolveReady();
        };
        worker.on('message', onMsg);
        worker.once('error', reject);
        worker.once('exit', (code) => reject(new Error(`embedded store worker exited with code ${code}`)));
      });
    } catch (err) {
      await worker.terminate();
      rmSync(lockFile, { force: true });
      throw err;
    }
    return new EmbeddedStore(worker, lockFile, options.checkpoints ?? DEFAULT_CHECKPOINTS);
  }

  /** Checkpoints when enough WAL was written, or some and long enough ago (see CheckpointPolicy). */
  async checkpointIfDue(): Promise<boolean> {
    if (this.closed || this.checkpointRunning) return false;
    this.checkpointRunning = true;
    try {
      const r = await this.query<{ bytes: number }>(WAL_SINCE_CHECKPOINT);
      const bytes = Number(r.rows[0]?.bytes ?? 0);
      this.checkpointStats.walBytes = bytes;
      // A checkpoint's own record is a few hundred bytes: more than 64 KB means real writes since.
      const due =
        bytes >= this.checkpoints.walBytes ||
        (bytes > 65_536 && Date.now() - this.lastCheckpoint >= this.checkpoints.intervalMs);
      if (!due) return false;
      const start = performance.now();
      await this.query('CHECKPOINT');
      this.checkpointStats.lastMs = performance.now() - start;
      this.checkpointStats.checkpoints++;
      this.checkpointStats.walBytes = 0;
      this.lastCheckpoint = Date.now();
      return true;
    } catch {
      // A closed store ends the timer; a failed checkpoint is tried again at the next check.
      if (!this.closed) this.checkpointStats.failures++;
      return false;
    } finally {
      this.checkpointRunning = false;
    }
  }

  private failAll(err: Error): void {
    clearInterval(this.checkpointTimer);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.closed = true;
  }

  private send(req: Omit<WorkerRequest, 'id'> & { op: WorkerRequest['op'] }): Promise<QueryResult<unknown>> {
    if (this.closed) return Promise.reject(new SqlError('the embedded store is closed'));
    const id = this.nextId++;
    return new Promise((resolvePromise, reject) => {
      this.pending.set(id, { resolve: resolvePromise, reject });
      this.worker.postMessage({ ...req, id } as WorkerRequest);
    });
  }

  private raw<T>(sql: string | Statement, params: readonly unknown[] = []): Promise<QueryResult<T>> {
    // A Statement is prepared in the worker under its name (parsed once; planned at every run).
    const req =
      typeof sql === 'string'
        ? { op: 'query', sql, params: [...params] }
        : { op: 'query', sql: sql.text, params: [...params], name: sql.name };
    return this.send(req as WorkerRequest) as Promise<QueryResult<T>>;
  }

  /** Reports every turn on the connection (metrics); one observer. */
  observe(observer: StoreTurnObserver | undefined): void {
    this.observer = observer;
  }

  /** Runs `fn` when the connection is free, timed for the observer. */
  private turn<T>(op: () => string, fn: () => Promise<T>): Promise<T> {
    const observer = this.observer;
    if (!observer) return this.mutex.run(fn);
    const queued = performance.now();
    return this.mutex.run(async () => {
      const start = performance.now();
      try {
        return await fn();
      } finally {
        observer(op(), start - queued, performance.now() - start);
      }
    });
  }

  private label(sql: string | Statement): string {
    if (typeof sql !== 'string') return sql.name;
    let l = this.labels.get(sql);
    if (l === undefined) {
      l = statementLabel(sql);
      // Texts are constants of the code (values go in parameters); bounded all the same.
      if (this.labels.size < 1000) this.labels.set(sql, l);
    }
    return l;
  }

  query<T = Record<string, unknown>>(
    sql: string | Statement,
    params: readonly unknown[] = [],
  ): Promise<QueryResult<T>> {
    return this.turn(
      () => this.label(sql),
      () => this.raw<T>(sql, params),
    );
  }

  /** Runs several statements separated by semicolons (no parameters). */
  exec(sql: string): Promise<void> {
    return this.turn(
      () => 'exec',
      async () => {
        await this.send({ op: 'exec', sql } as WorkerRequest);
      },
    );
  }

  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    // Named after its first statement: `transaction select payment_outbox_batches`.
    let first = '';
    return this.turn(
      () => `transaction ${first}`.trimEnd(),
      async () => {
        await this.raw('BEGIN');
        const tx: Queryable = {
          query: (sql, params) => {
            if (first === '' && this.observer) first = this.label(sql);
            return this.raw(sql, params ?? []);
          },
        };
        try {
          const out = await fn(tx);
          await this.raw('COMMIT');
          return out;
        } catch (err) {
          await this.raw('ROLLBACK').catch(() => undefined);
          throw err;
        }
      },
    );
  }

  ping(timeoutMs = 2000): Promise<void> {
    return pingStore((sql) => this.query(sql), timeoutMs);
  }

  async close(): Promise<void> {
    clearInterval(this.checkpointTimer);
    if (this.closed) return;
    try {
      await this.mutex.run(() => this.send({ op: 'close' } as WorkerRequest));
    } catch {
      // already gone
    }
    this.closed = true;
    await this.worker.terminate();
    rmSync(this.lockFile, { force: true });
  }
}
