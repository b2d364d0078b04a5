import type { Queryable } from '../store/index.js';
import type { MachineFeedItem, PaymentFeedItem, WebhookFeedItem } from './types.js';

/**
 * Live feeds of the console, read from the durable history that payment tracking and the webhook
 * engine write (tables of migrations 010 and 020), so that a console on any node sees the events of
 * every node. A tail reads only what is newer than what it has sent; the rows are read only while a
 * console watches the feed.
 *
 * Identity columns can commit out of order (two concurrent transactions), so a tail re-reads a window
 * of `LOOKBACK` ids below the highest it has seen and skips the ids it has already sent.
 */
const LOOKBACK = 200;
/** At most this many new rows per read: a console shows the latest, it is not an export. */
const BATCH = 100;

function iso(v: unknown): string {
  if (v instanceof Date) return v.toISOString();
  if (typeof v === 'string' || typeof v === 'number') return new Date(v).toISOString();
  return new Date(0).toISOString();
}

function num(v: unknown): number | null {
  if (v === null || v === undefined) return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

function str(v: unknown): string | null {
  return v === null || v === undefined ? null : String(v);
}

/**
 * Reads rows newer than the last one sent, by an increasing id, without sending one twice. Under a
 * burst it sends the newest {@link BATCH} rows of each read: a console shows the latest, it is not an
 * export. Consoles that join later get {@link IdTail.recent} and drop ids they already have.
 */
export class IdTail<T extends { id: number }> {
  private max = -1;
  private readonly sent = new Set<number>();

  constructor(
    /** Rows with an id above `after`, newest first, at most `limit`. */
    private readonly read: (after: number, limit: number) => Promise<T[]>,
  ) {}

  get started(): boolean {
    return this.max >= 0;
  }

  /** The last `limit` rows, oldest first. The first call also starts the tail after them. */
  async recent(limit: number): Promise<T[]> {
    const rows = (await this.read(-1, limit)).sort((a, b) => a.id - b.id);
    if (!this.started) {
      this.max = 0;
      for (const r of rows) this.mark(r.id);
    }
    return rows;
  }

  /** Rows not sent yet, oldest first. */
  async poll(): Promise<T[]> {
    if (!this.started) {
      await this.recent(BATCH);
      return [];
    }
    const rows = await this.read(Math.max(-1, this.max - LOOKBACK), LOOKBACK + BATCH);
    const fresh = rows.filter((r) => !this.sent.has(r.id)).sort((a, b) => a.id - b.id);
    for (const r of fresh) this.mark(r.id);
    return fresh.length > BATCH ? fresh.slice(fresh.length - BATCH) : fresh;
  }

  private mark(id: number): void {
    this.sent.add(id);
    if (id > this.max) this.max = id;
    if (this.sent.size > 4 * LOOKBACK) {
      for (const s of this.sent) if (s <= this.max - LOOKBACK) this.sent.delete(s);
    }
  }
}

const PAYMENT_COLUMNS = `seq::float8 AS seq, app_id, event_id, order_id, merchant_id, device_id, type, outcome,
  from_state, to_state, reason, amount::float8 AS amount, currency, source, occurred_at, received_at`;

function paymentItem(r: Record<string, unknown>): PaymentFeedItem & { id: number } {
  const seq = Number(r.seq);
  return {
    id: seq,
    seq,
    appId: String(r.app_id),
    eventId: String(r.event_id),
    orderId: String(r.order_id),
    merchantId: String(r.merchant_id),
    deviceId: str(r.device_id),
    type: String(r.type),
    outcome: String(r.outcome),
    from: str(r.from_state),
    to: str(r.to_state),
    reason: str(r.reason),
    amount: num(r.amount),
    currency: str(r.currency),
    source: String(r.source),
    occurredAt: iso(r.occurred_at),
    receivedAt: iso(r.received_at),
  };
}

function webhookItem(r: Record<string, unknown>): WebhookFeedItem {
  return {
    id: Number(r.id),
    deliveryId: String(r.delivery_id),
    orderNo: String(r.order_no),
    merchantKey: String(r.merchant_key),
    url: String(r.url),
    attempt: Number(r.attempt),
    outcome: String(r.outcome),
    statusCode: num(r.status_code),
    durationMs: Number(r.duration_ms),
    error: str(r.error),
    at: iso(r.created_at),
  };
}

const WEBHOOK_COLUMNS = `id::float8 AS id, delivery_id, order_no, merchant_key, url, attempt, outcome, status_code,
  duration_ms, error, created_at`;

export function paymentTail(db: Queryable): IdTail<PaymentFeedItem & { id: number }> {
  return new IdTail(async (after, limit) =>
    (
      await db.query(
        `SELECT ${PAYMENT_COLUMNS} FROM payment_events WHERE seq > $1 ORDER BY seq DESC LIMIT $2`,
        [after, limit],
      )
    ).rows.map(paymentItem),
  );
}

export function webhookTail(db: Queryable): IdTail<WebhookFeedItem> {
  return new IdTail(async (after, limit) =>
    (
      await db.query(
        `SELECT ${WEBHOOK_COLUMNS} FROM webhook_attempts WHERE id > $1 ORDER BY id DESC LIMIT $2`,
        [after, limit],
      )
    ).rows.map(webhookItem),
  );
}

/**
 * Machines that went online or offline since the previous read (`changed_at`, or for rows written by
 * an earlier version their connect or disconnect time), by the store's clock (so that nodes with skewed
 * clocks agree). Machine rows are few (one per terminal), so a scan is cheap.
 */
const OVERLAP_MS = 2000;
/** At most this many machine changes per read. */
const MACHINE_BATCH = 500;

export class MachineTail {
  private since: Date | undefined;
  /** Changes sent, by key, so the overlap window of two reads does not send one twice. */
  private readonly sent = new Map<string, number>();

  constructor(private readonly db: Queryable) {}

  async poll(): Promise<MachineFeedItem[]> {
    const { rows } = await this.db.query<Record<string, unknown>>(
      // The limit is the changes' own: over the whole UNION it cut off the row carrying the store's
      // clock when more than 500 machines changed at once, and the tail never moved on again. Under
      // such a burst the newest changes are sent (a console shows the latest, it is not an export).
      `(SELECT now() AS now, app_id, device_id, merchant_id, online, connected_at, disconnected_at, changed
        FROM (SELECT *, coalesce(changed_at, greatest(connected_at, disconnected_at)) AS changed
              FROM payment_machines) m
        WHERE $1::timestamptz IS NOT NULL AND changed > $1::timestamptz
        ORDER BY changed DESC
        LIMIT ${MACHINE_BATCH})
       UNION ALL SELECT now(), NULL, NULL, NULL, NULL, NULL, NULL, NULL`,
      [this.since ?? null],
    );
    const out: MachineFeedItem[] = [];
    for (const r of rows) {
      if (r.app_id === null) {
        // The store's clock, minus a little for transactions that were still committing.
        const now = r.now instanceof Date ? r.now : new Date(String(r.now));
        this.since = new Date(now.getTime() - OVERLAP_MS);
        continue;
      }
      const online = r.online === true;
      const item: MachineFeedItem = {
        appId: String(r.app_id),
        deviceId: String(r.device_id),
        merchantId: String(r.merchant_id),
        online,
        at: iso(online ? r.connected_at : r.disconnected_at),
      };
      const key = `${item.appId}|${item.deviceId}|${online}|${item.at}`;
      if (this.sent.has(key)) continue;
      // Kept by when the row changed (a machine turned offline by another node has an older `at`).
      this.sent.set(key, Date.parse(iso(r.changed)));
      out.push(item);
    }
    const floor = (this.since?.getTime() ?? 0) - OVERLAP_MS;
    for (const [k, at] of this.sent) if (at < floor) this.sent.delete(k);
    return out.sort((a, b) => a.at.localeCompare(b.at));
  }
}
