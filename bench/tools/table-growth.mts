/**
 * How the embedded store's tables grow when rows are updated or deleted again and again, with and without
 * the upkeep Herald runs (PGlite has no autovacuum: without a VACUUM the space of deleted rows is never
 * reused, and an update on a full page writes its new version elsewhere with new index entries).
 * Three workloads, on PGlite directly, tables as Herald creates them:
 *   - `states`: the fold's upsert of 600 state counters (200 merchants × 3 states), 720 times an hour
 *     (every 5 s), for 6 hours;
 *   - `minutes`: 201 per-minute counters updated 12 times in their minute, 3 hours, the prune keeping
 *     30 minutes every 10 minutes;
 *   - `attempts`: the webhook attempt log, 10,000 attempts an hour, 120 hours kept, the cleanup deleting
 *     the oldest hour every hour, for 120 hours.
 * Each runs with fillfactor 100 or 50 and with or without a VACUUM after each prune / every 120 folds.
 * Prints the table + index sizes as they grow and the longest VACUUM.
 * Usage: npx tsx bench/tools/table-growth.mts [states|minutes|attempts ...] (default: all three; attempts
 * takes ~2 minutes per variant).
 */
import { PGlite } from '@electric-sql/pglite';

type Variant = { fillfactor: number; vacuum: boolean };
const VARIANTS: Variant[] = [
  { fillfactor: 100, vacuum: false },
  { fillfactor: 50, vacuum: false },
  { fillfactor: 100, vacuum: true },
  { fillfactor: 50, vacuum: true },
];

const ff = (v: Variant) => (v.fillfactor < 100 ? ` WITH (fillfactor = ${v.fillfactor})` : '');
const kib = async (db: PGlite, table: string) => {
  const r = await db.query<{ t: number; i: number }>(
    `SELECT pg_relation_size('${table}')::float8 AS t, pg_indexes_size('${table}')::float8 AS i`,
  );
  const row = r.rows[0] as { t: number; i: number };
  return `${Math.round(row.t / 1024)}+${Math.round(row.i / 1024)}`;
};
const timed = async (db: PGlite, sql: string) => {
  const t0 = performance.now();
  await db.exec(sql);
  return performance.now() - t0;
};

async function states(v: Variant): Promise<string> {
  const db = await PGlite.create();
  await db.exec(`CREATE TABLE payment_state_counts (app_id text NOT NULL, merchant_id text NOT NULL,
    hour timestamp NOT NULL, state text NOT NULL, shard smallint NOT NULL, n bigint NOT NULL,
    PRIMARY KEY (app_id, merchant_id, hour, state, shard))${ff(v)}`);
  const upsert = `INSERT INTO payment_state_counts AS c (app_id, merchant_id, hour, state, shard, n)
    SELECT x.a, x.m, x.h, x.s, 0, x.n FROM json_to_recordset($1::json) AS x(a text, m text, h timestamp, s text, n bigint)
    ORDER BY 1, 2, 3, 4 ON CONFLICT (app_id, merchant_id, hour, state, shard) DO UPDATE SET n = c.n + excluded.n`;
  const sizes: string[] = [];
  let foldMs = 0;
  let folds = 0;
  let vacMs = 0;
  for (let h = 0; h < 6; h++) {
    const rows = [];
    for (let m = 0; m < 200; m++)
      for (const s of ['created', 'paying', 'succeeded'])
        rows.push({ a: 'pos', m: `merchant-${m}`, h: `2026-12-07T0${h}:00:00`, s, n: 1 });
    const json = JSON.stringify(rows);
    for (let i = 0; i < 720; i++) {
      const t0 = performance.now();
      await db.query(upsert, [json]);
      foldMs += performance.now() - t0;
      folds++;
      if (v.vacuum && i % 120 === 119)
        vacMs = Math.max(vacMs, await timed(db, 'VACUUM payment_state_counts'));
    }
    sizes.push(await kib(db, 'payment_state_counts'));
  }
  await db.close();
  return `KiB after each hour ${sizes.join(' ')}; upsert of 600 counters ${(foldMs / folds).toFixed(2)} ms on average; longest VACUUM ${vacMs.toFixed(0)} ms`;
}

