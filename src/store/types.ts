/** Result of one SQL statement. */
export interface QueryResult<T> {
  rows: T[];
  rowCount: number;
}

/** Something that runs SQL: the store itself, or a transaction handle. */
export interface Queryable {
  query<T = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<QueryResult<T>>;
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
