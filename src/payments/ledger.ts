/**
 * The SQL of payment tracking. One dialect for the embedded store and PostgreSQL. Writes happen in
 * the caller's transaction: orders are locked (`SELECT ... FOR UPDATE`, in key order so that two
 * nodes never deadlock on each other's batches), the state machine decides in memory, then events,
 * new orders and changed orders are written with one set-based statement each.
 */
import { HeraldError } from '../errors.js';
import type { Queryable } from '../store/index.js';
import { decide, FINAL_STATES, ORDER_STATES, type OrderState, TIMEOUT_STATES } from './state-machine.js';
import type { EventSource, Order, PaymentEvent, ReportResult, Transition } from './types.js';

export function orderKey(appId: string, orderId: string): string {
  return `${appId}\u0000${orderId}`;
}

export function eventKey(appId: string, eventId: string): string {
  return `${appId}\u0000${eventId}`;
}

const ORDER_COLUMNS = `app_id, order_id, merchant_id, state, reason, amount::float8 AS amount, currency,
  refunded_amount::float8 AS refunded_amount, notify_url, device_id, version, created_at, updated_at`;

interface OrderRow {
  app_id: string;
  order_id: string;
  merchant_id: string;
  state: OrderState;
  reason: string | null;
  amount: number | null;
  currency: string | null;
  refunded_amount: number | null;
  notify_url: string | null;
  device_id: string | null;
  version: number;
  created_at: Date;
  updated_at: Date;
}

function toOrder(r: OrderRow): Order {
  return {
    appId: r.app_id,
    orderId: r.order_id,
    merchantId: r.merchant_id,
    state: r.state,
    reason: r.reason,
    amount: r.amount === null ? null : Number(r.amount),
    currency: r.currency,
    refundedAmount: r.refunded_amount === null ? null : Number(r.refunded_amount),
    notifyUrl: r.notify_url,
    deviceId: r.device_id,
    version: Number(r.version),
    createdAt: new Date(r.created_at),
    updatedAt: new Date(r.updated_at),
  };
}

/** Locks the existing orders among `keys` until the transaction ends; returns them by orderKey. */
export async function lockOrders(
  tx: Queryable,
  keys: readonly { appId: string; orderId: string }[],
): Promise<Map<string, Order>> {
  const sorted = [...new Map(keys.map((k) => [orderKey(k.appId, k.orderId), k])).values()].sort((a, b) =>
    a.appId === b.appId ? (a.orderId < b.orderId ? -1 : 1) : a.appId < b.appId ? -1 : 1,
  );
  const { rows } = await tx.query<OrderRow>(
    `SELECT ${ORDER_COLUMNS} FROM payment_orders
     WHERE (app_id, order_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
     ORDER BY app_id, order_id FOR UPDATE`,
    [sorted.map((k) => k.appId), sorted.map((k) => k.orderId)],
  );
  return new Map(rows.map((r) => [orderKey(r.app_id, r.order_id), toOrder(r)]));
}

/**
 * Claims up to `limit` orders that are still `created`/`paying` `timeoutMs` after they were created,
 * locked for this transaction; rows another node is working on are skipped.
 */
export async function claimTimedOut(
  tx: Queryable,
  timeoutMs: number,
  limit: number,
): Promise<Map<string, Order>> {
  const { rows } = await tx.query<OrderRow>(
    `SELECT ${ORDER_COLUMNS} FROM payment_orders
     WHERE state = ANY($1::text[]) AND created_at < now() - $2::float8 * interval '1 millisecond'
     ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED`,
    [TIMEOUT_STATES, timeoutMs, limit],
  );
  return new Map(rows.map((r) => [orderKey(r.app_id, r.order_id), toOrder(r)]));
}

/** The synthetic event the sweep applies to an order that timed out. */
export function timeoutEvent(order: Order, now: Date): PaymentEvent {
  return {
    eventId: `timeout:${order.orderId}`,
    orderId: order.orderId,
    appId: order.appId,
    merchantId: order.merchantId,
    deviceId: null,
    type: 'closed',
    amount: null,
    currency: null,
    occurredAt: now,
    notifyUrl: null,
    meta: null,
    reason: 'timeout',
  };
}

export interface Item {
  event: PaymentEvent;
  source: EventSource;
}

export type ItemOutcome = { ok: true; result: ReportResult } | { ok: false; error: HeraldError };

