import { type Queryable, SqlError, type Store, statement } from '../store/index.js';
import { type AttemptOutcome, type BreakerState, type ClaimedDelivery, QUEUED_STATUSES } from './types.js';

/**
 * Every SQL statement of the webhook engine. The same SQL runs on the embedded store and on PostgreSQL.
 * Batches travel as one JSON parameter (`jsonb_to_recordset`), which both drivers pass the same way, so
 * that a batch costs one round trip whatever its size.
 */

const MS = `* interval '1 millisecond'`;

/**
 * Whether a store error is of SQLSTATE class 22 (data exception: text with a NUL character, a value out
 * of range, a malformed time...): the request carried a value the store cannot hold, so sending it
 * again cannot succeed. Such errors are the client's (400), not an unavailable store (503).
 */
export function isDataException(err: unknown): boolean {
  return err instanceof SqlError && typeof err.code === 'string' && err.code.startsWith('22');
}

/**
 * How long the ids of written results batches are kept (see complete()). A batch is written again only by
 * the node that made it, for as long as the store fails to answer that node; a day outlasts such an outage
 * (a node cut off from a PostgreSQL that other nodes still reach and clean up; on the embedded store, or
 * with one node, no cleanup runs while the store is unreachable anyway).
 */
export const RESULT_BATCH_RETENTION_MS = 86_400_000;

/** The last error of a webhook that WEBHOOK_MAX_AGE ended. */
export const MAX_AGE_ERROR =
  'max age reached: not delivered within WEBHOOK_MAX_AGE; POST /admin/merchant-notify/retry sends it again';

/** Settings the SQL needs. */
export interface QueueSettings {
  /** Identifies this node's leases. */
  nodeId: string;
  /**
   * One node serves the store (embedded): leases set only locked_until (a HOT update, no index entries),
   * and the node passes the leases it holds to claim() itself.
   */
  singleNode: boolean;
  lease: number;
  /** Rows one merchant may have leased across the cluster (its concurrency times the prefetch). */
  merchantLeases: number;
  /** The same for a merchant marked slow (no prefetch). */
  slowLeases: number;
  slowThreshold: number;
  /** Samples a merchant needs before it can be marked slow. */
  slowMinSamples: number;
  breakerThreshold: number;
  breakerOpen: number;
  breakerDelay: number;
  /** How long an intake waits for the store at most (default INTAKE_DEADLINE_MS). */
  intakeDeadline?: number;
}

/**
 * How long a notification waits for the store to take it at most. A store that does not answer (a
 * PostgreSQL connection cut without a reset, the embedded store held by a long statement) would otherwise
 * hold every intake request open for as long as that lasts, and queue them in memory without a bound.
 */
export const INTAKE_DEADLINE_MS = 15_000;

/**
 * The store did not take a notification within the intake deadline. `stored` is false when the write had
 * not started (the notification is surely not stored), undefined when it may still commit.
 */
export class IntakeTimeout extends Error {
  constructor(
    readonly ms: number,
    readonly stored: false | undefined,
  ) {
    super(`the store did not take the notification within ${ms}ms`);
    this.name = 'IntakeTimeout';
  }
}

/** What happens to a delivery after one attempt (computed by the engine). */
export interface DeliveryUpdate {
  id: string;
  status: 'delivered' | 'retrying' | 'failed';
  attempts: number;
  /** Delay before the next attempt (retrying only). */
  delayMs: number | null;
  statusCode: number | null;
  error: string | null;
  // attempt log
  orderNo: string;
  merchantKey: string;
  url: string;
  outcome: AttemptOutcome;
  responseBody: string | null;
  durationMs: number;
}

/** Per-merchant aggregate of one batch of attempts, in the order they finished. */
export interface MerchantUpdate {
  merchantKey: string;
  times: number[];
  successes: number;
  failures: number;
  hadSuccess: boolean;
  /** Failures after the last success of the batch (all failures when there was none). */
  trailingFailures: number;
  goneUrl: string | null;
  /**
   * The batch's last answer was 410 Gone: the merchant answered and its URL is now disabled (later webhooks
   * to it fail at once without a request). It settles the breaker: a half-open trial closes it (the delayed
   * webhooks are released and fail at once), a closed breaker does not open, and the failure count restarts.
   */
  lastGone: boolean;
  lastCode: number | null;
  lastError: string | null;
}

/** A merchant whose state changed in a batch, for alerts. */
export interface MerchantTransition {
  merchantKey: string;
  merchantId: string | null;
  notifyUrl: string;
  oldState: BreakerState;
  newState: BreakerState;
  wasSlow: boolean;
  isSlow: boolean;
  avgMs: number;
  consecutiveFailures: number;
}

export interface MerchantRow {
  merchant_key: string;
  merchant_id: string | null;
  notify_url: string;
  secret: string | null;
  require_success_body: boolean | null;
  disabled_url: string | null;
  disabled_at: Date | null;
  consecutive_failures: number;
  breaker_state: BreakerState;
  breaker_opened_at: Date | null;
  breaker_until: Date | null;
  avg_ms: number;
  samples: number;
  is_slow: boolean;
  success_total: number;
  failure_total: number;
  last_status_code: number | null;
  last_error: string | null;
  last_attempt_at: Date | null;
  created_at: Date;
}

export interface DeliveryRow {
  id: string;
  seq: number;
  order_no: string;
  event_type: string | null;
  merchant_key: string;
  merchant_id: string | null;
  notify_url: string;
  status: string;
  attempts: number;
  next_attempt_at: Date;
  locked_until: Date | null;
  last_status_code: number | null;
  last_error: string | null;
  created_at: Date;
  finished_at: Date | null;
}

export interface AttemptRow {
  id: number;
  delivery_id: string;
  order_no: string;
  merchant_key: string;
  url: string;
  attempt: number;
  outcome: string;
  status_code: number | null;
  response_body: string | null;
  duration_ms: number;
  error: string | null;
  created_at: Date;
}

const MERCHANT_COLUMNS = `merchant_key, merchant_id, notify_url, secret, require_success_body, disabled_url, disabled_at,
  consecutive_failures, breaker_state, breaker_opened_at, breaker_until, avg_ms, cardinality(recent_ms) AS samples,
  is_slow, success_total, failure_total, last_status_code, last_error, last_attempt_at, created_at`;

const DELIVERY_COLUMNS = `id, seq, order_no, event_type, merchant_key, merchant_id, notify_url, status, attempts,
  next_attempt_at, locked_until, last_status_code, last_error, created_at, finished_at`;

/** Notifications written by one intake statement at most. */
const INTAKE_BATCH = 500;

export interface EnqueueRow {
  id: string;
  idempotencyKey: string;
  orderNo: string;
  eventType: string | null;
  merchantKey: string;
  merchantId: string | null;
  notifyUrl: string;
  body: string;
}

interface PendingEnqueue {
  row: EnqueueRow;
  resolve: (r: { id: string; duplicate: boolean }) => void;
  reject: (err: unknown) => void;
}

const DUE = `d.status IN ${QUEUED_STATUSES} AND d.next_attempt_at <= now() AND (d.locked_until IS NULL OR d.locked_until <= now())`;

