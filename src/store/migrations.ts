import { PAYMENT_MIGRATIONS } from './migrations/payments.js';
import { WEBHOOK_MIGRATIONS } from './migrations/webhooks.js';
import type { Store } from './types.js';

export interface Migration {
  /** Unique, ordered: `NNN_name`. Never edit a migration that has shipped; add a new one. */
  id: string;
  sql: string;
}

/**
 * The one schema of Herald, for the embedded store and PostgreSQL alike. Tables are created in the
 * configured schema (it is on the search path), so statements name tables without a schema.
 */
export const MIGRATIONS: Migration[] = [
  {
    id: '001_meta',
    sql: `
      CREATE TABLE IF NOT EXISTS meta (
        key text PRIMARY KEY,
        value jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      INSERT INTO meta (key, value) VALUES ('installation', jsonb_build_object('id', gen_random_uuid()::text, 'createdAt', now()))
      ON CONFLICT (key) DO NOTHING;
    `,
  },
  {
    // Merchant webhooks (src/webhooks): the durable delivery queue, one row per merchant with its breaker
    // and slow-merchant state (shared by every node), the attempt log and cluster-wide alert de-duplication.
    id: '010_webhooks',
    sql: `
      CREATE TABLE IF NOT EXISTS webhook_merchants (
        merchant_key text PRIMARY KEY,
        merchant_id text,
        notify_url text NOT NULL,
        secret text,
        require_success_body boolean,
        disabled_url text,
        disabled_at timestamptz,
        consecutive_failures integer NOT NULL DEFAULT 0,
        breaker_state text NOT NULL DEFAULT 'closed' CHECK (breaker_state IN ('closed', 'open', 'half_open')),
        breaker_opened_at timestamptz,
        breaker_until timestamptz,
        trial_until timestamptz,
        recent_ms integer[] NOT NULL DEFAULT '{}',
        avg_ms double precision NOT NULL DEFAULT 0,
        is_slow boolean NOT NULL DEFAULT false,
        success_total bigint NOT NULL DEFAULT 0,
        failure_total bigint NOT NULL DEFAULT 0,
        last_status_code integer,
        last_error text,
        last_attempt_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX IF NOT EXISTS webhook_merchants_notify_url ON webhook_merchants (notify_url);
      CREATE INDEX IF NOT EXISTS webhook_merchants_breaker ON webhook_merchants (breaker_state) WHERE breaker_state <> 'closed';
      CREATE TABLE IF NOT EXISTS webhook_deliveries (
        id text PRIMARY KEY,
        seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
        idempotency_key text NOT NULL UNIQUE,
        order_no text NOT NULL,
        event_type text,
        merchant_key text NOT NULL,
        merchant_id text,
        notify_url text NOT NULL,
        body text NOT NULL,
        status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'retrying', 'delayed', 'delivered', 'failed')),
        attempts integer NOT NULL DEFAULT 0,
        attempt_base integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        locked_until timestamptz,
        locked_by text,
        last_status_code integer,
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
      );
      CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (merchant_key, next_attempt_at) WHERE status IN ('pending', 'retrying', 'delayed');
      CREATE INDEX IF NOT EXISTS webhook_deliveries_locked ON webhook_deliveries (merchant_key) WHERE locked_until IS NOT NULL;
      CREATE INDEX IF NOT EXISTS webhook_deliveries_order_no ON webhook_deliveries (order_no);
      CREATE INDEX IF NOT EXISTS webhook_deliveries_created ON webhook_deliveries (created_at);
      CREATE INDEX IF NOT EXISTS webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE finished_at IS NOT NULL;
      CREATE TABLE IF NOT EXISTS webhook_attempts (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        delivery_id text NOT NULL,
        order_no text NOT NULL,
        merchant_key text NOT NULL,
        url text NOT NULL,
        attempt integer NOT NULL,
        outcome text NOT NULL,
        status_code integer,
        response_body text,
        duration_ms integer NOT NULL,
        error text,
        created_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX IF NOT EXISTS webhook_attempts_created ON webhook_attempts (created_at);
      CREATE INDEX IF NOT EXISTS webhook_attempts_order_no ON webhook_attempts (order_no);
      CREATE INDEX IF NOT EXISTS webhook_attempts_delivery ON webhook_attempts (delivery_id);
      CREATE TABLE IF NOT EXISTS webhook_alert_marks (
        key text PRIMARY KEY,
        sent_at timestamptz NOT NULL
      );
    `,
  },
  {
    // Payment tracking (src/payments): orders with their current state, every accepted event and
    // transition (the history, also the outbox of merchant notifications), and machine presence.
    id: '020_payments',
    sql: `
      CREATE TABLE IF NOT EXISTS payment_orders (
        app_id text NOT NULL,
        order_id text NOT NULL,
        merchant_id text NOT NULL,
        state text NOT NULL CHECK (state IN ('created', 'paying', 'succeeded', 'failed', 'closed', 'refunded')),
        reason text,
        amount numeric(20, 4),
        currency text,
        refunded_amount numeric(20, 4),
        notify_url text,
        device_id text,
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (app_id, order_id)
      );
      CREATE INDEX IF NOT EXISTS payment_orders_open ON payment_orders (created_at) WHERE state IN ('created', 'paying');
      CREATE INDEX IF NOT EXISTS payment_orders_merchant ON payment_orders (app_id, merchant_id, created_at);
      CREATE INDEX IF NOT EXISTS payment_orders_created ON payment_orders (app_id, created_at);
      CREATE TABLE IF NOT EXISTS payment_events (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        app_id text NOT NULL,
        event_id text NOT NULL,
        order_id text NOT NULL,
        merchant_id text NOT NULL,
        device_id text,
        type text NOT NULL,
        outcome text NOT NULL CHECK (outcome IN ('transition', 'stale')),
        from_state text,
        to_state text,
        reason text,
        amount numeric(20, 4),
        currency text,
        source text NOT NULL,
        occurred_at timestamptz NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        meta jsonb,
        webhook text CHECK (webhook IN ('pending', 'sent')),
        CONSTRAINT payment_events_event_id UNIQUE (app_id, event_id)
      );
      CREATE INDEX IF NOT EXISTS payment_events_order ON payment_events (app_id, order_id, seq);
      CREATE INDEX IF NOT EXISTS payment_events_received ON payment_events (received_at);
      CREATE INDEX IF NOT EXISTS payment_events_webhook ON payment_events (received_at) WHERE webhook = 'pending';
      CREATE TABLE IF NOT EXISTS payment_machines (
        app_id text NOT NULL,
        device_id text NOT NULL,
        merchant_id text NOT NULL,
        online boolean NOT NULL,
        node_id text,
        connected_at timestamptz,
        disconnected_at timestamptz,
        last_seen_at timestamptz NOT NULL,
        PRIMARY KEY (app_id, device_id)
      );
      CREATE INDEX IF NOT EXISTS payment_machines_merchant ON payment_machines (app_id, merchant_id);
      CREATE INDEX IF NOT EXISTS payment_machines_node ON payment_machines (node_id) WHERE online;
    `,
  },
  {
    // A merchant notification the webhook engine refuses for good (e.g. a notifyUrl it does not allow)
    // is marked failed instead of being offered again by every sweep.
    id: '021_payments_webhook_failed',
    sql: `
      ALTER TABLE payment_events DROP CONSTRAINT IF EXISTS payment_events_webhook_check;
      ALTER TABLE payment_events ADD CONSTRAINT payment_events_webhook_check CHECK (webhook IN ('pending', 'sent', 'failed'));
    `,
  },
  {
    // Alert history (src/webhooks/alerts.ts): every alert raised, for the admin API and the console.
    id: '012_webhook_alerts',
    sql: `
      CREATE TABLE IF NOT EXISTS webhook_alerts (
        id bigserial PRIMARY KEY,
        type text NOT NULL,
        level text NOT NULL,
        merchant_key text,
        text text NOT NULL,
        data jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX IF NOT EXISTS webhook_alerts_created ON webhook_alerts (created_at DESC);
    `,
  },
  ...PAYMENT_MIGRATIONS,
  ...WEBHOOK_MIGRATIONS,
];

/** Any fixed 64-bit number unique to Herald's migration lock. */
const MIGRATION_LOCK = 0x4845_5241_4c44; // "HERALD"

/**
 * Applies the migrations that are missing, in order, in one transaction under an advisory lock, so
 * that several nodes starting at once apply each migration exactly once.
 */
export async function migrate(
  store: Store,
  migrations: readonly Migration[] = MIGRATIONS,
): Promise<string[]> {
  return store.transaction(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await tx.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      id text PRIMARY KEY,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`);
    const done = new Set(
      (await tx.query<{ id: string }>('SELECT id FROM schema_migrations')).rows.map((r) => r.id),
    );
    const applied: string[] = [];
    for (const m of migrations) {
      if (done.has(m.id)) continue;
      for (const statement of splitStatements(m.sql)) await tx.query(statement);
      await tx.query('INSERT INTO schema_migrations (id) VALUES ($1)', [m.id]);
      applied.push(m.id);
    }
    return applied;
  });
}

/** Splits a migration into statements at semicolons that end a line (migrations avoid `;` inside bodies). */
export function splitStatements(sql: string): string[] {
  return sql
    .split(/;\s*(?:\n|$)/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}
