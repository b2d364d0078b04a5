/**
 * The SQL of payment tracking. One dialect for the embedded store and PostgreSQL. Writes happen in
 * the caller's transaction: orders are locked (`SELECT ... FOR UPDATE`, in key order so that two
 * nodes never deadlock on each other's batches), the state machine decides in memory, then events,
 * new orders and changed orders are written with one set-based statement each.
 */
import { createHash, randomUUID } from 'node:crypto';
import { HeraldError } from '../errors.js';
import { type Queryable, SqlError, type Store, statement } from '../store/index.js';
import {
  decide,
  FINAL_STATES,
  ORDER_STATES,
  type OrderState,
  RECONCILED_REASON,
  TIMEOUT_STATES,
} from './state-machine.js';
import type { EventSource, Order, PaymentEvent, ReportResult, Transition } from './types.js';

export function orderKey(appId: string, orderId: string): string {
  return `${appId}\u0000${orderId}`;
}

export function eventKey(appId: string, eventId: string): string {
  return `${appId}\u0000${eventId}`;
}

/**
 * The id of the realtime notification of the transition stored by event `eventId`: derived from the
 * event, so a notification published again (outbox) keeps its id and SDKs drop the second copy.
 * Shaped as a UUID (version 8, name-based on SHA-256).
 */