async function minutes(v: Variant): Promise<string> {
  const db = await PGlite.create();
  await db.exec(`CREATE TABLE payment_minute_counts (app_id text NOT NULL, merchant_id text NOT NULL,
    minute timestamp NOT NULL, shard smallint NOT NULL, events bigint NOT NULL, transitions bigint NOT NULL,
    PRIMARY KEY (app_id, merchant_id, minute, shard))${ff(v)};
    CREATE INDEX payment_minute_counts_minute ON payment_minute_counts (minute);`);
  const upsert = `INSERT INTO payment_minute_counts AS c (app_id, merchant_id, minute, shard, events, transitions)
    SELECT x.a, x.m, x.h, 0, x.e, x.t FROM json_to_recordset($1::json) AS x(a text, m text, h timestamp, e bigint, t bigint)
    ORDER BY 1, 2, 3 ON CONFLICT (app_id, merchant_id, minute, shard) DO UPDATE
    SET events = c.events + excluded.events, transitions = c.transitions + excluded.transitions`;
  const base = Date.parse('2026-12-07T00:00:00Z');
  const at = (min: number) => new Date(base + min * 60_000).toISOString().slice(0, 19);
  const sizes: string[] = [];
  let vacMs = 0;
  for (let min = 0; min < 180; min++) {
    const rows = [];
    for (let k = 0; k < 201; k++) rows.push({ a: 'pos', m: `merchant-${k}`, h: at(min), e: 3, t: 2 });
    const json = JSON.stringify(rows);
    for (let i = 0; i < 12; i++) await db.query(upsert, [json]);
    if (min % 10 === 9) {
      await db.query('DELETE FROM payment_minute_counts WHERE minute < $1::timestamp', [at(min - 30)]);
      if (v.vacuum) vacMs = Math.max(vacMs, await timed(db, 'VACUUM payment_minute_counts'));
    }
    if (min % 30 === 29) sizes.push(await kib(db, 'payment_minute_counts'));
  }
  await db.close();
  return `KiB every 30 minutes ${sizes.join(' ')}; longest VACUUM ${vacMs.toFixed(0)} ms`;
}

async function attempts(v: Variant): Promise<string> {
  const db = await PGlite.create();
  await db.exec(`CREATE TABLE webhook_attempts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id text NOT NULL, order_no text NOT NULL, merchant_key text NOT NULL, url text NOT NULL,
    attempt integer NOT NULL, outcome text NOT NULL, status_code integer, response_body text,
    duration_ms integer NOT NULL, error text, created_at timestamptz NOT NULL DEFAULT now())${ff(v)};
    CREATE INDEX webhook_attempts_created ON webhook_attempts (created_at);
    CREATE INDEX webhook_attempts_order_no ON webhook_attempts (order_no);
    CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id);`);
  const hour = (h: number) =>
    db.exec(`INSERT INTO webhook_attempts (delivery_id, order_no, merchant_key, url, attempt, outcome, status_code,
      response_body, duration_ms, created_at)
      SELECT gen_random_uuid()::text, 'O' || g, 'merchant-' || (g % 200), 'https://merchant.example/notify', 1,
        'success', 200, 'success', 20, timestamp '2026-11-01' + make_interval(hours => ${h}) + make_interval(secs => g * 0.36)
      FROM generate_series(1, 10000) g`);
  const KEEP = 120;
  for (let h = 0; h < KEEP; h++) await hour(h);
  const sizes: string[] = [];
  let vacMs = 0;
  for (let h = KEEP; h < 2 * KEEP; h++) {
    await hour(h);
    await db.exec(
      `DELETE FROM webhook_attempts WHERE created_at < timestamp '2026-11-01' + make_interval(hours => ${h - KEEP + 1})`,
    );
    if (v.vacuum) vacMs = Math.max(vacMs, await timed(db, 'VACUUM webhook_attempts'));
    if ((h - KEEP) % 30 === 29) sizes.push(await kib(db, 'webhook_attempts'));
  }
  await db.close();
  return `KiB every 30 hours of retention ${sizes.join(' ')}; longest VACUUM ${vacMs.toFixed(0)} ms`;
}

const WORKLOADS = { states, minutes, attempts } as const;
const chosen = (
  process.argv.slice(2).length > 0 ? process.argv.slice(2) : Object.keys(WORKLOADS)
) as (keyof typeof WORKLOADS)[];
for (const name of chosen) {
  const run = WORKLOADS[name];
  if (!run) throw new Error(`unknown workload ${name}; expected ${Object.keys(WORKLOADS).join(', ')}`);
  for (const v of name === 'attempts' ? VARIANTS.filter((x) => x.fillfactor === 100) : VARIANTS) {
    console.log(`${name} fillfactor=${v.fillfactor} vacuum=${v.vacuum}: ${await run(v)}`);
  }
}
