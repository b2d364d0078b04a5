import pg from 'pg';
import { SqlError } from './embedded.js';
import { pingStore } from './ping.js';
import type { Queryable, QueryResult, Statement, Store } from './types.js';

const INT8 = 20;

const SQLSTATE = /^[0-9A-Z]{5}$/;

/** What node-postgres runs: plain text, or a named (prepared) statement. */
/**
 * A statement for node-postgres: named (prepared once per connection) when it is a Statement, except a
 * `plan: 'custom'` one on a connection that may cache a generic plan (`custom` false): that one goes
 * unnamed, parsed and planned each time.
 */
function toPg(sql: string | Statement, params: readonly unknown[], custom = false): pg.QueryConfig {
  if (typeof sql === 'string' || (sql.plan === 'custom' && !custom)) {
    return { text: typeof sql === 'string' ? sql : sql.text, values: params as unknown[] };
  }
  return { name: sql.name, text: sql.text, values: params as unknown[] };
}

/** Whether an error comes from PostgreSQL or the connection to it (not from the caller's code). */
function isStoreFailure(err: unknown): boolean {
  if (err instanceof pg.DatabaseError) return true;
  const e = err as { syscall?: unknown; message?: unknown } | undefined;
  return (
    typeof e?.syscall === 'string' ||
    /connection terminated|timeout exceeded when trying to connect|connection error|not queryable/i.test(
      String(e?.message ?? ''),
    )
  );
}

/**
 * Errors of the pool as SqlError with a SQLSTATE. Failures below SQL (ECONNREFUSED, ECONNRESET, a
 * connection terminated, a connect timeout) carry no SQLSTATE: they become `08006` (connection failure),
 * so every caller reads them as "the store is unavailable".
 */
function wrap(err: unknown): Error {
  const e = err as Error & { code?: string; detail?: string };
  const code = typeof e.code === 'string' && SQLSTATE.test(e.code) ? e.code : '08006';
  return new SqlError(e.message, code, e.detail);
}

/** PostgreSQL through a `pg` connection pool; every connection has the Herald schema on its search path. */
export class PostgresStore implements Store {
  readonly kind = 'postgres' as const;

  /** Connections for `plan: 'custom'` statements, made at their first use. */
  private customPool: pg.Pool | undefined;

  private constructor(
    private readonly pool: pg.Pool,
    private readonly makePool: (max: number, options?: string) => pg.Pool,
  ) {}

  static async open(url: string, schema: string, opts: { max?: number } = {}): Promise<PostgresStore> {
    const types = {
      getTypeParser: (oid: number, format?: 'text' | 'binary') =>
        oid === INT8 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format),
    };
    const makePool = (max: number, options = '') => {
      const p = new pg.Pool({
        connectionString: url,
        max,
        options: `-c search_path="${schema}",public${options}`,
        connectionTimeoutMillis: 5000,
        idleTimeoutMillis: 30_000,
        types: types as pg.CustomTypesConfig,
      });
      // An idle client that loses its connection emits here; the pool replaces it. Without a listener
      // the process would crash.
      p.on('error', () => undefined);
      return p;
    };
    const pool = makePool(opts.max ?? 10);
    try {
      await pool.query(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
    } catch (err) {
      // Several nodes may race to create the schema; the loser sees a unique violation.
      const code = (err as { code?: string }).code;
      if (code !== '23505' && code !== '42P06') {
        await pool.end().catch(() => undefined);
        throw wrap(err);
      }
    }
    return new PostgresStore(pool, makePool);
  }

  /**
   * The pool of `plan: 'custom'` statements: prepared (no parse per run) but planned at every run. A plan
   * cached while a table was small kept its sequential scans: the payment write went from 3-4 ms to 45 ms
   * (`npm run bench -- payments --store postgres`). Set for these connections only: the webhook
   * statements gain from their generic plans (PostgreSQL CPU per 1,000 deliveries 123 with them, 141-171
   * with every statement planned each time, `npm run bench -- webhooks --store postgres`).
   */
  private custom(): pg.Pool {
    this.customPool ??= this.makePool(4, ' -c plan_cache_mode=force_custom_plan');
    return this.customPool;
  }

  async query<T = Record<string, unknown>>(
    sql: string | Statement,
    params: readonly unknown[] = [],
  ): Promise<QueryResult<T>> {
    try {
      const custom = typeof sql !== 'string' && sql.plan === 'custom';
      const res = await (custom ? this.custom() : this.pool).query(toPg(sql, params, custom));
      return { rows: res.rows as T[], rowCount: res.rowCount ?? res.rows.length };
    } catch (err) {
      throw wrap(err);
    }
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw wrap(err);
    }
    const tx: Queryable = {
      query: async <R>(sql: string | Statement, params: readonly unknown[] = []) => {
        try {
          const res = await client.query(toPg(sql, params));
          return { rows: res.rows as R[], rowCount: res.rowCount ?? res.rows.length };
        } catch (err) {
          throw wrap(err);
        }
      },
    };
    let broken = false;
    try {
      await client.query('BEGIN');
      const out = await fn(tx);
      await client.query('COMMIT');
      return out;
    } catch (err) {
      try {
        await client.query('ROLLBACK');
      } catch {
        broken = true;
      }
      // Errors of the transaction's own code (HeraldError, TypeError...) pass through unchanged.
      throw err instanceof SqlError || !isStoreFailure(err) ? err : wrap(err);
    } finally {
      client.release(broken);
    }
  }

  ping(timeoutMs = 2000): Promise<void> {
    return pingStore((sql) => this.query(sql), timeoutMs);
  }

  async close(): Promise<void> {
    await Promise.all([this.pool.end(), this.customPool?.end()]);
  }
}