/**
 * Thrown when the INSERT of events met event ids that another transaction stored first (the same
 * event delivered twice at once, possibly to two nodes). The caller rolls back and runs the batch
 * again with these keys marked as duplicates.
 */
export class DuplicateConflict extends Error {
  constructor(readonly keys: ReadonlySet<string>) {
    super(`${keys.size} event id(s) were stored concurrently`);
    this.name = 'DuplicateConflict';
  }
}

/** Thrown when another transaction created one of the batch's new orders first; run the batch again. */
export class OrderConflict extends Error {
  constructor() {
    super('an order was created concurrently');
    this.name = 'OrderConflict';
  }
}

interface EventRow {
  appId: string;
  eventId: string;
  orderId: string;
  merchantId: string;
  deviceId: string | null;
  type: string;
  outcome: 'transition' | 'stale';
  from: string | null;
  to: string | null;
  reason: string | null;
  amount: number | null;
  currency: string | null;
  source: EventSource;
  occurredAt: string;
  meta: string | null;
  webhook: 'pending' | null;
}

function sameAmount(a: number, b: number): boolean {
  return Math.abs(a - b) < 1e-9;
}

/** Checks that an event is consistent with the order it names; returns an error to answer, if any. */
function inconsistency(order: Order, ev: PaymentEvent): HeraldError | undefined {
  const bad = (path: string, message: string) =>
    new HeraldError('invalid_event', `Order ${ev.orderId}: ${message}.`, [{ path, message }]);
  if (order.merchantId !== ev.merchantId) {
    return bad('/merchantId', `belongs to merchant ${order.merchantId}, not ${ev.merchantId}`);
  }
  if (ev.currency !== null && order.currency !== null && ev.currency !== order.currency) {
    return bad('/currency', `is in ${order.currency}, not ${ev.currency}`);
  }
  if (ev.amount !== null && order.amount !== null) {
    if (ev.type === 'refunded') {
      if (ev.amount > order.amount + 1e-9) {
        return bad('/amount', `a refund of ${ev.amount} is more than the order's ${order.amount}`);
      }
    } else if (!sameAmount(ev.amount, order.amount)) {
      return bad('/amount', `the amount is ${order.amount}, not ${ev.amount}`);
    }
  }
  return undefined;
}

export interface ApplyOptions {
  /** Currency of orders whose events give an amount without one. */
  defaultCurrency: string;
  /** Event keys (eventKey) known to be stored already: answered as duplicates. */
  knownDuplicates: ReadonlySet<string>;
}

/**
 * Applies `items`, in order, to the locked `orders` (mutated in place to their new state), and
 * writes every accepted event, new order and changed order in the caller's transaction. Invalid
 * items change nothing and get an error outcome; the others get their result. Returns the
 * transitions to notify once the transaction has committed.
 */
