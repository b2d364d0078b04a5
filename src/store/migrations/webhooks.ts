import type { Migration } from '../migrations.js';

/**
 * Merchant webhook migrations added after 010/012 (src/webhooks). Never edit one that has shipped; add a
 * new entry at the end.
 */
export const WEBHOOK_MIGRATIONS: Migration[] = [
  {
    // - owner_node / owner_until: the node that currently sends to a merchant. Claims take a merchant only
    //   when no other live node owns it, so the per-merchant concurrency limit holds across the cluster.
    // - purged_at: retention drops the payload and log of old finished webhooks but keeps the row (its
    //   idempotency key) until WEBHOOK_IDEMPOTENCY_RETENTION, so a producer re-sending an old
    //   notification never causes a second delivery.
    // - webhook_node_windows: each node's alert-window counters, summed for cluster-wide system alerts.
    id: '013_webhooks_cluster',
    sql: `
      ALTER TABLE webhook_merchants ADD COLUMN IF NOT EXISTS owner_node text;
      ALTER TABLE webhook_merchants ADD COLUMN IF NOT EXISTS owner_until timestamptz;
      ALTER TABLE webhook_deliveries ADD COLUMN IF NOT EXISTS purged_at timestamptz;
      CREATE INDEX IF NOT EXISTS webhook_deliveries_purge ON webhook_deliveries (finished_at) WHERE purged_at IS NULL AND finished_at IS NOT NULL;
      CREATE TABLE IF NOT EXISTS webhook_node_windows (
        node_id text NOT NULL,
        bucket timestamptz NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        successes integer NOT NULL DEFAULT 0,
        total_ms double precision NOT NULL DEFAULT 0,
        delivered integer NOT NULL DEFAULT 0,
        failed integer NOT NULL DEFAULT 0,
        PRIMARY KEY (node_id, bucket)
      );
      CREATE INDEX IF NOT EXISTS webhook_node_windows_bucket ON webhook_node_windows (bucket);
    `,
  },
  {
    // Claims on the embedded store update only locked_until, which no index covers, so the row update can
    // be HOT (no new index entries; a fillfactor of 30 leaves room on the page for the claims of all its
    // rows, measured: without it most claims were not HOT). Leases of PostgreSQL nodes
    // also set locked_by, and the leased-rows index follows that column instead of locked_until.
    // webhook_deliveries_failed: the queue-depth gauge counts failed webhooks without a scan of the table.
    id: '014_webhook_hot_claims',
    sql: `
      DO $$ BEGIN IF version() LIKE '%PGlite%' THEN ALTER TABLE webhook_deliveries SET (fillfactor = 30); END IF; END $$;
      CREATE INDEX IF NOT EXISTS webhook_deliveries_leased ON webhook_deliveries (merchant_key) WHERE locked_by IS NOT NULL;
      DROP INDEX IF EXISTS webhook_deliveries_locked;
      CREATE INDEX IF NOT EXISTS webhook_deliveries_failed ON webhook_deliveries (finished_at) WHERE status = 'failed';
    `,
  },
  {
    // A claim takes each merchant's due rows in (next_attempt_at, seq) order with a LIMIT. The due index
    // lacked seq, so PostgreSQL read every due row of the merchant and sorted them to take the first few:
    // measured with auto_explain in `npm run bench -- webhooks --store postgres`, 13,133 rows read and
    // sorted (13.5 of a 24 ms claim) to return 131. With seq in the index the scan stops at the LIMIT.
    //
    // The leased-rows index (on locked_by) made every PostgreSQL claim a non-HOT update: 9 new index
    // entries per claimed row (13 of a 17 ms claim of 204 rows). Claims now count other nodes' leases only
    // after a lapsed ownership (see WebhookQueue.claim), so the index goes, and pages keep room for the
    // claim's row version (fillfactor 50 on PostgreSQL; the embedded store has 30 since 014).
    id: '015_webhook_due_order',
    sql: `
      CREATE INDEX IF NOT EXISTS webhook_deliveries_due_order ON webhook_deliveries (merchant_key, next_attempt_at, seq)
        WHERE status IN ('pending', 'retrying', 'delayed');
      DROP INDEX IF EXISTS webhook_deliveries_due;
      DROP INDEX IF EXISTS webhook_deliveries_leased;
      DO $$ BEGIN IF version() NOT LIKE '%PGlite%' THEN ALTER TABLE webhook_deliveries SET (fillfactor = 50); END IF; END $$;
    `,
  },
  {
    // WEBHOOK_MAX_AGE: a queued webhook older than the max age ends failed. Its age counts from
    // scheduled_from, set by an admin retry (which gives it a fresh schedule), else from created_at; the
    // partial index lets the sweep find the oldest queued rows without scanning the queue.
    id: '016_webhook_max_age',
    sql: `
      ALTER TABLE webhook_deliveries ADD COLUMN IF NOT EXISTS scheduled_from timestamptz;
      CREATE INDEX IF NOT EXISTS webhook_deliveries_age ON webhook_deliveries ((coalesce(scheduled_from, created_at)))
        WHERE status IN ('pending', 'retrying', 'delayed');
    `,
  },
  {
    // Results batches already written (WebhookQueue.complete): a node writes a batch again when the store
    // failed to answer, and a statement that committed before its connection broke would otherwise add the
    // attempt log and the merchants' totals, response times and failure counts a second time. Each batch
    // has an id; the statement records it here first and changes nothing when it was there already.
    // Retention deletes ids older than a day (WebhookQueue.cleanup).
    id: '017_webhook_result_batches',
    sql: `
      CREATE TABLE IF NOT EXISTS webhook_result_batches (
        id uuid PRIMARY KEY,
        created_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX IF NOT EXISTS webhook_result_batches_created ON webhook_result_batches (created_at);
    `,
  },
  {
    // The breaker and slow-flag transitions a batch made, kept with its id: a batch written again after
    // a lost answer returns them, so the node still alerts, stops sending to a merchant whose breaker the
    // first write opened, and wakes the delay queue of one it closed (WebhookQueue.complete).
    id: '018_webhook_result_batch_transitions',
    sql: `
      ALTER TABLE webhook_result_batches ADD COLUMN IF NOT EXISTS transitions jsonb NOT NULL DEFAULT '[]'::jsonb;
    `,
  },
];