export class WebhookQueue {
  constructor(
    private readonly store: Store,
    private readonly s: QueueSettings,
  ) {}

  /**
   * Stores one notification unless its idempotency key is known. Concurrent calls are group-committed:
   * while one batch is being written the next ones gather, and each batch is a single statement (merchant
   * rows and deliveries together), so intake costs one round trip per batch, not per notification. Safe
   * when requests race, in one batch, across batches or across nodes: the UNIQUE idempotency key makes
   * exactly one INSERT win and every other caller gets the winner's id with `duplicate: true`.
   */
  enqueue(row: EnqueueRow): Promise<{ id: string; duplicate: boolean }> {
    return new Promise((resolve, reject) => {
      const ms = this.s.intakeDeadline ?? INTAKE_DEADLINE_MS;
      // A request the store does not take in time is answered (503) and, when its write has not started,
      // taken out of the queue: it is not stored, and the waiting requests stay bounded by the rate of one
      // deadline. One that is being written may still commit: a retry with its key answers `duplicate`.
      const timer = setTimeout(() => {
        const i = this.intake.indexOf(p);
        if (i >= 0) this.intake.splice(i, 1);
        reject(new IntakeTimeout(ms, i >= 0 ? false : undefined));
      }, ms);
      timer.unref();
      const p: PendingEnqueue = {
        row,
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      this.intake.push(p);
      if (this.intakeRunning < this.intakeParallel) void this.drainIntake();
    });
  }

  private readonly intake: PendingEnqueue[] = [];
  private intakeRunning = 0;
  /** Batches written at once: 1 on the single-connection embedded store, a few on PostgreSQL. */
  private get intakeParallel(): number {
    return this.store.kind === 'embedded' ? 1 : 4;
  }

  private async drainIntake(): Promise<void> {
    this.intakeRunning++;
    try {
      while (this.intake.length > 0) {
        const batch = this.intake.splice(0, INTAKE_BATCH);
        try {
          await this.settle(batch);
        } catch (err) {
          if (batch.length > 1 && isDataException(err)) {
            // One row the store refused fails the whole statement: store the rows one by one, so that
            // only the bad one is refused and the others are not failed along with it.
            for (const p of batch) await this.settle([p]).catch((e: unknown) => p.reject(e));
          } else {
            for (const p of batch) p.reject(err);
          }
        }
      }
    } finally {
      this.intakeRunning--;
    }
  }

  /** Stores a batch of the intake and answers each of its requests (throws when the batch fails). */
  private async settle(batch: readonly PendingEnqueue[]): Promise<void> {
    const ids = await this.insertBatch(batch.map((p) => p.row));
    for (const p of batch) {
      const r = ids.get(p.row.idempotencyKey);
      if (!r) p.reject(new Error('the stored row disappeared'));
      else if (r.winner === p.row.id) p.resolve({ id: r.id, duplicate: false });
      else p.resolve({ id: r.id, duplicate: true });
    }
  }

  /** Idempotency key -> stored id, and the id of the row of this batch that was inserted (if any). */
  private async insertBatch(
    rows: readonly EnqueueRow[],
  ): Promise<Map<string, { id: string; winner: string | null }>> {
    const json = JSON.stringify(
      rows.map((r) => ({
        id: r.id,
        k: r.idempotencyKey,
        order_no: r.orderNo,
        event_type: r.eventType,
        merchant_key: r.merchantKey,
        merchant_id: r.merchantId,
        notify_url: r.notifyUrl,
        body: r.body,
      })),
    );
    for (let attempt = 1; ; attempt++) {
      try {
        // Keys and merchants are written in sorted order, so concurrent batches on several nodes lock
        // rows in the same order and cannot deadlock.
        const inserted = await this.store.query<{ id: string; idempotency_key: string }>(
          `WITH x AS (
             SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id text, k text, order_no text, event_type text,
               merchant_key text, merchant_id text, notify_url text, body text)
           ), m AS (
             INSERT INTO webhook_merchants (merchant_key, merchant_id, notify_url)
             SELECT DISTINCT ON (merchant_key) merchant_key, merchant_id, notify_url FROM x ORDER BY merchant_key
             ON CONFLICT (merchant_key) DO UPDATE SET notify_url = EXCLUDED.notify_url, updated_at = now()
               WHERE webhook_merchants.notify_url IS DISTINCT FROM EXCLUDED.notify_url
             RETURNING 1
           )
           INSERT INTO webhook_deliveries (id, idempotency_key, order_no, event_type, merchant_key, merchant_id, notify_url, body)
           SELECT id, k, order_no, event_type, merchant_key, merchant_id, notify_url, body FROM x ORDER BY k
           ON CONFLICT (idempotency_key) DO NOTHING
           RETURNING id, idempotency_key`,
          [json],
        );
        const out = new Map<string, { id: string; winner: string | null }>();
        for (const r of inserted.rows) out.set(r.idempotency_key, { id: r.id, winner: r.id });
        const missing = [...new Set(rows.map((r) => r.idempotencyKey).filter((k) => !out.has(k)))];
        if (missing.length > 0) {
          // Known keys (possibly committed by a racing batch after this statement's snapshot).
          const existing = await this.store.query<{ id: string; idempotency_key: string }>(
            `SELECT id, idempotency_key FROM webhook_deliveries
             WHERE idempotency_key IN (SELECT jsonb_array_elements_text($1::jsonb))`,
            [JSON.stringify(missing)],
          );
          for (const r of existing.rows) out.set(r.idempotency_key, { id: r.id, winner: null });
          // A key deleted by retention between the two statements: store those rows again.
          const gone = new Set(missing.filter((k) => !out.has(k)));
          if (gone.size > 0) {
            const again = await this.insertBatch(rows.filter((r) => gone.has(r.idempotencyKey)));
            for (const [k, v] of again) out.set(k, v);
          }
        }
        return out;
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (attempt < 5 && (code === '40P01' || code === '40001')) continue;
        throw err;
      }
    }
  }

  /**
   * Whether any webhook waits in the queue (due or not), through the queued rows' partial index: far
   * cheaper than a claim, which is planned and run in full even when the queue is empty (5-9 ms of the
   * embedded store's one connection at every poll).
   */
  async anyQueued(): Promise<boolean> {
    const r = await this.store.query(
      statement(
        'webhook_any_queued',
        `SELECT 1 FROM webhook_deliveries WHERE status IN ${QUEUED_STATUSES} LIMIT 1`,
      ),
    );
    return r.rows.length > 0;
  }

  /** The embedded store serves one process: every lease left in it belongs to a process that died. */
  async releaseAllLeases(): Promise<number> {
    const r = await this.store.query(
      'UPDATE webhook_deliveries SET locked_until = NULL, locked_by = NULL WHERE locked_until IS NOT NULL',
    );
    await this.store.query(
      'UPDATE webhook_merchants SET owner_node = NULL, owner_until = NULL WHERE owner_node IS NOT NULL',
    );
    return r.rowCount;
  }

  /**
   * Gives up this node's ownership of merchants it has nothing left to send to (all of them when `keys`
   * is omitted, at shutdown), so that any node may take them on its next claim.
   */
  async releaseOwnership(keys?: readonly string[]): Promise<void> {
    if (keys && keys.length === 0) return;
    await this.store.query(
      `UPDATE webhook_merchants SET owner_node = NULL, owner_until = NULL
       WHERE owner_node = $1 AND ($2::jsonb IS NULL OR merchant_key IN (SELECT jsonb_array_elements_text($2::jsonb)))`,
      [this.s.nodeId, keys ? JSON.stringify(keys) : null],
    );
  }

  /**
   * VACUUM (ANALYZE) of the queue tables. The embedded store has no autovacuum: without this, every claim
   * and result leaves dead index entries that later claims must step over, and the planner has no
   * statistics. PostgreSQL's autovacuum does this by itself.
   */
  async vacuum(): Promise<void> {
    // The attempt log is insert-only (retention deletes in bulk): statistics are enough for it.
    await this.store.query('VACUUM (ANALYZE) webhook_deliveries, webhook_merchants');
    await this.store.query('ANALYZE webhook_attempts');
  }

  /** Gives back leases of deliveries this node will not finish (shutdown), without counting an attempt. */
  async release(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.store.query(
      `UPDATE webhook_deliveries SET locked_until = NULL, locked_by = NULL, updated_at = now()
       WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb)) AND (locked_by = $2 OR locked_by IS NULL)`,
      [JSON.stringify(ids), this.s.nodeId],
    );
  }

  /**
   * Breaker upkeep, run every poll interval on every node (each statement is atomic, so nodes do not
   * conflict): due webhooks of merchants whose breaker is open go to the delay queue without being sent,
   * and merchants whose open period is over (and that have a due webhook) become half-open with a trial
   * lease taken by this node. Returns the merchants whose one trial request this node may send.
   */
  async maintain(): Promise<{ trials: string[]; delayed: number }> {
    const r = await this.store.query<{ trials: string[] | null; delayed: number }>(
      `WITH trials AS (
         UPDATE webhook_merchants m SET breaker_state = 'half_open', trial_until = now() + $1::double precision ${MS}, updated_at = now()
         WHERE m.breaker_state <> 'closed'
           AND ((m.breaker_state = 'open' AND m.breaker_until <= now())
             OR (m.breaker_state = 'half_open' AND (m.trial_until IS NULL OR m.trial_until <= now())))
           AND EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.merchant_key = m.merchant_key AND ${DUE})
         RETURNING m.merchant_key
       ), blocked AS (
         SELECT m.merchant_key FROM webhook_merchants m
         WHERE m.breaker_state <> 'closed'
           AND ((m.breaker_state = 'open' AND m.breaker_until > now()) OR (m.breaker_state = 'half_open' AND m.trial_until > now()))
       ), delayed AS (
         UPDATE webhook_deliveries d SET status = 'delayed', next_attempt_at = now() + $2::double precision ${MS}, updated_at = now()
         WHERE d.id = ANY(ARRAY(
           SELECT x.id FROM blocked b CROSS JOIN LATERAL (
             SELECT d2.id FROM webhook_deliveries d2
             WHERE d2.merchant_key = b.merchant_key AND d2.status IN ${QUEUED_STATUSES} AND d2.next_attempt_at <= now()
               AND (d2.locked_until IS NULL OR d2.locked_until <= now())
           ) x
         ))
         RETURNING d.id
       )
       SELECT (SELECT array_agg(merchant_key) FROM trials) AS trials, (SELECT count(*)::int FROM delayed) AS delayed`,
      [this.s.lease, this.s.breakerDelay],
    );
    const row = r.rows[0];
    return { trials: row?.trials ?? [], delayed: row?.delayed ?? 0 };
  }

  /**
   * WEBHOOK_MAX_AGE: queued webhooks (not leased) older than `maxAgeMs` end `failed` with the error
   * MAX_AGE_ERROR and an attempt-log entry (outcome `expired`, no request), at most `limit` per statement,
   * oldest first. Their age counts from an admin retry (scheduled_from), else from their creation. Returns
   * how many ended this way.
   */
  async expireOld(maxAgeMs: number, limit: number): Promise<number> {
    const r = await this.store.query<{ n: number }>(
      statement(
        'webhook_expire',
        `WITH old AS (
         SELECT d.id FROM webhook_deliveries d
         WHERE d.status IN ${QUEUED_STATUSES}
           AND coalesce(d.scheduled_from, d.created_at) < now() - $1::double precision ${MS}
           AND (d.locked_until IS NULL OR d.locked_until <= now())
         ORDER BY coalesce(d.scheduled_from, d.created_at)
         LIMIT $2
         FOR UPDATE SKIP LOCKED
       ), upd AS (
         UPDATE webhook_deliveries d SET status = 'failed', last_status_code = NULL, last_error = $3,
           finished_at = now(), locked_until = NULL, locked_by = NULL, updated_at = now()
         WHERE d.id = ANY(ARRAY(SELECT id FROM old))
         RETURNING d.id, d.order_no, d.merchant_key, d.notify_url, d.attempts
       ), log AS (
         INSERT INTO webhook_attempts (delivery_id, order_no, merchant_key, url, attempt, outcome, status_code, response_body, duration_ms, error)
         SELECT id, order_no, merchant_key, notify_url, attempts, 'expired', NULL, NULL, 0, $3 FROM upd
         RETURNING 1
       )
       SELECT count(*)::int AS n FROM log`,
      ),
      [maxAgeMs, limit, MAX_AGE_ERROR],
    );
    return r.rows[0]?.n ?? 0;
  }

  /** Trials that found nothing to send go back to `open` (expired), to be taken again when work is due. */
  async releaseTrials(keys: readonly string[]): Promise<void> {
    if (keys.length === 0) return;
    await this.store.query(
      `UPDATE webhook_merchants SET breaker_state = 'open', trial_until = NULL, updated_at = now()
       WHERE merchant_key IN (SELECT jsonb_array_elements_text($1::jsonb)) AND breaker_state = 'half_open'`,
      [JSON.stringify(keys)],
    );
  }

  /**
   * Claims up to `limit` due webhooks with a lease, oldest first, never more per merchant than its free
   * share: its lease cap (merchant limit times the prefetch; the slow limit for slow merchants, 1 for a
   * half-open trial, 0 for an open breaker) less what is already leased across the cluster. Merchants with
   * queued rows are found with a loose index scan, so the cost grows with the number of busy merchants, not
   * the length of the queue. Rows are locked with FOR UPDATE SKIP LOCKED, so concurrent claimers never take
   * the same row. A merchant is claimed only by the node that owns it (taken here when no other live node
   * does, renewed by every claim and result, given up with releaseOwnership): one node sends to a merchant
   * at a time, so the per-merchant concurrency limit holds across the cluster. `caps` lowers the lease cap
   * of the merchants the caller names (merchants it sees lagging before the store marks them slow).
   */
  async claim(
    limit: number,
    trials: readonly string[],
    held?: Readonly<Record<string, number>>,
    caps?: Readonly<Record<string, number>>,
  ): Promise<ClaimedDelivery[]> {
    const r = await this.store.query<{
      id: string;
      seq: number;
      order_no: string;
      event_type: string | null;
      merchant_key: string;
      notify_url: string;
      body: string;
      attempts: number;
      attempt_base: number;
      created_at: Date;
      age_from: Date;
      secret: string | null;
      require_success_body: boolean | null;
      disabled: boolean;
      trial: boolean;
      is_slow: boolean;
    }>(
      statement(
        'webhook_claim',
        `WITH RECURSIVE mk AS (
         (SELECT merchant_key FROM webhook_deliveries WHERE status IN ${QUEUED_STATUSES} ORDER BY merchant_key LIMIT 1)
         UNION ALL
         SELECT (SELECT d.merchant_key FROM webhook_deliveries d
                 WHERE d.status IN ${QUEUED_STATUSES} AND d.merchant_key > mk.merchant_key
                 ORDER BY d.merchant_key LIMIT 1)
         FROM mk WHERE mk.merchant_key IS NOT NULL
       ), caps AS (
         -- A merchant's live leases: this node's own are given ($7: it counts what it holds). Another
         -- node can hold some only when it owned the merchant last and its ownership lapsed (it died or
         -- stalled; a node gives up a merchant itself only once it holds nothing of it), so they are
         -- counted only then, with a scan of the merchant's queued rows. No index covers the lease
         -- columns, so a claim is a HOT update that writes no index entry.
         -- Merchants another live node owns are left alone.
         -- $9 lowers the cap of merchants the claiming node sees lagging before the store marks them slow.
         SELECT m.merchant_key,
           (CASE WHEN m.merchant_key IN (SELECT jsonb_array_elements_text($3::jsonb)) THEN 1
                 WHEN m.breaker_state = 'closed' THEN least(CASE WHEN m.is_slow THEN $4::int ELSE $5::int END,
                   coalesce(($9::jsonb ->> m.merchant_key)::int, $5::int))
                 ELSE 0 END)
             - (CASE WHEN m.owner_node IS NULL OR m.owner_node = $6 THEN 0 ELSE
                 (SELECT count(*)::int FROM webhook_deliveries b
                  WHERE b.merchant_key = m.merchant_key AND b.status IN ${QUEUED_STATUSES}
                    AND b.locked_by IS NOT NULL AND b.locked_until > now()) END)
             - coalesce(($7::jsonb ->> m.merchant_key)::int, 0) AS free
         FROM mk JOIN webhook_merchants m ON m.merchant_key = mk.merchant_key
         WHERE m.owner_node IS NULL OR m.owner_node = $6 OR m.owner_until <= now()
       ), lock_owned AS (
         -- Locked in key order (as complete() does), so concurrent statements cannot deadlock; the lock
         -- re-checks the owner on the newest row version, so two nodes never both take a merchant.
         SELECT m.merchant_key FROM webhook_merchants m
         WHERE m.merchant_key IN (SELECT merchant_key FROM caps WHERE free > 0)
           AND (m.owner_node IS NULL OR m.owner_node = $6 OR m.owner_until <= now())
         ORDER BY m.merchant_key
         FOR UPDATE
       ), pick AS (
         SELECT x.id, x.next_attempt_at, x.seq, c.merchant_key FROM caps c
         JOIN lock_owned o ON o.merchant_key = c.merchant_key
         CROSS JOIN LATERAL (
           SELECT d.id, d.next_attempt_at, d.seq FROM webhook_deliveries d
           WHERE d.merchant_key = c.merchant_key AND ${DUE}
           ORDER BY d.next_attempt_at, d.seq
           LIMIT greatest(c.free, 0)
           FOR UPDATE OF d SKIP LOCKED
         ) x
         ORDER BY x.next_attempt_at, x.seq
         LIMIT $1
       ), owned AS (
         -- Only merchants that got rows become (or stay) this node's; the row locks above are held until
         -- commit, so no other node can take them in between.
         UPDATE webhook_merchants m SET owner_node = $6, owner_until = now() + $2::double precision ${MS}
         WHERE m.merchant_key IN (SELECT DISTINCT merchant_key FROM pick)
         RETURNING 1
       )
       UPDATE webhook_deliveries d SET locked_until = now() + $2::double precision ${MS}, locked_by = $8::text, updated_at = now()
       FROM webhook_merchants m
       WHERE d.id = ANY(ARRAY(SELECT id FROM pick)) AND m.merchant_key = d.merchant_key
       RETURNING d.id, d.seq, d.order_no, d.event_type, d.merchant_key, d.notify_url, d.body, d.attempts,
         d.attempt_base, d.created_at, coalesce(d.scheduled_from, d.created_at) AS age_from, m.secret,
         m.require_success_body,
         coalesce(m.disabled_url = d.notify_url, false) AS disabled, m.breaker_state = 'half_open' AS trial,
         m.is_slow`,
      ),
      [
        limit,
        this.s.lease,
        JSON.stringify(trials),
        this.s.slowLeases,
        this.s.merchantLeases,
        this.s.nodeId,
        JSON.stringify(held ?? {}),
        this.s.singleNode ? null : this.s.nodeId,
        JSON.stringify(caps ?? {}),
      ],
    );
    return r.rows
      .map((x) => ({
        id: x.id,
        seq: x.seq,
        orderNo: x.order_no,
        eventType: x.event_type,
        merchantKey: x.merchant_key,
        notifyUrl: x.notify_url,
        body: x.body,
        attempts: x.attempts,
        attemptBase: x.attempt_base,
        createdAt: x.created_at,
        ageFrom: x.age_from,
        secret: x.secret,
        requireSuccessBody: x.require_success_body,
        disabled: x.disabled,
        trial: x.trial,
        slow: x.is_slow,
      }))
      .sort((a, b) => a.seq - b.seq);
  }

  /**
   * Writes the outcome of a batch of attempts in one statement: the deliveries (lease released), the
   * attempt log, and each merchant's failure count, response-time window, slow flag and breaker.
   * Returns the merchants whose breaker or slow flag changed, or that are slow, for alerts.
   *
   * Idempotent per `batchId` (a UUID made once per batch, passed again on every retry of it): a statement
   * that committed but whose answer was lost (the connection broke) is written again by the caller, and
   * must not log the attempts or count them in the merchants' totals, times and failures a second time.
   * The statement records the id with the transitions it made; when the id is there already it changes
   * nothing and returns the transitions recorded the first time (the caller never saw them: its alerts,
   * open breakers and woken delay queues depend on them). Two runs of one batch at once (PostgreSQL): the
   * second waits on the first's locks, then fails on the id's key and is run again as a replay. Ids are
   * kept for a day (cleanup).
   */
  async complete(
    batchId: string,
    deliveries: readonly DeliveryUpdate[],
    merchants: readonly MerchantUpdate[],
  ): Promise<MerchantTransition[]> {
    const d = deliveries.map((u) => ({
      id: u.id,
      status: u.status,
      attempts: u.attempts,
      delay_ms: u.delayMs,
      code: u.statusCode,
      error: u.error,
      order_no: u.orderNo,
      merchant_key: u.merchantKey,
      url: u.url,
      outcome: u.outcome,
      response_body: u.responseBody,
      duration_ms: Math.round(u.durationMs),
    }));
    const m = merchants.map((u) => ({
      merchant_key: u.merchantKey,
      times: u.times.map((t) => Math.round(t)),
      successes: u.successes,
      failures: u.failures,
      had_success: u.hadSuccess,
      trail: u.trailingFailures,
      gone_url: u.goneUrl,
      last_gone: u.lastGone,
      last_code: u.lastCode,
      last_error: u.lastError,
    }));
    const params = [
      JSON.stringify(d),
      JSON.stringify(m),
      this.s.nodeId,
      this.s.breakerThreshold,
      this.s.slowMinSamples,
      this.s.slowThreshold,
      this.s.breakerOpen,
      this.s.lease,
      batchId,
    ];
    const run = () =>
      this.store.query<{
        merchant_key: string;
        merchant_id: string | null;
        notify_url: string;
        old_state: BreakerState;
        breaker_state: BreakerState;
        was_slow: boolean;
        is_slow: boolean;
        avg_ms: number;
        consecutive_failures: number;
      }>(
        statement(
          'webhook_complete',
          `WITH prev AS (
         -- A batch written before: x and y are empty, nothing below changes, and the answer is the
         -- transitions recorded then.
         SELECT transitions FROM webhook_result_batches WHERE id = $9::uuid
       ), x AS (
         SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id text, status text, attempts int, delay_ms double precision,
           code int, error text, order_no text, merchant_key text, url text, outcome text, response_body text, duration_ms int)
         WHERE NOT EXISTS (SELECT 1 FROM prev)
       ), upd AS (
         UPDATE webhook_deliveries d SET
           status = x.status,
           attempts = x.attempts,
           next_attempt_at = CASE WHEN x.status = 'retrying' THEN now() + x.delay_ms ${MS} ELSE d.next_attempt_at END,
           locked_until = NULL, locked_by = NULL,
           last_status_code = x.code, last_error = x.error,
           finished_at = CASE WHEN x.status IN ('delivered', 'failed') THEN now() ELSE NULL END,
           updated_at = now()
         FROM x
         WHERE d.id = x.id AND d.status <> 'delivered'
           AND (d.locked_by = $3 OR (d.locked_by IS NULL AND d.locked_until IS NOT NULL) OR x.status = 'delivered')
         RETURNING d.id
       ), log AS (
         INSERT INTO webhook_attempts (delivery_id, order_no, merchant_key, url, attempt, outcome, status_code, response_body, duration_ms, error)
         SELECT id, order_no, merchant_key, url, attempts, outcome, code, response_body, duration_ms, error FROM x
         RETURNING 1
       ), y AS (
         SELECT * FROM jsonb_to_recordset($2::jsonb) AS y(merchant_key text, times jsonb, successes int, failures int,
           had_success boolean, trail int, gone_url text, last_gone boolean, last_code int, last_error text)
         WHERE NOT EXISTS (SELECT 1 FROM prev)
       ), old AS (
         SELECT m.* FROM webhook_merchants m WHERE m.merchant_key IN (SELECT merchant_key FROM y)
         ORDER BY m.merchant_key FOR UPDATE
       ), calc AS (
         SELECT y.*, old.breaker_state AS old_state, old.is_slow AS was_slow,
           (old.recent_ms || ARRAY(SELECT jsonb_array_elements_text(y.times)::int)) AS arr,
           CASE WHEN y.last_gone THEN 0 WHEN y.had_success THEN y.trail ELSE old.consecutive_failures + y.trail END AS cf
         FROM y JOIN old ON old.merchant_key = y.merchant_key
       ), calc2 AS (
         SELECT calc.*, arr[greatest(1, cardinality(arr) - 99):] AS recent FROM calc
       ), calc3 AS (
         SELECT calc2.*,
           coalesce((SELECT avg(v) FROM unnest(recent) v), 0)::double precision AS avg,
           CASE
             WHEN old_state = 'half_open' AND last_gone THEN 'closed'
             WHEN old_state = 'half_open' AND had_success AND trail = 0 THEN 'closed'
             WHEN old_state = 'half_open' AND failures > 0 THEN 'open'
             WHEN old_state = 'closed' AND cf >= $4::int THEN 'open'
             ELSE old_state
           END AS new_state
         FROM calc2
       ), res AS (
         UPDATE webhook_merchants m SET
         recent_ms = c.recent,
         avg_ms = c.avg,
         is_slow = cardinality(c.recent) >= $5::int AND c.avg > $6::double precision,
         consecutive_failures = c.cf,
         breaker_state = c.new_state,
         breaker_opened_at = CASE WHEN c.new_state = 'open' AND c.old_state <> 'open' THEN now() ELSE m.breaker_opened_at END,
         breaker_until = CASE WHEN c.new_state = 'open' AND c.old_state <> 'open' THEN now() + $7::double precision ${MS}
                              WHEN c.new_state = 'closed' THEN NULL ELSE m.breaker_until END,
         trial_until = CASE WHEN c.old_state = 'half_open' AND c.new_state <> 'half_open' THEN NULL ELSE m.trial_until END,
         disabled_url = coalesce(c.gone_url, m.disabled_url),
         disabled_at = CASE WHEN c.gone_url IS NOT NULL THEN now() ELSE m.disabled_at END,
         success_total = m.success_total + c.successes,
         failure_total = m.failure_total + c.failures,
         last_status_code = c.last_code,
         last_error = c.last_error,
         last_attempt_at = now(),
         owner_until = CASE WHEN m.owner_node = $3 THEN now() + $8::double precision ${MS} ELSE m.owner_until END,
         updated_at = now()
       FROM calc3 c
       WHERE m.merchant_key = c.merchant_key
       RETURNING m.merchant_key, m.merchant_id, m.notify_url, c.old_state::text AS old_state,
         m.breaker_state::text AS breaker_state, c.was_slow, m.is_slow, m.avg_ms::double precision AS avg_ms,
         m.consecutive_failures::int AS consecutive_failures
       ), rec AS (
         -- Without ON CONFLICT: a concurrent run of the same batch fails here and is run again (replay).
         INSERT INTO webhook_result_batches (id, transitions)
         SELECT $9::uuid, t FROM (SELECT coalesce(jsonb_agg(to_jsonb(res)), '[]'::jsonb) AS t FROM res) a
         WHERE NOT EXISTS (SELECT 1 FROM prev)
       )
       SELECT * FROM res
       UNION ALL
       SELECT t.* FROM prev, jsonb_to_recordset(prev.transitions) AS t(merchant_key text, merchant_id text,
         notify_url text, old_state text, breaker_state text, was_slow boolean, is_slow boolean,
         avg_ms double precision, consecutive_failures int)`,
        ),
        params,
      );
    let r: Awaited<ReturnType<typeof run>>;
    try {
      r = await run();
    } catch (err) {
      if ((err as { code?: unknown }).code !== '23505') throw err;
      r = await run();
    }
    const transitions = r.rows.map((x) => ({
      merchantKey: x.merchant_key,
      merchantId: x.merchant_id,
      notifyUrl: x.notify_url,
      oldState: x.old_state,
      newState: x.breaker_state,
      wasSlow: x.was_slow,
      isSlow: x.is_slow,
      avgMs: x.avg_ms,
      consecutiveFailures: x.consecutive_failures,
    }));
    const closed = transitions.filter((t) => t.oldState !== 'closed' && t.newState === 'closed');
    if (closed.length > 0) await this.wakeDelayed(closed.map((t) => t.merchantKey));
    return transitions;
  }

  /** A merchant that recovered gets its delay queue back at once. */
  async wakeDelayed(keys: readonly string[], q: Queryable = this.store): Promise<void> {
    await q.query(
      `UPDATE webhook_deliveries SET next_attempt_at = now(), updated_at = now()
       WHERE status = 'delayed' AND merchant_key IN (SELECT jsonb_array_elements_text($1::jsonb))`,
      [JSON.stringify(keys)],
    );
  }

  // ---- cluster-wide alert window -------------------------------------------------------------------

  /**
   * Adds this node's counts since its last call to the shared window table (one row per node and
   * bucket), and deletes rows that left every window.
   */
  async publishWindow(
    bucketMs: number,
    windowMs: number,
    d: { attempts: number; successes: number; totalMs: number; delivered: number; failed: number },
  ): Promise<void> {
    if (d.attempts + d.delivered + d.failed > 0) {
      await this.store.query(
        `INSERT INTO webhook_node_windows AS w (node_id, bucket, attempts, successes, total_ms, delivered, failed)
         VALUES ($1, to_timestamp(floor(extract(epoch FROM now()) * 1000 / $2::double precision) * $2::double precision / 1000),
           $3, $4, $5, $6, $7)
         ON CONFLICT (node_id, bucket) DO UPDATE SET attempts = w.attempts + EXCLUDED.attempts,
           successes = w.successes + EXCLUDED.successes, total_ms = w.total_ms + EXCLUDED.total_ms,
           delivered = w.delivered + EXCLUDED.delivered, failed = w.failed + EXCLUDED.failed`,
        [this.s.nodeId, bucketMs, d.attempts, d.successes, d.totalMs, d.delivered, d.failed],
      );
    }
    await this.store.query(
      `DELETE FROM webhook_node_windows WHERE bucket < now() - ($1::double precision + $2::double precision) ${MS}`,
      [windowMs, bucketMs],
    );
  }

  /** The window's counts over every node (buckets that started within the last `windowMs`). */
  async sharedWindow(windowMs: number): Promise<{
    attempts: number;
    successes: number;
    avgMs: number;
    delivered: number;
    failed: number;
  }> {
    const r = await this.store.query<{
      attempts: number;
      successes: number;
      total_ms: number;
      delivered: number;
      failed: number;
    }>(
      `SELECT coalesce(sum(attempts), 0)::int AS attempts, coalesce(sum(successes), 0)::int AS successes,
              coalesce(sum(total_ms), 0)::double precision AS total_ms,
              coalesce(sum(delivered), 0)::int AS delivered, coalesce(sum(failed), 0)::int AS failed
       FROM webhook_node_windows WHERE bucket > now() - $1::double precision ${MS}`,
      [windowMs],
    );
    const w = r.rows[0] ?? { attempts: 0, successes: 0, total_ms: 0, delivered: 0, failed: 0 };
    return {
      attempts: w.attempts,
      successes: w.successes,
      avgMs: w.attempts > 0 ? w.total_ms / w.attempts : 0,
      delivered: w.delivered,
      failed: w.failed,
    };
  }

  // ---- alert de-duplication ---------------------------------------------------------------------------

  /**
   * Of `keys`, returns those not marked within `cooldownMs`, and marks them now. Atomic per key, so two
   * nodes never both send the same alert inside the cooldown.
   */
  async takeAlertMarks(keys: readonly string[], cooldownMs: number): Promise<string[]> {
    if (keys.length === 0) return [];
    const r = await this.store.query<{ key: string }>(
      `INSERT INTO webhook_alert_marks (key, sent_at)
       SELECT k, now() FROM jsonb_array_elements_text($1::jsonb) AS k
       ON CONFLICT (key) DO UPDATE SET sent_at = now()
         WHERE webhook_alert_marks.sent_at <= now() - $2::double precision ${MS}
       RETURNING key`,
      [JSON.stringify(keys), cooldownMs],
    );
    return r.rows.map((x) => x.key);
  }

  // ---- secrets and merchant settings ------------------------------------------------------------------

  /** The cluster-wide default signing secret: the configured one, else one generated once and kept. */
  async defaultSecret(configured: string | undefined, generated: string): Promise<string> {
    if (configured) return configured;
    await this.store.query(
      `INSERT INTO meta (key, value) VALUES ('webhook_default_secret', to_jsonb($1::text)) ON CONFLICT (key) DO NOTHING`,
      [generated],
    );
    const r = await this.store.query<{ secret: string }>(
      `SELECT value #>> '{}' AS secret FROM meta WHERE key = 'webhook_default_secret'`,
    );
    return r.rows[0]?.secret ?? generated;
  }

  async upsertMerchantSettings(input: {
    merchantKey: string;
    merchantId: string | null;
    notifyUrl: string;
    secret?: string | null;
    requireSuccessBody?: boolean | null;
  }): Promise<MerchantRow> {
    const r = await this.store.query<MerchantRow>(
      `INSERT INTO webhook_merchants (merchant_key, merchant_id, notify_url, secret, require_success_body)
       VALUES ($1, $2, $3, $5, $7)
       ON CONFLICT (merchant_key) DO UPDATE SET
         secret = CASE WHEN $4::boolean THEN EXCLUDED.secret ELSE webhook_merchants.secret END,
         require_success_body = CASE WHEN $6::boolean THEN EXCLUDED.require_success_body ELSE webhook_merchants.require_success_body END,
         updated_at = now()
       RETURNING ${MERCHANT_COLUMNS}`,
      [
        input.merchantKey,
        input.merchantId,
        input.notifyUrl,
        input.secret !== undefined,
        input.secret ?? null,
        input.requireSuccessBody !== undefined,
        input.requireSuccessBody ?? null,
      ],
    );
    return r.rows[0] as MerchantRow;
  }

  // ---- admin ------------------------------------------------------------------------------------------

  /** Merchants whose notify URL (the one last seen) is `notifyUrl`, most recently updated first. */
  async merchantsAt(
    notifyUrl: string,
    limit = 11,
  ): Promise<{ merchant_key: string; merchant_id: string | null }[]> {
    const r = await this.store.query<{ merchant_key: string; merchant_id: string | null }>(
      `SELECT merchant_key, merchant_id FROM webhook_merchants WHERE notify_url = $1
       ORDER BY updated_at DESC, merchant_key LIMIT $2`,
      [notifyUrl, limit],
    );
    return r.rows;
  }

  /** Finds a merchant by key, by merchant id, or by notify URL (its key, or the URL last seen). */
  async findMerchant(by: {
    key?: string;
    notifyUrl?: string;
    merchantId?: string;
  }): Promise<MerchantRow | null> {
    const r = await this.store.query<MerchantRow>(
      `SELECT ${MERCHANT_COLUMNS} FROM webhook_merchants
       WHERE merchant_key = $1 OR merchant_key = $2 OR notify_url = $3
       ORDER BY (merchant_key = $1) DESC, (merchant_key = $2) DESC, updated_at DESC LIMIT 1`,
      [by.key ?? null, by.merchantId ? `id:${by.merchantId}` : null, by.notifyUrl ?? null],
    );
    return r.rows[0] ?? null;
  }

  /**
   * Merchants, breakers and slow ones first, then newest first. Not by last activity: every result batch
   * touches its merchants, so pages in that order shifted while deliveries ran (merchants repeated on the
   * next page, others never shown).
   */
  async listMerchants(page: number, limit: number): Promise<{ total: number; rows: MerchantRow[] }> {
    const [count, rows] = await Promise.all([
      this.store.query<{ n: number }>('SELECT count(*)::int AS n FROM webhook_merchants'),
      this.store.query<MerchantRow>(
        `SELECT ${MERCHANT_COLUMNS} FROM webhook_merchants
         ORDER BY (breaker_state <> 'closed') DESC, is_slow DESC, created_at DESC, merchant_key LIMIT $1 OFFSET $2`,
        [limit, (page - 1) * limit],
      ),
    ]);
    return { total: count.rows[0]?.n ?? 0, rows: rows.rows };
  }

  /** Closes a merchant's breaker, forgets its failures and re-enables a URL disabled by 410 Gone. */
  async resetMerchant(merchantKey: string): Promise<MerchantRow | null> {
    return this.store.transaction(async (tx) => {
      const r = await tx.query<MerchantRow>(
        `UPDATE webhook_merchants SET breaker_state = 'closed', breaker_until = NULL, trial_until = NULL,
           consecutive_failures = 0, disabled_url = NULL, disabled_at = NULL, updated_at = now()
         WHERE merchant_key = $1 RETURNING ${MERCHANT_COLUMNS}`,
        [merchantKey],
      );
      if (r.rows.length > 0) await this.wakeDelayed([merchantKey], tx);
      return r.rows[0] ?? null;
    });
  }

  /** Webhook counts by queue state; `in_flight` are leased rows (also counted in their state). */
  async depth(): Promise<Record<'pending' | 'retrying' | 'delayed' | 'in_flight' | 'failed', number>> {
    const r = await this.store.query<{
      pending: number;
      retrying: number;
      delayed: number;
      in_flight: number;
    }>(
      `SELECT count(*) FILTER (WHERE status = 'pending')::int AS pending,
              count(*) FILTER (WHERE status = 'retrying')::int AS retrying,
              count(*) FILTER (WHERE status = 'delayed')::int AS delayed,
              count(*) FILTER (WHERE locked_until > now())::int AS in_flight
       FROM webhook_deliveries WHERE status IN ${QUEUED_STATUSES}`,
    );
    const f = await this.store.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM webhook_deliveries WHERE status = 'failed'`,
    );
    const row = r.rows[0];
    return {
      pending: row?.pending ?? 0,
      retrying: row?.retrying ?? 0,
      delayed: row?.delayed ?? 0,
      in_flight: row?.in_flight ?? 0,
      failed: f.rows[0]?.n ?? 0,
    };
  }

  async merchantCounts(): Promise<{ open: number; halfOpen: number; slow: number }> {
    const r = await this.store.query<{ open: number; half_open: number; slow: number }>(
      `SELECT count(*) FILTER (WHERE breaker_state = 'open')::int AS open,
              count(*) FILTER (WHERE breaker_state = 'half_open')::int AS half_open,
              count(*) FILTER (WHERE is_slow)::int AS slow
       FROM webhook_merchants WHERE breaker_state <> 'closed' OR is_slow`,
    );
    const row = r.rows[0];
    return { open: row?.open ?? 0, halfOpen: row?.half_open ?? 0, slow: row?.slow ?? 0 };
  }

  /** Queued webhooks of one state, oldest first. */
  async listDeliveries(statuses: readonly string[], limit: number): Promise<DeliveryRow[]> {
    const r = await this.store.query<DeliveryRow>(
      `SELECT ${DELIVERY_COLUMNS} FROM webhook_deliveries
       WHERE status IN (SELECT jsonb_array_elements_text($1::jsonb))
       ORDER BY next_attempt_at, seq LIMIT $2`,
      [JSON.stringify(statuses), limit],
    );
    return r.rows;
  }

  /** The latest webhooks that ended `failed` (the dead letters an admin may retry), newest first. */
  async listFailed(limit: number): Promise<DeliveryRow[]> {
    const r = await this.store.query<DeliveryRow>(
      `SELECT ${DELIVERY_COLUMNS} FROM webhook_deliveries WHERE status = 'failed'
       ORDER BY finished_at DESC NULLS LAST, seq DESC LIMIT $1`,
      [limit],
    );
    return r.rows;
  }

  /**
   * The webhooks a retry reference names, with why retry() left them alone: in flight (leased), delivered
   * (without includeDelivered), or purged by retention.
   */
  async retryBlockers(ref: {
    seq?: number;
    id?: string;
    orderNo?: string;
  }): Promise<{ id: string; status: string; in_flight: boolean; purged: boolean }[]> {
    const r = await this.store.query<{ id: string; status: string; in_flight: boolean; purged: boolean }>(
      `SELECT id, status, coalesce(locked_until > now(), false) AS in_flight, purged_at IS NOT NULL AS purged
       FROM webhook_deliveries WHERE seq = $1 OR id = $2 OR order_no = $3 ORDER BY seq LIMIT 20`,
      [ref.seq ?? null, ref.id ?? null, ref.orderNo ?? null],
    );
    return r.rows;
  }

  async getDelivery(id: string): Promise<DeliveryRow | null> {
    const r = await this.store.query<DeliveryRow>(
      `SELECT ${DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1`,
      [id],
    );
    return r.rows[0] ?? null;
  }

  async logs(filter: {
    page: number;
    limit: number;
    orderNo?: string;
    success?: boolean;
    deliveryId?: string;
    /** Keyset paging: only attempts older than this id (the last id of the previous page); page is ignored. */
    before?: number;
  }): Promise<{ total: number; rows: AttemptRow[] }> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.orderNo) {
      params.push(`${filter.orderNo.replace(/[\\%_]/g, (c) => `\\${c}`)}%`);
      where.push(`order_no LIKE $${params.length}`);
    }
    if (filter.success !== undefined)
      where.push(filter.success ? `outcome = 'success'` : `outcome <> 'success'`);
    if (filter.deliveryId) {
      params.push(filter.deliveryId);
      where.push(`delivery_id = $${params.length}`);
    }
    const clause = where.length > 0 ? `WHERE ${where.join(' AND ')}` : '';
    const count = await this.store.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM webhook_attempts ${clause}`,
      params,
    );
    const keyset = filter.before !== undefined;
    const pageWhere = keyset ? `${clause ? `${clause} AND` : 'WHERE'} id < $${params.length + 3}` : clause;
    const rows = await this.store.query<AttemptRow>(
      `SELECT id, delivery_id, order_no, merchant_key, url, attempt, outcome, status_code, response_body, duration_ms,
         error, created_at
       FROM webhook_attempts ${pageWhere} ORDER BY id DESC LIMIT $${params.length + 1} OFFSET $${params.length + 2}`,
      [
        ...params,
        filter.limit,
        keyset ? 0 : (filter.page - 1) * filter.limit,
        ...(keyset ? [filter.before] : []),
      ],
    );
    return { total: count.rows[0]?.n ?? 0, rows: rows.rows };
  }

  /**
   * Sends finished or waiting webhooks again now, with a fresh retry schedule: by sequence number,
   * webhook id, or every webhook of an order number. Delivered ones are only re-sent when `includeDelivered`.
   */
  async retry(
    ref: { seq?: number; id?: string; orderNo?: string },
    includeDelivered: boolean,
  ): Promise<DeliveryRow[]> {
    const r = await this.store.query<DeliveryRow>(
      `UPDATE webhook_deliveries SET status = 'retrying', attempt_base = attempts, next_attempt_at = now(),
         scheduled_from = now(), finished_at = NULL, updated_at = now()
       WHERE (seq = $1 OR id = $2 OR order_no = $3)
         AND (status IN ('failed', 'delayed', 'retrying', 'pending') OR ($4::boolean AND status = 'delivered'))
         AND (locked_until IS NULL OR locked_until <= now()) AND purged_at IS NULL
       RETURNING ${DELIVERY_COLUMNS}`,
      [ref.seq ?? null, ref.id ?? null, ref.orderNo ?? null, includeDelivered],
    );
    return r.rows;
  }

  async stats(from: Date, to: Date): Promise<Record<string, number | null>> {
    const d = await this.store.query<Record<string, number>>(
      `SELECT count(*)::int AS total,
              count(*) FILTER (WHERE status = 'delivered')::int AS delivered,
              count(*) FILTER (WHERE status = 'failed')::int AS failed,
              count(*) FILTER (WHERE status IN ${QUEUED_STATUSES})::int AS queued,
              count(*) FILTER (WHERE attempts > 1 OR (status = 'retrying'))::int AS retried
       FROM webhook_deliveries WHERE created_at >= $1 AND created_at < $2`,
      [from, to],
    );
    const a = await this.store.query<Record<string, number | null>>(
      `SELECT count(*)::int AS attempts,
              count(*) FILTER (WHERE outcome = 'success')::int AS successful_attempts,
              avg(duration_ms)::double precision AS avg_ms,
              max(duration_ms)::int AS max_ms
       FROM webhook_attempts WHERE created_at >= $1 AND created_at < $2`,
      [from, to],
    );
    return { ...(d.rows[0] ?? {}), ...(a.rows[0] ?? {}) };
  }

  /** Keeps an alert in the history (GET /admin/merchant-notify/alerts). */
  async recordAlert(a: {
    type: string;
    level: string;
    text: string;
    data: Record<string, unknown>;
    at: Date;
  }): Promise<void> {
    const key = typeof a.data.merchant_key === 'string' ? a.data.merchant_key : null;
    await this.store.query(
      'INSERT INTO webhook_alerts (type, level, merchant_key, text, data, created_at) VALUES ($1, $2, $3, $4, $5, $6)',
      [a.type, a.level, key, a.text, JSON.stringify(a.data), a.at],
    );
  }

  /** Alert history, newest first. */
  async alerts(f: { page: number; limit: number; type?: string | undefined }): Promise<{
    total: number;
    rows: Record<string, unknown>[];
  }> {
    const where = f.type ? 'WHERE type = $1' : '';
    const params: unknown[] = f.type ? [f.type] : [];
    const total = await this.store.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM webhook_alerts ${where}`,
      params,
    );
    const rows = await this.store.query<Record<string, unknown>>(
      `SELECT id, type, level, merchant_key, text, data, created_at FROM webhook_alerts ${where}
       ORDER BY created_at DESC, id DESC LIMIT ${f.limit} OFFSET ${(f.page - 1) * f.limit}`,
      params,
    );
    return { total: total.rows[0]?.n ?? 0, rows: rows.rows };
  }

  /**
   * Retention. Attempt logs older than `olderThanMs` are deleted; finished webhooks older than that lose
   * their payload (`purged_at` is set; they can no longer be retried) but keep their row, so that their
   * idempotency key still turns a producer's re-sent notification into a duplicate. Rows are deleted only
   * once finished for longer than `keyRetentionMs` (never less than `olderThanMs`).
   */
  async cleanup(
    olderThanMs: number,
    keyRetentionMs: number,
  ): Promise<{ logs: number; notifications: number; keys: number }> {
    const logs = await this.store.query(
      `DELETE FROM webhook_attempts WHERE created_at < now() - $1::double precision ${MS}`,
      [olderThanMs],
    );
    const notifications = await this.store.query(
      `UPDATE webhook_deliveries SET body = '', purged_at = now()
       WHERE purged_at IS NULL AND finished_at IS NOT NULL AND status IN ('delivered', 'failed')
         AND finished_at < now() - $1::double precision ${MS}`,
      [olderThanMs],
    );
    const keys = await this.store.query(
      `DELETE FROM webhook_deliveries WHERE status IN ('delivered', 'failed')
         AND finished_at < now() - greatest($1::double precision, $2::double precision) ${MS}`,
      [olderThanMs, keyRetentionMs],
    );
    const marks = await this.store.query(
      `DELETE FROM webhook_alert_marks WHERE sent_at < now() - greatest($1::double precision, 604800000) ${MS}`,
      [olderThanMs],
    );
    const alerts = await this.store.query(
      `DELETE FROM webhook_alerts WHERE created_at < now() - $1::double precision ${MS}`,
      [olderThanMs],
    );
    const batches = await this.store.query(
      `DELETE FROM webhook_result_batches WHERE created_at < now() - $1::double precision ${MS}`,
      [RESULT_BATCH_RETENTION_MS],
    );
    // The embedded store has no autovacuum: without a VACUUM a table keeps the space of every row deleted
    // (new rows never reuse it), so the attempt log, whose oldest hour goes at every cleanup, grew without
    // end once the retention began (~40 MB a day at 10,000 attempts an hour, measured with PGlite). One
    // table per statement, only those that lost rows; deleting one hour of a month leaves the indexes
    // alone in most runs (PostgreSQL skips index cleanup below 2 % of pages): ~250 ms at most for a
    // 1.2-million-row log here. The deliveries table is vacuumed by the dispatcher (vacuum()).
    if (this.store.kind === 'embedded') {
      const deleted: [string, number][] = [
        ['webhook_attempts', logs.rowCount],
        ['webhook_alert_marks', marks.rowCount],
        ['webhook_alerts', alerts.rowCount],
        ['webhook_result_batches', batches.rowCount],
      ];
      for (const [table, n] of deleted) if (n > 0) await this.store.query(`VACUUM ${table}`);
    }
    return { logs: logs.rowCount, notifications: notifications.rowCount, keys: keys.rowCount };
  }
}