export async function applyEvents(
  tx: Queryable,
  orders: Map<string, Order>,
  items: readonly Item[],
  opts: ApplyOptions,
): Promise<{ outcomes: ItemOutcome[]; transitions: Transition[] }> {
  const outcomes: ItemOutcome[] = [];
  const transitions: Transition[] = [];
  const rows: EventRow[] = [];
  const created = new Set<string>();
  const changed = new Set<string>();
  const seen = new Set<string>();
  const now = Date.now();

  for (const { event: ev, source } of items) {
    const ok = orderKey(ev.appId, ev.orderId);
    const ek = eventKey(ev.appId, ev.eventId);
    let order = orders.get(ok);
    if (seen.has(ek) || opts.knownDuplicates.has(ek)) {
      if (order) {
        outcomes.push({
          ok: true,
          result: { eventId: ev.eventId, orderId: ev.orderId, state: order.state, duplicate: true },
        });
      } else {
        // The id was used by an event of another order: the reporter reused an event id.
        outcomes.push({
          ok: false,
          error: new HeraldError(
            'invalid_event',
            `eventId ${ev.eventId} was already used by an event of another order.`,
            [{ path: '/eventId', message: 'already used by another order' }],
          ),
        });
      }
      continue;
    }
    if (order) {
      const err = inconsistency(order, ev);
      if (err) {
        outcomes.push({ ok: false, error: err });
        continue;
      }
    }
    const d = decide(order ? order.state : null, ev.type);
    if (d.kind === 'invalid') {
      outcomes.push({
        ok: false,
        error: new HeraldError('invalid_transition', `Order ${ev.orderId}: ${d.reason}`, {
          orderId: ev.orderId,
          state: d.state,
          type: ev.type,
          retryable: d.retryable,
        }),
      });
      continue;
    }
    seen.add(ek);
    const row: EventRow = {
      appId: ev.appId,
      eventId: ev.eventId,
      orderId: ev.orderId,
      merchantId: ev.merchantId,
      deviceId: ev.deviceId,
      type: ev.type,
      outcome: d.kind,
      from: null,
      to: null,
      reason: null,
      amount: ev.amount,
      currency: ev.currency,
      source,
      occurredAt: ev.occurredAt.toISOString(),
      meta: ev.meta === null ? null : JSON.stringify(ev.meta),
      webhook: null,
    };
    rows.push(row);

    if (d.kind === 'transition') {
      const reason = d.to === 'closed' ? (ev.reason ?? 'cancelled') : d.to === 'failed' ? ev.reason : null;
      if (!order) {
        order = {
          appId: ev.appId,
          orderId: ev.orderId,
          merchantId: ev.merchantId,
          state: d.to,
          reason,
          amount: ev.type === 'refunded' ? null : ev.amount,
          currency: ev.currency ?? (ev.amount !== null ? opts.defaultCurrency : null),
          refundedAmount: null,
          notifyUrl: ev.notifyUrl,
          deviceId: ev.deviceId,
          version: 1,
          createdAt: new Date(now),
          updatedAt: new Date(now),
        };
        orders.set(ok, order);
        created.add(ok);
      } else {
        order.state = d.to;
        order.reason = reason;
        order.version += 1;
        order.updatedAt = new Date(now);
        if (ev.deviceId !== null) order.deviceId = ev.deviceId;
        fillIn(order, ev, opts.defaultCurrency);
        if (!created.has(ok)) changed.add(ok);
      }
      if (d.to === 'refunded') order.refundedAmount = ev.amount ?? order.amount;
      row.from = d.from;
      row.to = d.to;
      row.reason = reason;
      if (order.notifyUrl !== null) row.webhook = 'pending';
      transitions.push({
        appId: order.appId,
        orderId: order.orderId,
        merchantId: order.merchantId,
        deviceId: order.deviceId,
        from: d.from,
        to: d.to,
        reason,
        amount: order.amount,
        refundedAmount: order.refundedAmount,
        currency: order.currency ?? opts.defaultCurrency,
        notifyUrl: order.notifyUrl,
        version: order.version,
        eventId: ev.eventId,
        occurredAt: ev.occurredAt,
        source,
        at: now,
      });
      outcomes.push({ ok: true, result: { eventId: ev.eventId, orderId: ev.orderId, state: d.to } });
    } else {
      // Stale: no state change, but an outcome that arrived first may have lacked the details
      // (amount, currency, notifyUrl) that the late event carries.
      const o = order as Order;
      if (fillIn(o, ev, opts.defaultCurrency) && !created.has(ok)) changed.add(ok);
      outcomes.push({
        ok: true,
        result: { eventId: ev.eventId, orderId: ev.orderId, state: o.state, stale: true },
      });
    }
  }

  if (rows.length > 0) await insertEvents(tx, rows);
  if (created.size > 0)
    await insertOrders(
      tx,
      [...created].map((k) => orders.get(k) as Order),
    );
  if (changed.size > 0)
    await updateOrders(
      tx,
      [...changed].map((k) => orders.get(k) as Order),
    );
  return { outcomes, transitions };
}

/** Copies details the order lacks from an event; returns whether anything changed. */
function fillIn(order: Order, ev: PaymentEvent, defaultCurrency: string): boolean {
  let changed = false;
  if (order.amount === null && ev.amount !== null && ev.type !== 'refunded') {
    order.amount = ev.amount;
    changed = true;
  }
  if (order.currency === null && (ev.currency !== null || ev.amount !== null)) {
    order.currency = ev.currency ?? defaultCurrency;
    changed = true;
  }
  if (order.notifyUrl === null && ev.notifyUrl !== null) {
    order.notifyUrl = ev.notifyUrl;
    changed = true;
  }
  return changed;
}

const col = <T, K extends keyof T>(list: readonly T[], key: K): T[K][] => list.map((x) => x[key]);

