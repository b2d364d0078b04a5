import type { Migration } from '../migrations.js';

/**
 * Payment tracking migrations added after 020/021 (src/payments). Never edit one that has shipped;
 * add a new entry at the end.
 */
export const PAYMENT_MIGRATIONS: Migration[] = [
  {
    // - payment_outbox: the realtime notification of every transition, written in the transaction that
    //   stores the transition and deleted once published; rows left by a node that died between commit
    //   and publish are published again by the sweep with the same notification id.
    // - payment_state_counts / payment_minute_counts: counters kept in the same transactions, so that
    //   GET /payments/stats reads a few rows instead of scanning every order and event. merchant_id ''
    //   is the whole app; `shard` spreads the rows one node's concurrent transactions update (summed
    //   when read). Hours and minutes are UTC.
    // - payment_orders_created_at: the partial hours at the edges of a stats window are counted from
    //   the orders themselves, also across apps.
    id: '022_payments_outbox_counters',
    sql: `
      CREATE TABLE IF NOT EXISTS payment_outbox (
        app_id text NOT NULL,
        event_id text NOT NULL,
        notification_id text NOT NULL,
        order_id text NOT NULL,
        merchant_id text NOT NULL,
        device_id text,
        data text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (app_id, event_id)
      );
      CREATE INDEX IF NOT EXISTS payment_outbox_created ON payment_outbox (created_at);
      CREATE TABLE IF NOT EXISTS payment_state_counts (
        app_id text NOT NULL,
        merchant_id text NOT NULL,
        hour timestamp NOT NULL,
        state text NOT NULL,
        shard smallint NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (app_id, merchant_id, hour, state, shard)
      );
      CREATE TABLE IF NOT EXISTS payment_minute_counts (
        app_id text NOT NULL,
        merchant_id text NOT NULL,
        minute timestamp NOT NULL,
        shard smallint NOT NULL,
        events bigint NOT NULL,
        transitions bigint NOT NULL,
        PRIMARY KEY (app_id, merchant_id, minute, shard)
      );
      CREATE INDEX IF NOT EXISTS payment_minute_counts_minute ON payment_minute_counts (minute);
      CREATE INDEX IF NOT EXISTS payment_orders_created_at ON payment_orders (created_at);
      INSERT INTO payment_state_counts (app_id, merchant_id, hour, state, shard, n)
        SELECT app_id, m, date_trunc('hour', created_at AT TIME ZONE 'UTC'), state, 0, count(*)
        FROM payment_orders CROSS JOIN LATERAL (VALUES (merchant_id), ('')) AS mm(m)
        GROUP BY 1, 2, 3, 4;
      INSERT INTO payment_minute_counts (app_id, merchant_id, minute, shard, events, transitions)
        SELECT app_id, m, date_trunc('minute', received_at AT TIME ZONE 'UTC'), 0, count(*),
          count(*) FILTER (WHERE outcome = 'transition')
        FROM payment_events CROSS JOIN LATERAL (VALUES (merchant_id), ('')) AS mm(m)
        WHERE received_at >= now() - interval '1 day 1 hour'
        GROUP BY 1, 2, 3;
    `,
  },
  {
    // Cheaper bookkeeping (measured: one row per transition and a few counter rows per merchant cost
    // more than the round trips 022 saved). Each batch transaction now writes ONE outbox row with every
    // realtime notification of the batch (deleted once all are published) and ONE row of counter deltas,
    // which the sweep folds into payment_state_counts / payment_minute_counts; stats add the deltas not
    // folded yet. The per-transition outbox of 022 is replaced. The index of events by received_at
    // served only the old per-minute scan of stats (the webhook sweep has its own partial index).
    id: '023_payments_batch_outbox_deltas',
    sql: `
      DROP TABLE IF EXISTS payment_outbox;
      DROP INDEX IF EXISTS payment_events_received;
      CREATE TABLE IF NOT EXISTS payment_outbox_batches (
        id text PRIMARY KEY,
        notifications text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE TABLE IF NOT EXISTS payment_count_deltas (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        states json NOT NULL,
        minutes json NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      );
    `,
  },
  {
    // Orders that may still time out get a small table of their own, so that no index of payment_orders
    // depends on the state: the two updates of an order's life (paying, then the outcome) become HOT
    // (no new index entries), where the partial index on open orders made each of them write an entry in
    // every index of the table. fillfactor leaves room on each page for those updates. The created_at
    // index of 022 goes too (every order insert paid for it); stats across apps use (app_id, created_at).
    id: '024_payments_open_orders',
    sql: `
      CREATE TABLE IF NOT EXISTS payment_open_orders (
        app_id text NOT NULL,
        order_id text NOT NULL,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (app_id, order_id)
      );
      CREATE INDEX IF NOT EXISTS payment_open_orders_created ON payment_open_orders (created_at);
      INSERT INTO payment_open_orders (app_id, order_id, created_at)
        SELECT app_id, order_id, created_at FROM payment_orders WHERE state IN ('created', 'paying')
        ON CONFLICT DO NOTHING;
      DROP INDEX IF EXISTS payment_orders_open;
      DROP INDEX IF EXISTS payment_orders_created_at;
      ALTER TABLE payment_orders SET (fillfactor = 80);
    `,
  },
  {
    // The outbox and delta rows of a batch are tens of KiB each and live a few seconds: store them out of
    // line without compressing them (pglz of every batch cost more PostgreSQL CPU than the rows save).
    id: '025_payments_no_compression',
    sql: `
      ALTER TABLE payment_outbox_batches ALTER COLUMN notifications SET STORAGE EXTERNAL;
      ALTER TABLE payment_count_deltas ALTER COLUMN states SET STORAGE EXTERNAL;
      ALTER TABLE payment_count_deltas ALTER COLUMN minutes SET STORAGE EXTERNAL;
    `,
  },
  {
    // Counter deltas as text: the json type parsed every batch's deltas when they were written (about a
    // tenth of a batch transaction on the embedded store); they are parsed when folded or read instead.
    id: '026_payments_deltas_text',
    sql: `
      ALTER TABLE payment_count_deltas ALTER COLUMN states TYPE text;
      ALTER TABLE payment_count_deltas ALTER COLUMN minutes TYPE text;
    `,
  },
  {
    // A batch of payment events is written by ONE statement outside any explicit transaction (orders are
    // read without a lock and updated only if their version is unchanged). When the statement finds that
    // another one came first (an event id or a new order stored concurrently, an order changed since it
    // was read), it calls this to abort itself, and with it every write it made; the caller reads the
    // SQLSTATE and runs the batch again. Written on one line: migrations split at a ';' ending a line.
    id: '027_payments_abort',
    sql: `
      CREATE OR REPLACE FUNCTION herald_payment_conflict(kind text, detail text) RETURNS int LANGUAGE plpgsql VOLATILE AS $f$ BEGIN RAISE EXCEPTION USING ERRCODE = 'HR409', MESSAGE = 'payment batch conflict: ' || kind, DETAIL = detail; END $f$;
    `,
  },
  {
    // Machine presence (payments/presence.ts): one heartbeat row per node instead of a stamp on every
    // machine row. A node refreshes only its own row each MACHINE_PRESENCE_INTERVAL; a machine online at a
    // node is seen when that node was last seen. `reaped_at`: another node took this one for dead and
    // turned its machines offline (the node, still alive, turns them back online at its next heartbeat).
    // payment_machines.changed_at: when the row last went online or offline, for the console's feed (a
    // machine turned offline by another node gets its node's last heartbeat as disconnect time, which is
    // up to 3 intervals in the past).
    id: '028_payments_presence_nodes',
    sql: `
      CREATE TABLE IF NOT EXISTS payment_presence_nodes (
        node_id text PRIMARY KEY,
        seen_at timestamptz NOT NULL,
        reaped_at timestamptz
      );
      ALTER TABLE payment_machines ADD COLUMN IF NOT EXISTS changed_at timestamptz;
    `,
  },
  {
    // Every fold of the counter deltas (each sweep) updates the current hour's and minute's counters. On
    // full pages each update wrote the new row version on another page with new entries in every index
    // (the state counters reached ~12x their live size within an hour); with room left on each page the
    // updates stay on their page (HOT) and page pruning reclaims the old versions, without vacuum.
    // Measured on PGlite: a fold's upsert of 600 counters 15-25 % faster, the state counters 112 KiB an
    // hour instead of 736 (200 merchants).
    id: '029_payments_counter_fillfactor',
    sql: `
      ALTER TABLE payment_state_counts SET (fillfactor = 50);
      ALTER TABLE payment_minute_counts SET (fillfactor = 50);
    `,
  },
];
