/** Result of one SQL statement. */
export interface QueryResult<T> {
  rows: T[];
  rowCount: number;
}

/**
 * A statement run often enough to be prepared once per PostgreSQL connection (a named prepared
 * statement: no parse per execution, and PostgreSQL's plan cache may switch to a generic plan after five
 * runs, skipping planning). Its text must be constant. The embedded store prepares it too, in its
 * worker, and plans it at every run (PGlite keeps no statistics).
 * Measure before using it: the webhook claim and result statements cost PostgreSQL 146-150 ms per 1,000
 * deliveries prepared against 166-173 unprepared (their plans are most of their cost), but the payment
 * write statement got dearer with a generic plan (0.79-0.86 cores against 0.66-0.68 with custom plans).
 * `plan: 'custom'` keeps the parse saved but plans every execution (PostgreSQL: on connections of their
 * own, with `plan_cache_mode = force_custom_plan`): for statements whose good plan depends on the
 * parameters and on tables that grow, such as that payment write.
 */
export interface Statement {
  readonly name: string;
  readonly text: string;
  readonly plan?: 'custom';
}

/** Declares a prepared statement (see Statement); `name` must be unique in the process. */
export function statement(name: string, text: string, opts: { plan?: 'custom' } = {}): Statement {
  return opts.plan ? { name: `herald_${name}`, text, plan: opts.plan } : { name: `herald_${name}`, text };
}

/** Something that runs SQL: the store itself, or a transaction handle. */
export interface Queryable {
  query<T = Record<string, unknown>>(
    sql: string | Statement,
    params?: readonly unknown[],
  ): Promise<QueryResult<T>>;
}

/**
 * The durable store. One SQL dialect (PostgreSQL) and one set of migrations serve both
 * implementations: the embedded PGlite (default) and a PostgreSQL server (`DATABASE_URL`).
 * Tables live in the configured schema, which is on the search path of every connection.
 */
export interface Store extends Queryable {
  readonly kind: 'embedded' | 'postgres';
  /** Runs `fn` in one transaction; commits when it resolves, rolls back when it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /** Resolves when the store answers a trivial query within the timeout. */
  ping(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}