export function notificationIdOf(appId: string, eventId: string): string {
  const h = createHash('sha256').update(`payment\u0000${appId}\u0000${eventId}`).digest();
  h[6] = ((h[6] as number) & 0x0f) | 0x80;
  h[8] = ((h[8] as number) & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
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

/**
 * Reads the existing orders among `keys`, by orderKey, without locking them: the write of the batch
 * (writeBatch) updates an order only if its version is still the one read here, and aborts itself
 * with OrderConflict otherwise. Events of one order go to one intake lane, so on one node a conflict
 * needs another node (or the timeout sweep) to change the order in between.
 */
export async function loadOrders(
  q: Queryable,
  keys: readonly { appId: string; orderId: string }[],
): Promise<Map<string, Order>> {
  const unique = [...new Map(keys.map((k) => [orderKey(k.appId, k.orderId), k])).values()];
  const { rows } = await q.query<OrderRow>(
    `SELECT ${ORDER_COLUMNS} FROM payment_orders
     WHERE (app_id, order_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
    [unique.map((k) => k.appId), unique.map((k) => k.orderId)],
  );
  return new Map(rows.map((r) => [orderKey(r.app_id, r.order_id), toOrder(r)]));
}

/**
 * Whether some open order was created more than `timeoutMs` ago: read outside any transaction, so that
 * a sweep with nothing to close does not hold the embedded store's one connection for a transaction's
 * round trips (BEGIN, claim, COMMIT: ~18 ms at 3,000 events/s, every sweep).
 */
export async function anyTimedOut(q: Queryable, timeoutMs: number): Promise<boolean> {
  const { rows } = await q.query(
    `SELECT 1 FROM payment_open_orders WHERE created_at < now() - $1::float8 * interval '1 millisecond' LIMIT 1`,
    [timeoutMs],
  );
  return rows.length > 0;
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
     WHERE (app_id, order_id) IN (
         SELECT app_id, order_id FROM payment_open_orders
         WHERE created_at < now() - $2::float8 * interval '1 millisecond' ORDER BY created_at LIMIT $3)
       AND state = ANY($1::text[])
     ORDER BY app_id, order_id FOR UPDATE SKIP LOCKED`,
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

/**
 * Thrown when another statement created one of the batch's new orders first, or changed one of its
 * orders since loadOrders read it; run the batch again.
 */
export class OrderConflict extends Error {
  constructor() {
    super('an order was created or changed concurrently');
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
  meta: Record<string, unknown> | null;
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
  /**
   * The realtime payload of a transition. When given, the batch's notifications are written to the
   * outbox in this transaction (one row) and each transition keeps its payload as `data`.
   */
  realtime?: (t: Transition) => Record<string, unknown>;
  /** Outbox rows (ids) whose notifications were all published, deleted in this transaction. */
  published?: readonly string[];
  /**
   * Keys of the `orders` taken from a node's cache rather than read from the store: the write checks
   * that each still has the version it had, and aborts with OrderConflict otherwise.
   */
  cached?: ReadonlySet<string>;
  /** The store is PostgreSQL: update changed orders through their keys (see WRITE_SQL_KEYED). */
  keyedUpdate?: boolean;
}

/** One realtime notification as kept in an outbox row. */
export interface OutboxNotification {
  id: string;
  appId: string;
  orderId: string;
  merchantId: string;
  deviceId: string | null;
  data: Record<string, unknown>;
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
): Promise<{ outcomes: ItemOutcome[]; transitions: Transition[]; outboxId: string | undefined }> {
  const outcomes: ItemOutcome[] = [];
  const transitions: Transition[] = [];
  const rows: EventRow[] = [];
  const created = new Set<string>();
  const changed = new Set<string>();
  const seen = new Set<string>();
  /** Each touched existing order's state before this batch (for the state counters). */
  const before = new Map<string, OrderState>();
  /** Each existing order's version as read: writeBatch updates it only if it is still that. */
  const readVersion = new Map<string, number>();
  for (const [k, o] of orders) readVersion.set(k, o.version);
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
    const d = decide(order ? order.state : null, ev.type, order ? order.reason : null);
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
      meta: ev.meta,
      webhook: null,
    };
    rows.push(row);

    if (d.kind === 'transition') {
      const reason = d.reconciled
        ? RECONCILED_REASON
        : d.to === 'closed'
          ? (ev.reason ?? 'cancelled')
          : d.to === 'failed'
            ? ev.reason
            : null;
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
        if (!created.has(ok) && !before.has(ok)) before.set(ok, order.state);
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
      const t: Transition = {
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
        notificationId: notificationIdOf(ev.appId, ev.eventId),
      };
      if (opts.realtime) t.data = opts.realtime(t);
      transitions.push(t);
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

  // Counter deltas, folded into the counters later (foldCounts): +1 for each new order's state, -1/+1
  // for each existing order whose state changed; events and transitions per merchant.
  const states = new Map<string, StateDelta>();
  const bump = (o: Order, hour: string | null, state: OrderState, by: number) => {
    const k = `${o.appId}\u0000${o.merchantId}\u0000${hour}\u0000${state}`;
    const d = states.get(k);
    if (d) d.d += by;
    else states.set(k, { a: o.appId, m: o.merchantId, h: hour, s: state, d: by });
  };
  for (const k of created) {
    const o = orders.get(k) as Order;
    bump(o, hourOf(o.createdAt.getTime()), o.state, 1);
  }
  for (const [k, was] of before) {
    const o = orders.get(k) as Order;
    if (o.state === was) continue;
    const hour = hourOf(o.createdAt.getTime());
    bump(o, hour, was, -1);
    bump(o, hour, o.state, 1);
  }
  const minutes = new Map<string, MinuteDelta>();
  for (const r of rows) {
    const k = `${r.appId}\u0000${r.merchantId}`;
    let m = minutes.get(k);
    if (!m) {
      m = { a: r.appId, m: r.merchantId, e: 0, t: 0 };
      minutes.set(k, m);
    }
    m.e++;
    if (r.outcome === 'transition') m.t++;
  }
  const outbox: OutboxNotification[] = [];
  if (opts.realtime) {
    for (const t of transitions) {
      outbox.push({
        id: t.notificationId,
        appId: t.appId,
        orderId: t.orderId,
        merchantId: t.merchantId,
        deviceId: t.deviceId,
        data: t.data as Record<string, unknown>,
      });
    }
  }
  // Orders that may time out are listed in payment_open_orders while they are open.
  const opened: Order[] = [];
  for (const k of created) {
    const o = orders.get(k) as Order;
    if (TIMEOUT_STATES.includes(o.state)) opened.push(o);
  }
  const shut: Order[] = [];
  for (const [k, was] of before) {
    const o = orders.get(k) as Order;
    if (TIMEOUT_STATES.includes(was) && !TIMEOUT_STATES.includes(o.state)) shut.push(o);
  }
  const outboxId = outbox.length > 0 ? randomUUID() : undefined;
  const published = opts.published ?? [];
  // Orders the decisions were taken on from a node's cache are checked by the write (changed ones by
  // their expected version already); a stale cache aborts the write and the batch runs again from the store.
  const checked: WriteInput['checked'] = [];
  for (const k of opts.cached ?? []) {
    if (changed.has(k)) continue;
    const o = orders.get(k);
    if (o) checked.push({ appId: o.appId, orderId: o.orderId, v: readVersion.get(k) as number });
  }
  if (rows.length > 0 || published.length > 0 || checked.length > 0) {
    await writeBatch(tx, {
      events: rows,
      created: [...created].map((k) => orders.get(k) as Order),
      changed: [...changed].map((k) => ({
        ...(orders.get(k) as Order),
        expected: readVersion.get(k) as number,
      })),
      opened,
      shut,
      outboxId,
      outbox,
      published,
      states: [...states.values()].filter((d) => d.d !== 0),
      minutes: [...minutes.values()],
      checked,
      keyed: opts.keyedUpdate === true,
    });
  }
  return { outcomes, transitions, outboxId };
}

/**
 * Counter deltas as a delta row stores them (format 2): grouped by app and hour, each change a flat
 * triple, `{"v":2,"g":[[app, hour, [merchant, state, d, ...]], ...]}`; minutes `{"v":2,"g":[[app,
 * [merchant, events, transitions, ...]], ...]}`. Format 1 (still read: rows written before) was an
 * array of `{a, m, h, s, d}` / `{a, m, e, t}` objects: 5 KB for a batch of 20 events, which PostgreSQL
 * compressed out of line and the fold then parsed on the event loop (10-37 ms every sweep for 200 rows,
 * `npm run bench -- payments`); format 2 is about a third of that.
 */
export function encodeStates(deltas: readonly StateDelta[]): string {
  const groups = new Map<string, [string, string | null, (string | number)[]]>();
  for (const d of deltas) {
    const k = `${d.a}\u0000${d.h}`;
    let g = groups.get(k);
    if (!g) {
      g = [d.a, d.h, []];
      groups.set(k, g);
    }
    g[2].push(d.m, d.s, d.d);
  }
  return JSON.stringify({ v: 2, g: [...groups.values()] });
}

export function encodeMinutes(deltas: readonly MinuteDelta[]): string {
  const groups = new Map<string, [string, (string | number)[]]>();
  for (const d of deltas) {
    let g = groups.get(d.a);
    if (!g) {
      g = [d.a, []];
      groups.set(d.a, g);
    }
    g[1].push(d.m, d.e, d.t);
  }
  return JSON.stringify({ v: 2, g: [...groups.values()] });
}

/** Calls `each` for every state delta of a delta row's text, in either format. */
function eachState(
  text: string,
  each: (a: string, m: string, h: string | null, s: string, d: number) => void,
): void {
  const parsed = JSON.parse(text) as
    | StateDelta[]
    | { v: 2; g: [string, string | null, (string | number)[]][] };
  if (Array.isArray(parsed)) {
    for (const d of parsed) each(d.a, d.m, d.h ?? null, d.s, d.d);
    return;
  }
  for (const [a, h, flat] of parsed.g) {
    for (let i = 0; i + 2 < flat.length; i += 3) {
      each(a, flat[i] as string, h, flat[i + 1] as string, flat[i + 2] as number);
    }
  }
}

/** Calls `each` for every minute delta of a delta row's text, in either format. */
function eachMinute(text: string, each: (a: string, m: string, e: number, t: number) => void): void {
  const parsed = JSON.parse(text) as MinuteDelta[] | { v: 2; g: [string, (string | number)[]][] };
  if (Array.isArray(parsed)) {
    for (const d of parsed) each(d.a, d.m, d.e, d.t);
    return;
  }
  for (const [a, flat] of parsed.g) {
    for (let i = 0; i + 2 < flat.length; i += 3) {
      each(a, flat[i] as string, flat[i + 1] as number, flat[i + 2] as number);
    }
  }
}

/** The UTC hour of a time, as the counters store it (`YYYY-MM-DDTHH:00:00.000`). */
function hourOf(ms: number): string {
  return new Date(Math.floor(ms / 3_600_000) * 3_600_000).toISOString().slice(0, 23);
}

/** A change of the number of orders in a state: app, merchant, creation hour (null: the delta row's), state. */
export interface StateDelta {
  a: string;
  m: string;
  h: string | null;
  s: OrderState;
  d: number;
}

/** Events and transitions of a merchant in a batch (counted in the minute of the delta row). */
export interface MinuteDelta {
  a: string;
  m: string;
  e: number;
  t: number;
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

/** The columns of an event row in the JSON parameter (json_to_recordset). */
const EVENT_RECORD = `"appId" text, "eventId" text, "orderId" text, "merchantId" text, "deviceId" text,
  type text, outcome text, "from" text, "to" text, reason text, amount numeric, currency text, source text,
  "occurredAt" timestamptz, meta jsonb, webhook text`;
/** The fields of an Order written to the store (the JSON.stringify allow-list). */
const ORDER_KEYS = [
  'appId',
  'orderId',
  'merchantId',
  'state',
  'reason',
  'amount',
  'currency',
  'refundedAmount',
  'notifyUrl',
  'deviceId',
  'version',
];
/** The columns of an order in the JSON parameter (json_to_recordset). */
const ORDER_RECORD = `"appId" text, "orderId" text, "merchantId" text, state text, reason text, amount numeric,
  currency text, "refundedAmount" numeric, "notifyUrl" text, "deviceId" text, version int`;
/** A changed order also carries the version it was read with. */
const CHANGED_KEYS = [...ORDER_KEYS, 'expected'];
const CHANGED_RECORD = `${ORDER_RECORD}, expected int`;
/**
 * A new order also carries its creation time, taken on the node: the order a node keeps in its cache
 * (OrderCache) and the stored one then agree on the hour its counters are kept in.
 */
const CREATED_KEYS = [...ORDER_KEYS, 'createdAt'];
const CREATED_RECORD = `${ORDER_RECORD}, "createdAt" timestamptz`;

/** Parameter positions of the one write statement (see writeBatch). */
const P = (() => {
  let n = 1;
  const take = (k: number) => {
    const at = n;
    n += k;
    return at;
  };
  return {
    events: take(1),
    created: take(1),
    changed: take(1),
    opened: take(2),
    shut: take(2),
    outboxId: take(1),
    outbox: take(1),
    published: take(1),
    states: take(1),
    minutes: take(1),
    checked: take(3),
    changedKeys: take(2),
  };
})();

/**
 * Every write of a batch in ONE statement (one round trip): data-modifying CTEs that all see the
 * snapshot taken before it. Events, new orders, changed orders, the list of open orders, one outbox
 * row holding the batch's
 * realtime notifications, deletion of outbox rows already published, and one row of counter deltas.
 * The result tells which events and orders another transaction stored first; the caller then rolls
 * back and runs the batch again.
 */
const writeSql = (keyed: boolean) => `
WITH ev AS (
  INSERT INTO payment_events (app_id, event_id, order_id, merchant_id, device_id, type, outcome, from_state,
    to_state, reason, amount, currency, source, occurred_at, meta, webhook)
  SELECT "appId", "eventId", "orderId", "merchantId", "deviceId", type, outcome, "from", "to", reason, amount,
    currency, source, "occurredAt", meta, webhook
  FROM json_to_recordset($${P.events}::json) AS x(${EVENT_RECORD})
  ON CONFLICT (app_id, event_id) DO NOTHING
  RETURNING app_id, event_id
), ins AS (
  INSERT INTO payment_orders (app_id, order_id, merchant_id, state, reason, amount, currency, refunded_amount,
    notify_url, device_id, version, created_at, updated_at)
  SELECT "appId", "orderId", "merchantId", state, reason, amount, currency, "refundedAmount", "notifyUrl",
    "deviceId", version, "createdAt", "createdAt"
  FROM json_to_recordset($${P.created}::json) AS x(${CREATED_RECORD})
  ON CONFLICT (app_id, order_id) DO NOTHING
  RETURNING 1
), upd AS (
  UPDATE payment_orders o SET state = u.state, reason = u.reason, amount = u.amount, currency = u.currency,
    refunded_amount = u."refundedAmount", notify_url = u."notifyUrl", device_id = u."deviceId",
    version = u.version, updated_at = now()
  FROM json_to_recordset($${P.changed}::json) AS u(${CHANGED_RECORD})
  WHERE o.app_id = u."appId" AND o.order_id = u."orderId" AND o.version = u.expected
${keyed ? `  AND (o.app_id, o.order_id) IN (SELECT * FROM unnest($${P.changedKeys}::text[], $${P.changedKeys + 1}::text[]))` : ''}
  RETURNING 1
), op AS (
  INSERT INTO payment_open_orders (app_id, order_id, created_at)
  SELECT a, o, now() FROM unnest($${P.opened}::text[], $${P.opened + 1}::text[]) AS x(a, o)
  ON CONFLICT (app_id, order_id) DO NOTHING
  RETURNING 1
), sh AS (
  DELETE FROM payment_open_orders
  WHERE (app_id, order_id) IN (SELECT * FROM unnest($${P.shut}::text[], $${P.shut + 1}::text[]))
  RETURNING 1
), ob AS (
  INSERT INTO payment_outbox_batches (id, notifications)
  SELECT $${P.outboxId}::text, $${P.outbox}::text WHERE $${P.outboxId}::text IS NOT NULL
  RETURNING 1
), done AS (
  DELETE FROM payment_outbox_batches WHERE id = ANY($${P.published}::text[])
  RETURNING 1
), deltas AS (
  INSERT INTO payment_count_deltas (states, minutes)
  SELECT $${P.states}::text, $${P.minutes}::text WHERE $${P.minutes}::text <> '[]'
  RETURNING 1
), chk AS (
  SELECT 1 FROM payment_orders o
    JOIN unnest($${P.checked}::text[], $${P.checked + 1}::text[], $${P.checked + 2}::int[]) AS x(a, k, v)
      ON o.app_id = x.a AND o.order_id = x.k
  WHERE o.version = x.v
)
SELECT CASE
    WHEN (SELECT count(*) FROM ev) <> json_array_length($${P.events}::json) THEN herald_payment_conflict('events',
      (SELECT coalesce(json_agg(json_build_array(ev.app_id, ev.event_id)), '[]'::json) FROM ev)::text)
    WHEN (SELECT count(*) FROM ins) <> json_array_length($${P.created}::json)
      OR (SELECT count(*) FROM upd) <> json_array_length($${P.changed}::json)
      OR (SELECT count(*) FROM chk) <> cardinality($${P.checked}::text[])
      THEN herald_payment_conflict('orders', '')
    ELSE 0 END AS conflict,
  (SELECT count(*) FROM op)::int AS opened, (SELECT count(*) FROM sh)::int AS shut,
  (SELECT count(*) FROM ob)::int AS outbox, (SELECT count(*) FROM done)::int AS done,
  (SELECT count(*) FROM deltas)::int AS deltas`;
/**
 * On PostgreSQL the changed orders' keys go again as arrays: the planner knows how many rows unnest
 * gives (not json_to_recordset: always 100) and updates the orders through their primary key. Without
 * them, on a table of 10,000-25,000 orders it chose a sequential scan and a hash join, 4-6 ms of every
 * batch (auto_explain, `npm run bench -- payments --store postgres`). Not on the embedded store: PGlite
 * keeps no statistics (no autovacuum) and with the keys it stalled for hundreds of ms at times (p99
 * 380-740 ms in 4 of 6 runs of `npm run bench -- payments`, against 117-184 ms without them).
 */
/**
 * Prepared on PostgreSQL, planned at every run (a generic plan made while the tables are small keeps
 * sequential scans): `npm run bench -- payments --store postgres`, PostgreSQL 0.57 cores against 0.66-0.67
 * unprepared, store time per batch 2.9-3.6 ms against 3.7-4.1 (2 alternated pairs).
 */
const WRITE_SQL_KEYED = statement('payment_write_keyed', writeSql(true), { plan: 'custom' });
/** The embedded store's (see above): prepared in the PGlite worker, where parsing it was ~4 ms a batch. */
const WRITE_SQL = statement('payment_write', writeSql(false), { plan: 'custom' });

/** The SQLSTATE herald_payment_conflict raises (migration 027). */
const CONFLICT_SQLSTATE = 'HR409';

interface WriteInput {
  events: EventRow[];
  created: Order[];
  changed: (Order & { expected: number })[];
  opened: Order[];
  shut: Order[];
  outboxId: string | undefined;
  outbox: OutboxNotification[];
  published: readonly string[];
  states: StateDelta[];
  minutes: MinuteDelta[];
  /** Update the changed orders through their keys (PostgreSQL; see WRITE_SQL_KEYED). */
  keyed: boolean;
  /** Orders decided on from the cache and not changed: the write aborts unless each still has this version. */
  checked: { appId: string; orderId: string; v: number }[];
}

/**
 * Writes a batch with one statement, atomic by itself (no explicit transaction needed). It aborts
 * itself, writing nothing, when another statement stored one of its events or new orders first or
 * changed one of its orders since it was read: DuplicateConflict / OrderConflict.
 */
async function writeBatch(q: Queryable, w: WriteInput): Promise<void> {
  const ev = w.events;
  const params: unknown[] = [
    JSON.stringify(ev),
    JSON.stringify(w.created, CREATED_KEYS),
    JSON.stringify(w.changed, CHANGED_KEYS),
    col(w.opened, 'appId'),
    col(w.opened, 'orderId'),
    col(w.shut, 'appId'),
    col(w.shut, 'orderId'),
    w.outboxId ?? null,
    w.outboxId === undefined ? null : JSON.stringify(w.outbox),
    w.published,
    encodeStates(w.states),
    w.minutes.length === 0 ? '[]' : encodeMinutes(w.minutes),
    col(w.checked, 'appId'),
    col(w.checked, 'orderId'),
    w.checked.map((c) => c.v),
    col(w.changed, 'appId'),
    col(w.changed, 'orderId'),
  ];
  try {
    if (w.keyed) await q.query(WRITE_SQL_KEYED, params);
    else await q.query(WRITE_SQL, params.slice(0, P.changedKeys - 1));
  } catch (err) {
    if (!(err instanceof SqlError) || err.code !== CONFLICT_SQLSTATE) throw err;
    if (!err.message.endsWith('events')) throw new OrderConflict();
    const stored = new Set(
      (JSON.parse(err.detail ?? '[]') as [string, string][]).map(([a, e]) => eventKey(a, e)),
    );
    throw new DuplicateConflict(
      new Set(ev.map((x) => eventKey(x.appId, x.eventId)).filter((k) => !stored.has(k))),
    );
  }
}

/** Deletes outbox rows whose notifications were all published (when no batch transaction took them). */
export async function deletePublished(q: Queryable, ids: readonly string[]): Promise<void> {
  if (ids.length === 0) return;
  await q.query('DELETE FROM payment_outbox_batches WHERE id = ANY($1::text[])', [ids]);
}

/** Whether some outbox row was written at least `minAgeMs` ago (read outside a transaction; see anyTimedOut). */
export async function anyOutboxOlder(q: Queryable, minAgeMs: number): Promise<boolean> {
  const { rows } = await q.query(
    `SELECT 1 FROM payment_outbox_batches WHERE created_at <= now() - $1::float8 * interval '1 millisecond' LIMIT 1`,
    [minAgeMs],
  );
  return rows.length > 0;
}

/**
 * Claims outbox rows written at least `minAgeMs` ago, oldest first, locked for the caller's
 * transaction (rows another node is publishing are skipped).
 */
export async function claimOutbox(
  tx: Queryable,
  minAgeMs: number,
  limit: number,
): Promise<{ id: string; notifications: OutboxNotification[] }[]> {
  const { rows } = await tx.query<{ id: string; notifications: string }>(
    `SELECT id, notifications FROM payment_outbox_batches
     WHERE created_at <= now() - $1::float8 * interval '1 millisecond'
     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED`,
    [minAgeMs, limit],
  );
  return rows.map((r) => ({ id: r.id, notifications: JSON.parse(r.notifications) as OutboxNotification[] }));
}

/** Expands the counter delta rows (alias `d`) into state rows: app_id, merchant_id ('' too), hour, state, n. */
const STATE_DELTAS = `
  SELECT x.a AS app_id, mm.m AS merchant_id,
    coalesce(x.h, date_trunc('hour', d.created_at AT TIME ZONE 'UTC')) AS hour, x.s AS state, x.d AS n
  FROM (
    SELECT v1.a, v1.m, v1.h, v1.s, v1.d
    FROM json_to_recordset(CASE WHEN left(d.states, 1) = '[' THEN d.states::json END)
      AS v1(a text, m text, h timestamp, s text, d int)
    UNION ALL
    SELECT g->>0, g->2->>(3 * i), (g->>1)::timestamp, g->2->>(3 * i + 1), (g->2->>(3 * i + 2))::int
    FROM json_array_elements(CASE WHEN left(d.states, 1) = '{' THEN d.states::json->'g' END) AS g
      CROSS JOIN LATERAL generate_series(0, json_array_length(g->2) / 3 - 1) AS i
  ) x
    CROSS JOIN LATERAL (VALUES (x.m), ('')) AS mm(m)`;
/** Expands the counter delta rows (alias `d`) into minute rows: app_id, merchant_id ('' too), minute, events, transitions. */
const MINUTE_DELTAS = `
  SELECT x.a AS app_id, mm.m AS merchant_id, date_trunc('minute', d.created_at AT TIME ZONE 'UTC') AS minute,
    x.e AS events, x.t AS transitions
  FROM (
    SELECT v1.a, v1.m, v1.e, v1.t
    FROM json_to_recordset(CASE WHEN left(d.minutes, 1) = '[' THEN d.minutes::json END)
      AS v1(a text, m text, e int, t int)
    UNION ALL
    SELECT g->>0, g->1->>(3 * i), (g->1->>(3 * i + 1))::int, (g->1->>(3 * i + 2))::int
    FROM json_array_elements(CASE WHEN left(d.minutes, 1) = '{' THEN d.minutes::json->'g' END) AS g
      CROSS JOIN LATERAL generate_series(0, json_array_length(g->1) / 3 - 1) AS i
  ) x
    CROSS JOIN LATERAL (VALUES (x.m), ('')) AS mm(m)`;

/** What a fold did: delta rows folded, counter rows written, and whether rows were left for another pass. */
export interface FoldResult {
  rows: number;
  counters: number;
  more: boolean;
  /** Another node folded some of the rows read meanwhile: nothing was written (they are folded there). */
  conflict?: boolean;
}

/**
 * Folds counter deltas into the counters: a delta is in the deltas or in the counters, never both.
 *
 * The rows are READ first, `chunk` at a time (up to `chunks` times), with no lock and outside any
 * transaction, and summed on the event loop as they come; then ONE statement deletes exactly the rows
 * read and writes the counters once. On the embedded store every statement and transaction runs in turn
 * with the payment intake, so the fold must not hold the store while it reads and sums: a fold that did
 * (one transaction of chunked `DELETE … RETURNING` and sums) held it 65-115 ms every sweep at 3,000
 * events/s, and every event that arrived meanwhile waited (the bench's worst windows, every 5 s). If
 * another node folds some of the same rows meanwhile, the statement deletes fewer rows than it read: it
 * raises (`HR409`), writes nothing, and this fold reports `conflict` (the other node counted them).
 *
 * The deltas are summed here, not in SQL: expanding every row with `json_to_recordset` took a
 * PostgreSQL backend ~0.4 ms per row (300-400 ms of a core every sweep under 3,000 events/s, which
 * slowed the intake transactions running meanwhile); summed here, the upsert writes one row per counter
 * that changed, whatever the number of deltas. And once per fold, not per chunk: at 3,000 events/s a
 * sweep found ~1,900 delta rows, and every chunk of 200 changed 600-800 counter rows (each merchant's and
 * the app's per state and minute), so ten upserts a sweep rewrote the same counters ten times.
 */
export async function foldCounts(store: Store, chunk: number, chunks = 1): Promise<FoldResult> {
  const sum = new DeltaSum();
  const ids: string[] = [];
  let after = '0';
  let more = false;
  for (let i = 0; i < chunks; i++) {
    // Ordered by the bigint column (an `id::text AS id` would sort by the text, and page wrongly).
    const taken = await store.query<{ key: string; states: string; minutes: string; ms: number | string }>(
      `SELECT d.id::text AS key, d.states, d.minutes, (extract(epoch FROM d.created_at) * 1000)::float8 AS ms
       FROM payment_count_deltas d WHERE d.id > $1::bigint ORDER BY d.id LIMIT $2`,
      [after, chunk],
    );
    sum.add(taken.rows);
    for (const r of taken.rows) ids.push(r.key);
    more = taken.rows.length === chunk;
    if (!more) break;
    after = ids[ids.length - 1] as string;
  }
  if (ids.length === 0) return { rows: 0, counters: 0, more: false };
  const { states, minutes } = sum.result();
  try {
    await store.query(FOLD_SQL, [JSON.stringify(states), JSON.stringify(minutes), ids]);
  } catch (err) {
    if (err instanceof SqlError && err.code === CONFLICT_SQLSTATE) {
      return { rows: 0, counters: 0, more: false, conflict: true };
    }
    throw err;
  }
  return { rows: ids.length, counters: states.length + minutes.length, more };
}

/**
 * Deletes the delta rows $3 and adds their sums ($1 per state and hour, $2 per minute) to the counters,
 * in one statement (so atomically, without a transaction round trip), or raises HR409 and changes
 * nothing when some of the rows are gone (another node folded them).
 */
const FOLD_SQL = `WITH d AS (
  DELETE FROM payment_count_deltas WHERE id = ANY($3::bigint[]) RETURNING 1
), s AS (
  INSERT INTO payment_state_counts AS c (app_id, merchant_id, hour, state, shard, n)
  SELECT x.a, x.m, x.h, x.s, 0, x.n FROM json_to_recordset($1::json) AS x(a text, m text, h timestamp, s text, n bigint)
  ORDER BY 1, 2, 3, 4
  ON CONFLICT (app_id, merchant_id, hour, state, shard) DO UPDATE SET n = c.n + excluded.n
  RETURNING 1
), m AS (
  INSERT INTO payment_minute_counts AS c (app_id, merchant_id, minute, shard, events, transitions)
  SELECT x.a, x.m, x.h, 0, x.e, x.t FROM json_to_recordset($2::json) AS x(a text, m text, h timestamp, e bigint, t bigint)
  ORDER BY 1, 2, 3
  ON CONFLICT (app_id, merchant_id, minute, shard) DO UPDATE
    SET events = c.events + excluded.events, transitions = c.transitions + excluded.transitions
  RETURNING 1
)
SELECT CASE WHEN (SELECT count(*) FROM d) <> cardinality($3::bigint[])
    THEN herald_payment_conflict('fold', 'counter deltas folded by another node meanwhile')
    ELSE 0 END AS conflict,
  (SELECT count(*) FROM s)::int AS s, (SELECT count(*) FROM m)::int AS m`;

/** A counter row's change: app, merchant ('' for the app's total), hour or minute (UTC), and the amounts. */
interface SummedState {
  a: string;
  m: string;
  h: string;
  s: string;
  n: number;
}
interface SummedMinute {
  a: string;
  m: string;
  h: string;
  e: number;
  t: number;
}

/**
 * Sums delta rows per counter, a few rows at a time (`add`): each delta counts for its merchant and for
 * the app's total (merchant ''); a state delta without an hour belongs to the hour its row was written
 * in, a minute delta to the minute. `result` leaves out counters whose changes cancel out.
 */
export class DeltaSum {
  private readonly states = new Map<string, SummedState>();
  private readonly minutes = new Map<string, SummedMinute>();

  private addState(a: string, m: string, h: string, s: string, n: number): void {
    const k = `${a}\u0000${m}\u0000${h}\u0000${s}`;
    const c = this.states.get(k);
    if (c) c.n += n;
    else this.states.set(k, { a, m, h, s, n });
  }

  private addMinute(a: string, m: string, h: string, e: number, t: number): void {
    const k = `${a}\u0000${m}\u0000${h}`;
    const c = this.minutes.get(k);
    if (c) {
      c.e += e;
      c.t += t;
    } else this.minutes.set(k, { a, m, h, e, t });
  }

  add(rows: readonly { states: string; minutes: string; ms: number | string }[]): this {
    for (const row of rows) {
      const ms = Number(row.ms);
      const rowHour = hourOf(ms);
      eachState(row.states, (a, m, h, s, d) => {
        this.addState(a, m, h ?? rowHour, s, d);
        this.addState(a, '', h ?? rowHour, s, d);
      });
      const minute = new Date(Math.floor(ms / 60_000) * 60_000).toISOString().slice(0, 23);
      eachMinute(row.minutes, (a, m, e, t) => {
        this.addMinute(a, m, minute, e, t);
        this.addMinute(a, '', minute, e, t);
      });
    }
    return this;
  }

  result(): { states: SummedState[]; minutes: SummedMinute[] } {
    return {
      states: [...this.states.values()].filter((c) => c.n !== 0),
      minutes: [...this.minutes.values()],
    };
  }
}

/** Sums delta rows per counter (see DeltaSum). Exported for tests. */
export function sumDeltas(rows: readonly { states: string; minutes: string; ms: number | string }[]): {
  states: SummedState[];
  minutes: SummedMinute[];
} {
  return new DeltaSum().add(rows).result();
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
    notificationId: notificationIdOf(r.app_id, r.event_id),
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

/**
 * Where a page of orders ended: the last order's creation time (the store's text, to the microsecond:
 * a JavaScript Date keeps only milliseconds), app and order id. The next page starts after it.
 */
export interface OrderCursor {
  createdAt: string;
  appId: string;
  orderId: string;
}

/**
 * A page of orders, newest first (creation time, then app and order id: a total order that never
 * changes, since an order keeps its creation time). With `after`, the page starts after that order
 * (keyset paging: no order is skipped or repeated when orders are created between pages, as offsets
 * do); else page `page`. `next` is where this page ended, when it is full.
 */
export async function listOrders(
  q: Queryable,
  f: OrderFilter,
  page: number,
  limit: number,
  after?: OrderCursor,
): Promise<{ orders: Order[]; total: number; next: OrderCursor | null }> {
  const params: unknown[] = [];
  const w = where(f, params);
  const total = await q.query<{ n: number }>(`SELECT count(*)::int AS n FROM payment_orders ${w}`, params);
  let range = w;
  let offset = (page - 1) * limit;
  if (after) {
    params.push(after.createdAt, after.appId, after.orderId);
    const [t, a, o] = [params.length - 2, params.length - 1, params.length];
    const keyset = `(created_at < $${t}::timestamptz OR (created_at = $${t}::timestamptz AND (app_id, order_id) > ($${a}, $${o})))`;
    range = w ? `${w} AND ${keyset}` : `WHERE ${keyset}`;
    offset = 0;
  }
  const { rows } = await q.query<OrderRow & { created_text: string }>(
    `SELECT ${ORDER_COLUMNS}, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' AS created_text FROM payment_orders ${range}
     ORDER BY created_at DESC, app_id, order_id LIMIT ${limit} OFFSET ${offset}`,
    params,
  );
  const last = rows.length === limit ? rows.at(-1) : undefined;
  return {
    orders: rows.map(toOrder),
    total: Number(total.rows[0]?.n ?? 0),
    next: last ? { createdAt: last.created_text, appId: last.app_id, orderId: last.order_id } : null,
  };
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

const HOUR = 3_600_000;
/** A UTC `timestamp` literal for a time in ms (the counters' hour and minute columns are UTC). */
const utc = (ms: number) => new Date(ms).toISOString().slice(0, 23);

/**
 * Counts per state of the orders created in [from, to), the success rate among finished ones, and
 * accepted events and transitions per minute over the last `minutes` minutes.
 *
 * Read from counters (payment_state_counts per creation hour, payment_minute_counts per minute) plus
 * the delta rows each batch transaction wrote and the sweep has not folded in yet, in one statement
 * (one snapshot), so the figures match the committed orders and the cost does not grow with their
 * number; the partial hours at the edges of [from, to) are counted from the orders (created_at indexes).
 */
export async function stats(q: Queryable, f: Omit<OrderFilter, 'state'>, minutes: number): Promise<Stats> {
  const counts = Object.fromEntries(ORDER_STATES.map((s) => [s, 0])) as Record<OrderState, number>;
  const add = (rows: { state: string; n: number | string }[]) => {
    for (const r of rows) {
      if ((ORDER_STATES as readonly string[]).includes(r.state)) counts[r.state as OrderState] += Number(r.n);
    }
  };
  const from = f.from?.getTime();
  const to = f.to?.getTime();
  const hoursFrom = from === undefined ? undefined : Math.ceil(from / HOUR) * HOUR;
  const hoursTo = to === undefined ? undefined : Math.floor(to / HOUR) * HOUR;
  /** Orders created in [a, b), counted from the orders table. */
  const scan = async (a: number | undefined, b: number | undefined) => {
    const params: unknown[] = [];
    const w = where({ appId: f.appId, merchantId: f.merchantId }, params);
    const parts = [w || 'WHERE true'];
    // Across apps: enumerate the app ids through the (app_id, created_at) index, one probe each, so
    // that the time range is read through that index too.
    if (f.appId === undefined) parts.push(`app_id IN (SELECT app_id FROM apps WHERE app_id IS NOT NULL)`);
    if (a !== undefined) {
      params.push(new Date(a).toISOString());
      parts.push(`created_at >= $${params.length}::timestamptz`);
    }
    if (b !== undefined) {
      params.push(new Date(b).toISOString());
      parts.push(`created_at < $${params.length}::timestamptz`);
    }
    const apps = `WITH RECURSIVE apps AS (
        (SELECT app_id FROM payment_orders ORDER BY app_id LIMIT 1)
        UNION ALL
        SELECT (SELECT p.app_id FROM payment_orders p WHERE p.app_id > apps.app_id ORDER BY p.app_id LIMIT 1)
        FROM apps WHERE apps.app_id IS NOT NULL)`;
    const { rows } = await q.query<{ state: string; n: number }>(
      `${f.appId === undefined ? apps : ''}
       SELECT state, count(*)::int AS n FROM payment_orders ${parts.join(' AND ')} GROUP BY state`,
      params,
    );
    add(rows);
  };
  if (from !== undefined && to !== undefined && (hoursFrom as number) >= (hoursTo as number)) {
    if (from < to) await scan(from, to);
  } else {
    const params: unknown[] = [f.merchantId ?? ''];
    const parts = ['merchant_id = $1'];
    if (f.appId !== undefined) {
      params.push(f.appId);
      parts.push(`app_id = $${params.length}`);
    }
    if (hoursFrom !== undefined) {
      params.push(utc(hoursFrom));
      parts.push(`hour >= $${params.length}::timestamp`);
    }
    if (hoursTo !== undefined) {
      params.push(utc(hoursTo));
      parts.push(`hour < $${params.length}::timestamp`);
    }
    const { rows } = await q.query<{ state: string; n: number }>(
      `SELECT state, sum(n)::bigint AS n FROM (
         SELECT app_id, merchant_id, hour, state, n FROM payment_state_counts
         UNION ALL SELECT x.* FROM payment_count_deltas d CROSS JOIN LATERAL (${STATE_DELTAS}) x
       ) t WHERE ${parts.join(' AND ')} GROUP BY state`,
      params,
    );
    add(rows);
    if (from !== undefined && from < (hoursFrom as number)) await scan(from, hoursFrom);
    if (to !== undefined && (hoursTo as number) < to) await scan(hoursTo, to);
  }
  const total = ORDER_STATES.reduce((n, s) => n + counts[s], 0);
  const finished = FINAL_STATES.reduce((n, s) => n + counts[s], 0);
  const successRate = finished === 0 ? null : (counts.succeeded + counts.refunded) / finished;

  const tp: unknown[] = [minutes, f.merchantId ?? ''];
  const appFilter = f.appId === undefined ? '' : `AND app_id = $${tp.push(f.appId)}`;
  const perMinute = await q.query<{ minute: Date | string; events: number; transitions: number }>(
    `WITH span AS (
       SELECT generate_series(date_trunc('minute', now() AT TIME ZONE 'UTC') - ($1::int - 1) * interval '1 minute',
                              date_trunc('minute', now() AT TIME ZONE 'UTC'), interval '1 minute') AS minute
     ), counted AS (
       SELECT minute, sum(events)::bigint AS events, sum(transitions)::bigint AS transitions
       FROM (
         SELECT app_id, merchant_id, minute, events, transitions FROM payment_minute_counts
         UNION ALL SELECT x.* FROM payment_count_deltas d CROSS JOIN LATERAL (${MINUTE_DELTAS}) x
       ) t
       WHERE merchant_id = $2 ${appFilter}
         AND minute >= date_trunc('minute', now() AT TIME ZONE 'UTC') - ($1::int - 1) * interval '1 minute'
       GROUP BY minute
     )
     SELECT to_char(span.minute, 'YYYY-MM-DD"T"HH24:MI:SS".000Z"') AS minute,
       coalesce(counted.events, 0) AS events, coalesce(counted.transitions, 0) AS transitions
     FROM span LEFT JOIN counted ON counted.minute = span.minute ORDER BY span.minute`,
    tp,
  );
  const list = perMinute.rows.map((r) => ({
    minute: String(r.minute),
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

/**
 * The tables the sweep vacuums on the embedded store (PGlite has no autovacuum), one statement each:
 * bookkeeping rows that come and go with every open order and batch, and the counters, which every fold
 * updates and the hourly prune deletes from, and the machines (a row updated at every connect and
 * disconnect). Without it the space of deleted and updated rows is never
 * reused: the per-minute counters grew ~60-85 MB a day at 200 busy merchants although the prune kept
 * only two days of them.
 */
export const EMBEDDED_VACUUM_TABLES = [
  'payment_open_orders',
  'payment_outbox_batches',
  'payment_count_deltas',
  'payment_state_counts',
  'payment_minute_counts',
  'payment_machines',
] as const;

/** Deletes per-minute counters older than `keepMs` (stats read at most a day back). */
export async function pruneMinuteCounts(q: Queryable, keepMs: number): Promise<number> {
  const r = await q.query(
    `DELETE FROM payment_minute_counts
     WHERE minute < (now() AT TIME ZONE 'UTC') - $1::float8 * interval '1 millisecond'`,
    [keepMs],
  );
  return r.rowCount;
}

/** The apps that have orders: a loose scan of the primary key, one index probe per app. */
export async function paymentApps(q: Queryable): Promise<string[]> {
  const { rows } = await q.query<{ app_id: string }>(
    `WITH RECURSIVE a AS (
       (SELECT app_id FROM payment_orders ORDER BY app_id LIMIT 1)
       UNION ALL
       SELECT (SELECT o.app_id FROM payment_orders o WHERE o.app_id > a.app_id ORDER BY o.app_id LIMIT 1)
       FROM a WHERE a.app_id IS NOT NULL
     )
     SELECT app_id FROM a WHERE app_id IS NOT NULL`,
  );
  return rows.map((r) => r.app_id);
}

/**
 * Deletes up to `limit` finished orders of an app (no longer `created` or `paying`) created and last
 * changed more than `retentionMs` ago, and with no merchant notification pending, oldest first, with all their events, in one statement. Orders
 * another node is deleting (or the intake is changing) are skipped. Returns the deleted order ids.
 */
export async function deleteExpiredOrders(
  store: Store,
  appId: string,
  retentionMs: number,
  limit: number,
): Promise<{ orders: string[]; events: number }> {
  // The oldest orders through the (app_id, created_at) index, stopping at `limit`. Without statistics
  // (PGlite has no autovacuum, so no ANALYZE) the planner took a bitmap scan of every expired order and
  // a sort: 150 ms per chunk with 50,000 expired orders, against 9 ms (bench/tools/retention-cost.mts).
  const { rows } = await store.transaction(async (tx) => {
    await tx.query('SET LOCAL enable_bitmapscan = off');
    await tx.query('SET LOCAL enable_seqscan = off');
    return tx.query<{ orders: string[] | string | null; events: number }>(
      `WITH cutoff AS (SELECT now() - $2::float8 * interval '1 millisecond' AS t),
     victims AS (
       SELECT o.app_id, o.order_id FROM payment_orders o, cutoff
       WHERE o.app_id = $1 AND o.created_at < cutoff.t AND o.updated_at < cutoff.t
         AND o.state <> ALL ($4::text[])
         -- Not while a merchant notification of it is still to be handed to the webhook engine (the
         -- sweep offers those again for a day, see pendingWebhooks): with a retention under a day, an
         -- engine unavailable meanwhile lost them with the order.
         AND NOT EXISTS (SELECT 1 FROM payment_events w
           WHERE w.app_id = o.app_id AND w.order_id = o.order_id AND w.webhook = 'pending'
             AND w.received_at > now() - interval '1 day')
       ORDER BY o.created_at LIMIT $3
       FOR UPDATE OF o SKIP LOCKED
     ), ev AS (
       DELETE FROM payment_events e USING victims v
       WHERE e.app_id = v.app_id AND e.order_id = v.order_id
       RETURNING 1
     ), gone AS (
       DELETE FROM payment_orders p USING victims v
       WHERE p.app_id = v.app_id AND p.order_id = v.order_id
       RETURNING p.order_id
     )
     SELECT (SELECT json_agg(order_id) FROM gone) AS orders, (SELECT count(*) FROM ev)::int AS events`,
      [appId, retentionMs, limit, TIMEOUT_STATES],
    );
  });
  const r = rows[0];
  const orders = r?.orders ?? [];
  return {
    orders: typeof orders === 'string' ? (JSON.parse(orders) as string[]) : orders,
    events: Number(r?.events ?? 0),
  };
}

/**
 * Forgets up to `limit` machines offline for longer than `retentionMs` (their rows would otherwise stay
 * forever, one per device id ever seen). Returns how many.
 */
export async function deleteGoneMachines(q: Queryable, retentionMs: number, limit: number): Promise<number> {
  const r = await q.query(
    `DELETE FROM payment_machines WHERE (app_id, device_id) IN (
       SELECT app_id, device_id FROM payment_machines
       WHERE NOT online AND last_seen_at < now() - $1::float8 * interval '1 millisecond'
       LIMIT $2 FOR UPDATE SKIP LOCKED)`,
    [retentionMs, limit],
  );
  return r.rowCount;
}