async function insertEvents(tx: Queryable, rows: EventRow[]): Promise<void> {
  const res = await tx.query<{ app_id: string; event_id: string }>(
    `INSERT INTO payment_events (app_id, event_id, order_id, merchant_id, device_id, type, outcome, from_state,
       to_state, reason, amount, currency, source, occurred_at, meta, webhook)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
       $8::text[], $9::text[], $10::text[], $11::numeric[], $12::text[], $13::text[], $14::timestamptz[],
       $15::jsonb[], $16::text[])
     ON CONFLICT (app_id, event_id) DO NOTHING
     RETURNING app_id, event_id`,
    [
      col(rows, 'appId'),
      col(rows, 'eventId'),
      col(rows, 'orderId'),
      col(rows, 'merchantId'),
      col(rows, 'deviceId'),
      col(rows, 'type'),
      col(rows, 'outcome'),
      col(rows, 'from'),
      col(rows, 'to'),
      col(rows, 'reason'),
      col(rows, 'amount'),
      col(rows, 'currency'),
      col(rows, 'source'),
      col(rows, 'occurredAt'),
      col(rows, 'meta'),
      col(rows, 'webhook'),
    ],
  );
  if (res.rows.length !== rows.length) {
    const stored = new Set(res.rows.map((r) => eventKey(r.app_id, r.event_id)));
    throw new DuplicateConflict(
      new Set(rows.map((r) => eventKey(r.appId, r.eventId)).filter((k) => !stored.has(k))),
    );
  }
}

const orderArrays = (list: Order[]) => [
  col(list, 'appId'),
  col(list, 'orderId'),
  col(list, 'merchantId'),
  col(list, 'state'),
  col(list, 'reason'),
  col(list, 'amount'),
  col(list, 'currency'),
  col(list, 'refundedAmount'),
  col(list, 'notifyUrl'),
  col(list, 'deviceId'),
  col(list, 'version'),
];

async function insertOrders(tx: Queryable, list: Order[]): Promise<void> {
  const res = await tx.query(
    `INSERT INTO payment_orders (app_id, order_id, merchant_id, state, reason, amount, currency, refunded_amount,
       notify_url, device_id, version)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[], $7::text[],
       $8::numeric[], $9::text[], $10::text[], $11::int[])
     ON CONFLICT (app_id, order_id) DO NOTHING
     RETURNING app_id`,
    orderArrays(list),
  );
  if (res.rows.length !== list.length) throw new OrderConflict();
}

async function updateOrders(tx: Queryable, list: Order[]): Promise<void> {
  await tx.query(
    `UPDATE payment_orders o SET state = u.state, reason = u.reason, amount = u.amount, currency = u.currency,
       refunded_amount = u.refunded_amount, notify_url = u.notify_url, device_id = u.device_id,
       version = u.version, updated_at = now()
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[], $7::text[],
       $8::numeric[], $9::text[], $10::text[], $11::int[])
       AS u(app_id, order_id, merchant_id, state, reason, amount, currency, refunded_amount, notify_url,
         device_id, version)
     WHERE o.app_id = u.app_id AND o.order_id = u.order_id`,
    orderArrays(list),
  );
}

// ---- merchant notification outbox ----

/**
 * Transitions whose merchant notification was not handed to the webhook engine (the node stopped
 * or the engine failed between commit and enqueue), received between `minAgeMs` and a day ago.
 */
export async function pendingWebhooks(
  q: Queryable,
  minAgeMs: number,
  limit: number,
  defaultCurrency: string,
): Promise<Transition[]> {
  const { rows } = await q.query<{
    app_id: string;
    order_id: string;
    merchant_id: string;
    device_id: string | null;
    from_state: OrderState | null;
    to_state: OrderState;
    reason: string | null;
    event_id: string;
    occurred_at: Date;
    received_at: Date;
    source: EventSource;
    amount: number | null;
    refunded_amount: number | null;
    currency: string | null;
    notify_url: string;
    version: number;
  }>(
    `SELECT e.app_id, e.order_id, o.merchant_id, e.device_id, e.from_state, e.to_state, e.reason, e.event_id,
       e.occurred_at, e.received_at, e.source, o.amount::float8 AS amount,
       CASE WHEN e.to_state = 'refunded' THEN coalesce(e.amount, o.amount)::float8 END AS refunded_amount,
       o.currency, o.notify_url, o.version
     FROM payment_events e JOIN payment_orders o ON o.app_id = e.app_id AND o.order_id = e.order_id
     WHERE e.webhook = 'pending' AND e.received_at < now() - $1::float8 * interval '1 millisecond'
       AND e.received_at > now() - interval '1 day' AND o.notify_url IS NOT NULL
     ORDER BY e.received_at LIMIT $2`,
    [minAgeMs, limit],
  );
  return rows.map((r) => ({
    appId: r.app_id,
    orderId: r.order_id,
    merchantId: r.merchant_id,
    deviceId: r.device_id,
    from: r.from_state,
    to: r.to_state,
    reason: r.reason,
    amount: r.amount === null ? null : Number(r.amount),
    refundedAmount: r.refunded_amount === null ? null : Number(r.refunded_amount),
    currency: r.currency ?? defaultCurrency,
    notifyUrl: r.notify_url,
    version: Number(r.version),
    eventId: r.event_id,
    occurredAt: new Date(r.occurred_at),
    source: r.source,
    at: new Date(r.received_at).getTime(),
  }));
}

/**
 * Marks merchant notifications as handed to the webhook engine (`sent`), or as refused by it for good
 * (`failed`, e.g. a notifyUrl it does not allow).
 */
export async function markWebhooks(
  q: Queryable,
  list: readonly { appId: string; eventId: string }[],
  status: 'sent' | 'failed',
): Promise<void> {
  if (list.length === 0) return;
  await q.query(
    `UPDATE payment_events SET webhook = $3
     WHERE (app_id, event_id) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND webhook = 'pending'`,
    [col(list, 'appId'), col(list, 'eventId'), status],
  );
}

// ---- queries ----

/** Orders with this id (in one app when `appId` is given; an id may exist in several apps). */
export async function findOrders(q: Queryable, orderId: string, appId?: string): Promise<Order[]> {
  const { rows } = await q.query<OrderRow>(
    `SELECT ${ORDER_COLUMNS} FROM payment_orders WHERE order_id = $1 AND ($2::text IS NULL OR app_id = $2)
     ORDER BY app_id LIMIT 10`,
    [orderId, appId ?? null],
  );
  return rows.map(toOrder);
}

export interface HistoryEntry {
  eventId: string;
  type: OrderState;
  outcome: 'transition' | 'stale';
  from: OrderState | null;
  to: OrderState | null;
  reason: string | null;
  deviceId: string | null;
  amount: number | null;
  currency: string | null;
  source: EventSource;
  occurredAt: string;
  receivedAt: string;
  meta: Record<string, unknown> | null;
}

/** Every accepted event of an order, in the order they were stored. */
export async function orderHistory(q: Queryable, appId: string, orderId: string): Promise<HistoryEntry[]> {
  const { rows } = await q.query<{
    event_id: string;
    type: OrderState;
    outcome: 'transition' | 'stale';
    from_state: OrderState | null;
    to_state: OrderState | null;
    reason: string | null;
    device_id: string | null;
    amount: number | null;
    currency: string | null;
    source: EventSource;
    occurred_at: Date;
    received_at: Date;
    meta: Record<string, unknown> | null;
  }>(
    `SELECT event_id, type, outcome, from_state, to_state, reason, device_id, amount::float8 AS amount, currency,
       source, occurred_at, received_at, meta
     FROM payment_events WHERE app_id = $1 AND order_id = $2 ORDER BY seq`,
    [appId, orderId],
  );
  return rows.map((r) => ({
    eventId: r.event_id,
    type: r.type,
    outcome: r.outcome,
    from: r.from_state,
    to: r.to_state,
    reason: r.reason,
    deviceId: r.device_id,
    amount: r.amount === null ? null : Number(r.amount),
    currency: r.currency,
    source: r.source,
    occurredAt: new Date(r.occurred_at).toISOString(),
    receivedAt: new Date(r.received_at).toISOString(),
    meta: r.meta,
  }));
}

export interface OrderFilter {
  appId?: string | undefined;
  merchantId?: string | undefined;
  state?: OrderState | undefined;
  /** Created at or after. */
  from?: Date | undefined;
  /** Created before. */
  to?: Date | undefined;
}

function where(f: OrderFilter, params: unknown[]): string {
  const parts: string[] = [];
  const add = (sql: string, value: unknown) => {
    params.push(value);
    parts.push(sql.replace('?', `$${params.length}`));
  };
  if (f.appId !== undefined) add(`app_id = ?`, f.appId);
  if (f.merchantId !== undefined) add(`merchant_id = ?`, f.merchantId);
  if (f.state !== undefined) add(`state = ?`, f.state);
  if (f.from !== undefined) add(`created_at >= ?::timestamptz`, f.from.toISOString());
  if (f.to !== undefined) add(`created_at < ?::timestamptz`, f.to.toISOString());
  return parts.length > 0 ? `WHERE ${parts.join(' AND ')}` : '';
}

/** A page of orders, newest first. */
export async function listOrders(
  q: Queryable,
  f: OrderFilter,
  page: number,
  limit: number,
): Promise<{ orders: Order[]; total: number }> {
  const params: unknown[] = [];
  const w = where(f, params);
  const total = await q.query<{ n: number }>(`SELECT count(*)::int AS n FROM payment_orders ${w}`, params);
  const { rows } = await q.query<OrderRow>(
    `SELECT ${ORDER_COLUMNS} FROM payment_orders ${w}
     ORDER BY created_at DESC, app_id, order_id LIMIT ${limit} OFFSET ${(page - 1) * limit}`,
    params,
  );
  return { orders: rows.map(toOrder), total: Number(total.rows[0]?.n ?? 0) };
}

export interface Stats {
  counts: Record<OrderState, number>;
  total: number;
  finished: number;
  successRate: number | null;
  throughput: {
    minutes: number;
    eventsPerMinute: number;
    transitionsPerMinute: number;
    perMinute: { minute: string; events: number; transitions: number }[];
  };
}

/**
 * Counts per state of the orders created in [from, to), the success rate among finished ones, and
 * accepted events and transitions per minute over the last `minutes` minutes.
 */
export async function stats(q: Queryable, f: Omit<OrderFilter, 'state'>, minutes: number): Promise<Stats> {
  const params: unknown[] = [];
  const w = where(f, params);
  const byState = await q.query<{ state: OrderState; n: number }>(
    `SELECT state, count(*)::int AS n FROM payment_orders ${w} GROUP BY state`,
    params,
  );
  const counts = Object.fromEntries(ORDER_STATES.map((s) => [s, 0])) as Record<OrderState, number>;
  for (const r of byState.rows) counts[r.state] = Number(r.n);
  const total = ORDER_STATES.reduce((n, s) => n + counts[s], 0);
  const finished = FINAL_STATES.reduce((n, s) => n + counts[s], 0);
  const successRate = finished === 0 ? null : (counts.succeeded + counts.refunded) / finished;

  const tp: unknown[] = [minutes];
  const filters: string[] = [];
  if (f.appId !== undefined) {
    tp.push(f.appId);
    filters.push(`AND app_id = $${tp.length}`);
  }
  if (f.merchantId !== undefined) {
    tp.push(f.merchantId);
    filters.push(`AND merchant_id = $${tp.length}`);
  }
  const perMinute = await q.query<{ minute: Date; events: number; transitions: number }>(
    `WITH span AS (
       SELECT generate_series(date_trunc('minute', now()) - ($1::int - 1) * interval '1 minute',
                              date_trunc('minute', now()), interval '1 minute') AS minute
     ), counted AS (
       SELECT date_trunc('minute', received_at) AS minute, count(*)::int AS events,
              (count(*) FILTER (WHERE outcome = 'transition'))::int AS transitions
       FROM payment_events
       WHERE received_at >= date_trunc('minute', now()) - ($1::int - 1) * interval '1 minute' ${filters.join(' ')}
       GROUP BY 1
     )
     SELECT span.minute, coalesce(counted.events, 0) AS events, coalesce(counted.transitions, 0) AS transitions
     FROM span LEFT JOIN counted ON counted.minute = span.minute ORDER BY span.minute`,
    tp,
  );
  const list = perMinute.rows.map((r) => ({
    minute: new Date(r.minute).toISOString(),
    events: Number(r.events),
    transitions: Number(r.transitions),
  }));
  const sum = (k: 'events' | 'transitions') => list.reduce((n, r) => n + r[k], 0);
  return {
    counts,
    total,
    finished,
    successRate,
    throughput: {
      minutes,
      eventsPerMinute: sum('events') / minutes,
      transitionsPerMinute: sum('transitions') / minutes,
      perMinute: list,
    },
  };
}
