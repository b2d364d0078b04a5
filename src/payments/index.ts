/**
 * Payment tracking: machines and payment back-ends report payment events, a durable per-order state
 * machine decides the outcome, and every transition is pushed to the merchant's app (with a spoken
 * announcement), to the reporting machine, to `order:<orderId>:status` subscribers and, through the
 * webhook engine, to the merchant's server. Also machine presence and commands down to machines.
 */
import { randomUUID } from 'node:crypto';
import { Counter, Histogram } from 'prom-client';
import type { Namespace, Socket } from 'socket.io';
import type { AccessControl, ClientIdentity } from '../auth/index.js';
import type { Config } from '../config/index.js';
import { type ErrorCode, HeraldError, isHeraldError } from '../errors.js';
import { coalesceThisTurn, type Gateway, SocketConn } from '../gateway/index.js';
import { isMerchantId } from '../gateway/validate.js';
import { jsonProblem } from '../input.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics/index.js';
import type { Router } from '../router/index.js';
import type { NotifyService } from '../router/notify.js';
import type { Store } from '../store/index.js';
import { announcement } from './announce.js';
import { PaymentIntake } from './intake.js';
import {
  anyOutboxOlder,
  anyTimedOut,
  applyEvents,
  claimOutbox,
  claimTimedOut,
  DuplicateConflict,
  deleteExpiredOrders,
  deleteGoneMachines,
  deletePublished,
  EMBEDDED_VACUUM_TABLES,
  eventKey,
  findOrders,
  foldCounts,
  type HistoryEntry,
  listOrders,
  markWebhooks,
  type OrderCursor,
  type OrderFilter,
  type OutboxNotification,
  orderHistory,
  orderKey,
  paymentApps,
  pendingWebhooks,
  pruneMinuteCounts,
  type Stats,
  stats,
  timeoutEvent,
} from './ledger.js';
import { OrderCache } from './order-cache.js';
import { MachinePresence, type MachinePresenceInfo } from './presence.js';
import { parseEvent } from './schema.js';
import type { EventSource, MerchantNotifier, Order, ReportResult, Transition } from './types.js';

export { announcement } from './announce.js';
export * from './state-machine.js';
export type * from './types.js';

export interface PaymentsDeps {
  config: Config;
  store: Store;
  router: Router;
  gateway: Gateway;
  notify: NotifyService;
  access: AccessControl;
  logger: Logger;
  metrics: Metrics;
  /** The webhook engine (or anything with its `enqueue`); without it merchant servers are not called. */
  notifier?: MerchantNotifier | undefined;
  /** Cluster mode: reach machines connected to other nodes (commands). */
  remote?: RemoteCalls | undefined;
}

/** The cluster's remote calls (see RedisCluster.call / onCall). */
export interface RemoteCalls {
  call(appId: string, kind: string, payload: unknown, timeoutMs: number): Promise<unknown>;
  onCall(kind: string, handler: (appId: string, payload: unknown) => Promise<unknown>): void;
}

interface RemoteCommand {
  deviceId: string;
  command: string;
  args: unknown;
  timeoutMs: number;
}

/** Engine errors worth handing the notification over again later; any other refusal is final. */
const TRANSIENT_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'store_unavailable',
  'internal_error',
  'shutting_down',
  'not_ready',
  'rate_limited',
]);

type EnqueueResult = 'sent' | 'failed' | 'retry';

/** Orders closed per sweep transaction. */
const SWEEP_BATCH = 200;
/** Outbox rows (batches of notifications) published again per sweep transaction. */
const OUTBOX_BATCH = 20;
/**
 * Counter delta rows are read 200 at a time (summed on the event loop between two reads: 3-5 ms each),
 * up to 25 times, then deleted and added to the counters in one statement (see foldCounts).
 */
const FOLD_CHUNK = 200;
const FOLD_CHUNKS = 25;
/** Published outbox rows not taken by a batch transaction within this long are deleted on their own. */
const PUBLISHED_FLUSH_MS = 200;
/**
 * Realtime notifications of a batch that could not be published (cluster: Redis unreachable) are tried
 * again after these delays, as long as the row is this node's to publish: the sweep of any node takes
 * rows older than its minimum age (see republishOutbox), and a row published by both would reach
 * clients twice.
 */
const REPUBLISH_DELAYS_MS = [500, 1000, 2000, 4000, 8000];
/** Embedded store: how often the small bookkeeping tables are vacuumed (PGlite has no autovacuum). */
const VACUUM_EVERY_MS = 10 * 60_000;
/** Per-minute counters are kept this long (GET /payments/stats reads at most 1440 minutes back). */
const MINUTE_COUNTS_KEEP_MS = 2 * 24 * 3_600_000;
/**
 * Retention (PAYMENT_RETENTION): a pass every minute deletes expired orders 200 at a time (one statement
 * each: ~8-10 ms of the embedded store, which the intake takes turns with), up to 25 statements; a pass
 * that hit that cap runs again at the next sweep, so it keeps up with ~1,000 orders/s at the default
 * sweep interval.
 */
const RETENTION_EVERY_MS = 60_000;
const RETENTION_CHUNK = 200;
const RETENTION_CHUNKS = 25;
/**
 * Embedded store: the payment tables are vacuumed (so that the space of deleted orders is reused; PGlite
 * has no autovacuum) after a retention pass deleted some, at most this often.
 */
const RETENTION_VACUUM_EVERY_MS = 6 * 3_600_000;

/**
 * Test-only: `HERALD_TEST_CRASH_AFTER_PAYMENT_COMMIT=1` makes the process kill itself (SIGKILL) right
 * after the first batch with transitions commits and before anything is published, to test the outbox.
 */
const CRASH_AFTER_COMMIT = process.env.HERALD_TEST_CRASH_AFTER_PAYMENT_COMMIT === '1';

/** Reads a machine's merchant id from the handshake: `x-merchant-id` header, else auth, else query. */
export function readMerchantId(handshake: Socket['handshake']): string | undefined {
  const first = (v: unknown) => (Array.isArray(v) ? v[0] : v);
  const candidates = [
    first(handshake.headers['x-merchant-id']),
    (handshake.auth as Record<string, unknown> | undefined)?.merchantId,
    first(handshake.query?.merchantId),
  ];
  for (const c of candidates) {
    if (c === undefined || c === null || c === '') continue;
    if (!isMerchantId(c)) throw new HeraldError('invalid_merchant_id');
    return c;
  }
  return undefined;
}

/** The payload merchant servers receive for a transition (through the webhook engine). */
export function webhookPayload(t: Transition): Record<string, unknown> {
  return {
    type: 'payment.status',
    appId: t.appId,
    orderId: t.orderId,
    merchantId: t.merchantId,
    status: t.to,
    previous: t.from,
    amount: t.amount,
    currency: t.currency,
    ...(t.to === 'refunded' ? { refundedAmount: t.refundedAmount } : {}),
    reason: t.reason,
    deviceId: t.deviceId,
    eventId: t.eventId,
    occurredAt: t.occurredAt.toISOString(),
    ts: t.at,
  };
}

/** The `data` of the dataUpdate apps and machines receive for a transition. */
export function realtimePayload(t: Transition): Record<string, unknown> {
  const spoken = t.to === 'refunded' ? (t.refundedAmount ?? t.amount) : t.amount;
  return {
    type: 'payment',
    status: t.to,
    previous: t.from,
    orderId: t.orderId,
    merchantId: t.merchantId,
    deviceId: t.deviceId,
    amount: t.amount,
    currency: t.currency,
    ...(t.to === 'refunded' ? { refundedAmount: t.refundedAmount } : {}),
    announcement: announcement(t.to, spoken, t.currency, t.reason),
    reason: t.reason,
    version: t.version,
    eventId: t.eventId,
    occurredAt: t.occurredAt.toISOString(),
    ts: t.at,
  };
}

/** One node's payment tracking. Create it, register its routes, `start()` it; `stop()` before the store closes. */
export class Payments {
  readonly intake: PaymentIntake;
  /** Open orders this node stored last (PAYMENT_ORDER_CACHE). */
  readonly orderCache: OrderCache;
  readonly presence: MachinePresence;
  private readonly deps: PaymentsDeps;
  private readonly log: Logger;
  private readonly eventsTotal: Counter<'outcome'>;
  private readonly batchSeconds: Histogram;
  private readonly sweepSeconds: Histogram<'step'>;
  private readonly webhooksTotal: Counter<'result'>;
  private timer: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;
  private lastPresenceTick = 0;
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly markQueue: { appId: string; eventId: string; status: 'sent' | 'failed' }[] = [];
  private marking: Promise<void> | undefined;
  /** Outbox rows whose notifications are all published, to delete (by the next batch, or on their own). */
  private published: string[] = [];
  private publishedTimer: NodeJS.Timeout | undefined;
  /** When the oldest row of `published` was added. */
  private publishedSince = 0;
  private deleting: Promise<void> | undefined;
  /** Publishes started and not yet finished (awaited by stop()). */
  private readonly publishing = new Set<Promise<unknown>>();
  /** Pending retries of realtime notifications whose publish failed (see REPUBLISH_DELAYS_MS). */
  private readonly republishTimers = new Set<NodeJS.Timeout>();
  private lastPrune = 0;
  private lastRetention = 0;
  /** The last retention pass stopped at its cap: the next sweep goes on. */
  private retentionMore = false;
  private lastRetentionVacuum = Date.now();
  private retentionDeleted = false;
  private readonly retentionTotal: Counter<'kind'>;
  private lastVacuum = Date.now();
  private readonly startedAt = Date.now();
  private outboxSwept = false;
  private stopped = false;
  private warnedNoNotifier = false;

  constructor(deps: PaymentsDeps) {
    this.deps = deps;
    const { config, store, metrics } = deps;
    this.log = deps.logger.child({ part: 'payments' });
    const registers = [metrics.registry];
    this.eventsTotal = new Counter({
      name: 'herald_payment_events_total',
      help: 'Payment events answered, by outcome (transition, stale, duplicate, invalid, overloaded).',
      labelNames: ['outcome'],
      registers,
    });
    this.batchSeconds = new Histogram({
      name: 'herald_payment_store_seconds',
      help: 'Duration of the transactions that store payment events.',
      buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    });
    this.sweepSeconds = new Histogram({
      name: 'herald_payment_sweep_seconds',
      help: 'Duration of the steps of the payment sweep (timeouts, webhooks, fold, outbox, vacuum, prune, retention, presence), waits for the store included. On the embedded store the intake waits while a step holds the store.',
      labelNames: ['step'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
      registers,
    });
    this.retentionTotal = new Counter({
      name: 'herald_payment_retention_deleted_total',
      help: 'Deleted past PAYMENT_RETENTION: finished payment orders (kind="orders"), their events (kind="events"), machines offline that long (kind="machines").',
      labelNames: ['kind'],
      registers,
    });
    this.webhooksTotal = new Counter({
      name: 'herald_payment_webhooks_total',
      help: 'Merchant notifications handed to the webhook engine, by result (enqueued, duplicate, failed, refused).',
      labelNames: ['result'],
      registers,
    });
    const cacheTotal = new Counter({
      name: 'herald_payment_order_cache_total',
      help: "Orders of payment batches by where they came from: hit (this node's cache), new (assumed new), read (from the store); stale counts batches that found a cached order changed by another node or the sweep and ran again from the store.",
      labelNames: ['result'],
      registers,
    });
    this.orderCache = new OrderCache(config.paymentOrderCache);
    this.intake = new PaymentIntake({
      store,
      logger: this.log,
      defaultCurrency: config.paymentCurrency,
      batchMax: config.paymentBatchMax,
      queueMax: config.paymentQueueMax,
      // Two transactions at a time on PostgreSQL: in `npm run bench -- payments` at 3,000 events/s, 2 lanes
      // gave p50 17-21 ms and 0.61-0.64 cores of PostgreSQL, 4 lanes 29-31 ms and 0.77, 8 lanes 53 ms and
      // 0.83 (smaller batches cost more statements; the p99 was 107-171 ms in every case).
      lanes: store.kind === 'postgres' ? 2 : 1,
      onCommitted: (transitions, outboxId) => this.committed(transitions, outboxId),
      realtime: realtimePayload,
      published: {
        take: () => this.takePublished(),
        giveBack: (ids) => this.donePublishing(ids),
      },
      onOutcome: (outcome) => this.eventsTotal.inc({ outcome }),
      onBatch: (_n, seconds) => this.batchSeconds.observe(seconds),
      cache: config.paymentOrderCache > 0 ? this.orderCache : undefined,
      onCache: (result, n) => cacheTotal.inc({ result }, n),
    });
    this.presence = new MachinePresence({
      store,
      logger: this.log,
      intervalMs: config.machinePresenceInterval,
      publish: (change) => this.publishPresence(change),
    });
    this.attach();
  }

  /** Whether merchant servers are notified (a webhook engine was given). */
  get notifiesMerchants(): boolean {
    return this.deps.notifier !== undefined;
  }

  /** Validates and stores one event, from any source; resolves after it is stored. */
  async report(raw: unknown, source: EventSource, pathPrefix = ''): Promise<ReportResult> {
    const event = parseEvent(raw, this.deps.config.paymentCurrency, pathPrefix);
    return this.intake.submit(event, source);
  }

  private attach(): void {
    const { gateway } = this.deps;
    gateway.handle('payment:report', async ({ conn, socket }, args) => {
      const raw = args[0];
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
        throw new HeraldError('invalid_event', 'payment:report takes one payment event object.');
      }
      const ev: Record<string, unknown> = { ...(raw as Record<string, unknown>) };
      const mismatch = (field: string, expected: string) =>
        new HeraldError(
          'invalid_event',
          `${field} must be ${JSON.stringify(expected)}, as at the handshake.`,
          [{ path: `/${field}`, message: 'does not match the connection' }],
        );
      if (ev.appId === undefined) ev.appId = conn.appId;
      else if (ev.appId !== conn.appId) throw mismatch('appId', conn.appId);
      if (conn.deviceId !== undefined) {
        if (ev.deviceId === undefined) ev.deviceId = conn.deviceId;
        else if (ev.deviceId !== conn.deviceId) throw mismatch('deviceId', conn.deviceId);
      }
      const merchantId = socket.data.merchantId as string | undefined;
      if (merchantId !== undefined) {
        if (ev.merchantId === undefined) ev.merchantId = merchantId;
        else if (ev.merchantId !== merchantId) throw mismatch('merchantId', merchantId);
      }
      return { ...(await this.report(ev, 'socket')) };
    });
    gateway.handle('machine:heartbeat', async () => ({ ts: Date.now() }));
    // Child namespaces (one per app) are created on demand; watch each for machines.
    gateway.io.on('new_namespace', (nsp: Namespace) => {
      nsp.on('connection', (socket: Socket) => this.onSocket(socket));
    });
  }

  private onSocket(socket: Socket): void {
    const identity = socket.data.identity as ClientIdentity | undefined;
    const deviceId = identity?.deviceId;
    if (deviceId === undefined) return;
    let merchantId: string | undefined;
    try {
      merchantId = readMerchantId(socket.handshake);
      // Apps mode: a token that names a merchant decides; a different claim at the handshake is refused.
      if (identity?.merchantId !== undefined) {
        if (merchantId !== undefined && merchantId !== identity.merchantId) {
          throw new HeraldError('invalid_token', 'The merchantId does not match the one in the token.');
        }
        merchantId = identity.merchantId;
      }
    } catch (err) {
      const body = (err as HeraldError).toBody();
      socket.emit('error', { ...body, event: 'connect' });
      return;
    }
    if (merchantId === undefined) return;
    const appId = socket.nsp.name.slice(1);
    socket.data.merchantId = merchantId;
    this.presence.connected(appId, deviceId, merchantId, socket.id);
    socket.on('disconnect', () => this.presence.disconnected(appId, deviceId, socket.id));
  }

  /** Starts the periodic sweep (timeouts, pending merchant notifications, presence). */
  async start(): Promise<void> {
    this.serveRemoteCommands();
    if (this.deps.store.kind === 'embedded') {
      await this.presence.resetAfterRestart().catch((err: unknown) => {
        this.log.warn({ err }, 'could not reset machine presence after a restart');
      });
    }
    // Before machines connect here, so no other node takes them for a dead node's (the sweep retries).
    await this.presence.heartbeat().catch((err: unknown) => {
      this.log.warn({ err }, "could not write this node's machine-presence heartbeat");
    });
    if (!this.deps.notifier) {
      this.log.info('no webhook engine: merchant servers (notifyUrl) are not notified by this node');
    }
    this.timer = setInterval(() => {
      if (this.sweeping) return;
      this.sweeping = this.sweep().then(
        () => {
          this.sweeping = undefined;
        },
        () => {
          this.sweeping = undefined;
        },
      );
    }, this.deps.config.paymentSweepInterval);
    this.timer.unref();
  }

  /** One pass of the sweep; public for tests and tools. */
  async sweep(): Promise<{ closed: number; webhooks: number; republished: number }> {
    const closed = await this.sweepStep('timeouts', 'error', 'timeout sweep failed', () =>
      this.closeTimedOut(),
    );
    const webhooks = await this.sweepStep('webhooks', 'error', 'merchant notification retry failed', () =>
      this.retryWebhooks(),
    );
    await this.sweepStep('fold', 'warn', 'could not fold the payment counters', async () => {
      for (let round = 0; round < 4 && !this.stopped; round++) {
        const fold = await foldCounts(this.deps.store, FOLD_CHUNK, FOLD_CHUNKS);
        if (fold.conflict) this.log.debug('payment counters: another node folded these deltas meanwhile');
        if (!fold.more) break;
      }
    });
    const republished = await this.sweepStep(
      'outbox',
      'error',
      'publishing the payment outbox again failed',
      () => this.republishOutbox(),
    );
    if (this.deps.store.kind === 'embedded' && Date.now() - this.lastVacuum >= VACUUM_EVERY_MS) {
      // PGlite has no autovacuum (see EMBEDDED_VACUUM_TABLES).
      this.lastVacuum = Date.now();
      // One table per statement: the intake takes turns with each (three at once held the store ~100 ms
      // under load).
      for (const table of EMBEDDED_VACUUM_TABLES) {
        await this.sweepStep('vacuum', 'warn', `could not vacuum ${table}`, () =>
          this.deps.store.query(`VACUUM ${table}`),
        );
      }
    }
    if (Date.now() - this.lastPrune >= 3_600_000) {
      this.lastPrune = Date.now();
      await this.sweepStep('prune', 'warn', 'could not prune the per-minute payment counters', () =>
        pruneMinuteCounts(this.deps.store, MINUTE_COUNTS_KEEP_MS),
      );
    }
    if (this.retentionMore || Date.now() - this.lastRetention >= RETENTION_EVERY_MS) {
      this.lastRetention = Date.now();
      this.retentionMore = false;
      await this.sweepStep('retention', 'warn', 'could not delete expired payment orders', () =>
        this.deleteExpired(),
      );
    }
    if (
      this.deps.store.kind === 'embedded' &&
      this.retentionDeleted &&
      Date.now() - this.lastRetentionVacuum >= RETENTION_VACUUM_EVERY_MS
    ) {
      this.lastRetentionVacuum = Date.now();
      this.retentionDeleted = false;
      for (const table of ['payment_orders', 'payment_events']) {
        await this.sweepStep('vacuum', 'warn', `could not vacuum ${table}`, () =>
          this.deps.store.query(`VACUUM ${table}`),
        );
      }
    }
    if (Date.now() - this.lastPresenceTick >= this.deps.config.machinePresenceInterval) {
      this.lastPresenceTick = Date.now();
      await this.sweepStep('presence', 'warn', 'presence refresh failed', () => this.presence.tick());
    }
    return { closed: closed ?? 0, webhooks: webhooks ?? 0, republished: republished ?? 0 };
  }

  /**
   * Deletes finished orders older than PAYMENT_RETENTION with their events, a chunk per statement, over
   * every app; returns how many orders. Public for tests and tools.
   */
  async deleteExpired(maxChunks = RETENTION_CHUNKS): Promise<number> {
    const { store, config } = this.deps;
    let chunks = 0;
    let total = 0;
    for (const appId of await paymentApps(store)) {
      for (;;) {
        if (chunks >= maxChunks || this.stopped) {
          this.retentionMore = true;
          break;
        }
        chunks++;
        const { orders, events } = await deleteExpiredOrders(
          store,
          appId,
          config.paymentRetention,
          RETENTION_CHUNK,
        );
        if (orders.length > 0) {
          this.intake.forget(orders.map((o) => orderKey(appId, o)));
          this.retentionTotal.inc({ kind: 'orders' }, orders.length);
          this.retentionTotal.inc({ kind: 'events' }, events);
          this.retentionDeleted = true;
          total += orders.length;
        }
        if (orders.length < RETENTION_CHUNK) break;
      }
      if (this.retentionMore) break;
    }
    if (total > 0) this.log.info({ orders: total }, 'deleted payment orders past PAYMENT_RETENTION');
    if (!this.retentionMore) {
      const machines = await deleteGoneMachines(store, config.paymentRetention, 1000);
      if (machines > 0) {
        this.retentionTotal.inc({ kind: 'machines' }, machines);
        this.log.info({ machines }, 'forgot machines offline for longer than PAYMENT_RETENTION');
        if (machines === 1000) this.retentionMore = true;
      }
    }
    return total;
  }

  /**
   * Runs one step of the sweep, timed in `herald_payment_sweep_seconds{step}`; a failure is logged at
   * `level` (the sweep goes on with its other steps and tries again next time) and gives undefined.
   */
  private async sweepStep<T>(
    step: string,
    level: 'warn' | 'error',
    failure: string,
    fn: () => Promise<T>,
  ): Promise<T | undefined> {
    const end = this.sweepSeconds.startTimer({ step });
    try {
      return await fn();
    } catch (err) {
      this.log[level]({ err }, failure);
      return undefined;
    } finally {
      end();
    }
  }

  /**
   * Publishes again the realtime notifications of committed transitions that are still in the outbox
   * (their node died between commit and publish, or the publish failed), with their original ids, and
   * deletes them. By default rows younger than a few sweep intervals belong to a live publish and are
   * left alone, except at the first pass on the embedded store (which serves this process only), where
   * every row older than this process is taken. `minAgeMs` overrides that (tools, tests); a row
   * published twice reaches SDK clients once (same id).
   */
  async republishOutbox(minAgeMs?: number): Promise<number> {
    const { store } = this.deps;
    const first = !this.outboxSwept;
    this.outboxSwept = true;
    const minAge = this.outboxMinAge();
    // Rows older than this process on the embedded store (one process) were left by the previous one.
    const age =
      minAgeMs ??
      (first && store.kind === 'embedded' ? Math.min(minAge, Date.now() - this.startedAt) : minAge);
    let total = 0;
    for (let round = 0; round < 20 && !this.stopped; round++) {
      if (!(await anyOutboxOlder(store, age))) break;
      const n = await store.transaction(async (tx) => {
        const rows = await claimOutbox(tx, age, OUTBOX_BATCH);
        if (rows.length === 0) return { rows: 0, notifications: 0 };
        let notifications = 0;
        const done: string[] = [];
        for (const row of rows) {
          const results = await Promise.allSettled(row.notifications.map((x) => this.publishOne(x)));
          const failed = results.filter((r) => r.status === 'rejected').length;
          notifications += results.length - failed;
          if (failed === 0) done.push(row.id);
          else
            this.log.warn(
              { failed },
              'payment notifications could not be published; kept for the next sweep',
            );
        }
        await deletePublished(tx, done);
        return { rows: rows.length, notifications };
      });
      total += n.notifications;
      if (n.rows < OUTBOX_BATCH) break;
    }
    if (total > 0) this.log.info({ count: total }, 'published payment notifications left in the outbox');
    return total;
  }

  /** Closes orders that stayed `created`/`paying` longer than PAYMENT_TIMEOUT; returns how many. */
  private async closeTimedOut(): Promise<number> {
    const { store, config } = this.deps;
    let total = 0;
    for (let round = 0; round < 50 && !this.stopped; round++) {
      if (!(await anyTimedOut(store, config.paymentTimeout))) return total;
      const now = new Date();
      let known = new Set<string>();
      let renamed = false;
      for (let attempt = 0; ; attempt++) {
        try {
          const { transitions, outboxId, claimed } = await store.transaction(async (tx) => {
            const orders = await claimTimedOut(tx, config.paymentTimeout, SWEEP_BATCH);
            if (orders.size === 0)
              return {
                transitions: [] as Transition[],
                outboxId: undefined as string | undefined,
                claimed: 0,
              };
            const items = [...orders.values()].map((o) => {
              const event = timeoutEvent(o, now);
              // An event id a reporter happened to use already: make this one unique.
              if (renamed && known.has(eventKey(o.appId, event.eventId))) event.eventId += `:${randomUUID()}`;
              return { event, source: 'timeout' as const };
            });
            const r = await applyEvents(tx, orders, items, {
              defaultCurrency: config.paymentCurrency,
              knownDuplicates: new Set(),
              realtime: realtimePayload,
              keyedUpdate: store.kind === 'postgres',
            });
            return { transitions: r.transitions, outboxId: r.outboxId, claimed: orders.size };
          });
          if (claimed === 0) return total;
          this.intake.forget(transitions.map((t) => orderKey(t.appId, t.orderId)));
          total += transitions.length;
          this.eventsTotal.inc({ outcome: 'transition' }, transitions.length);
          this.committed(transitions, outboxId);
          if (claimed < SWEEP_BATCH) return total;
          break;
        } catch (err) {
          if (err instanceof DuplicateConflict && attempt < 3) {
            known = new Set([...known, ...err.keys]);
            renamed = true;
            continue;
          }
          throw err;
        }
      }
    }
    return total;
  }

  /** Hands again to the webhook engine the merchant notifications that did not reach it. */
  private async retryWebhooks(): Promise<number> {
    const { notifier, store, config } = this.deps;
    if (!notifier) return 0;
    // Old enough that the hand-over right after the commit has surely finished (or failed).
    const minAge = Math.max(2000, 5 * config.paymentSweepInterval);
    const list = await pendingWebhooks(store, minAge, 500, config.paymentCurrency);
    if (list.length === 0) return 0;
    this.log.info(
      { count: list.length },
      'handing pending merchant notifications to the webhook engine again',
    );
    const done = await Promise.all(list.map((t) => this.enqueueWebhook(t)));
    await markWebhooks(
      store,
      list.filter((_, i) => done[i] === 'sent'),
      'sent',
    );
    await markWebhooks(
      store,
      list.filter((_, i) => done[i] === 'failed'),
      'failed',
    );
    return done.filter((d) => d === 'sent').length;
  }

  /**
   * After a commit: realtime notifications (each also in the outbox until published), then merchant
   * notifications.
   */
  private committed(transitions: Transition[], outboxId: string | undefined): void {
    if (CRASH_AFTER_COMMIT && transitions.length > 0) process.kill(process.pid, 'SIGKILL');
    // The reporters' acks follow in this turn: each machine gets its dataUpdate and ack in one write.
    if (transitions.length > 0) coalesceThisTurn();
    const list: OutboxNotification[] = [];
    for (const t of transitions) {
      list.push({
        // Derived from the event: the outbox sweep publishes it again with the same id if needed.
        id: t.notificationId,
        appId: t.appId,
        orderId: t.orderId,
        merchantId: t.merchantId,
        deviceId: t.deviceId,
        data: t.data ?? realtimePayload(t),
      });
      if (t.notifyUrl !== null) this.webhook(t);
    }
    this.publishBatch(list, outboxId, 0, Date.now());
  }

  /**
   * Publishes a committed batch's realtime notifications; once all are out, its outbox row is deleted.
   * Those that fail (cluster: Redis unreachable; each was then delivered nowhere) are tried again after
   * REPUBLISH_DELAYS_MS while the row is still this node's, then left in the outbox for the sweep.
   */
  private publishBatch(
    list: OutboxNotification[],
    outboxId: string | undefined,
    attempt: number,
    since: number,
  ): void {
    const p = Promise.allSettled(list.map((x) => this.publishOne(x))).then((results) => {
      const failed = list.filter((_, i) => results[i]?.status === 'rejected');
      if (failed.length === 0) {
        if (outboxId !== undefined) this.donePublishing([outboxId]);
        return;
      }
      const err = (results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason;
      const delay = REPUBLISH_DELAYS_MS[attempt];
      // The sweep of any node takes rows older than its minimum age: stop well before that.
      const mine = delay !== undefined && Date.now() + delay - since < this.outboxMinAge() / 2;
      if (this.stopped || outboxId === undefined || !mine) {
        // Left in the outbox: the sweep publishes the batch again (same ids: the SDK drops copies).
        this.log.error(
          { err, count: failed.length },
          'payment notifications could not be published; kept in the outbox for the sweep',
        );
        return;
      }
      if (attempt === 0) {
        this.log.warn(
          { err, count: failed.length },
          'payment notifications could not be published; retrying',
        );
      }
      const timer = setTimeout(() => {
        this.republishTimers.delete(timer);
        if (!this.stopped) this.publishBatch(failed, outboxId, attempt + 1, since);
      }, delay);
      timer.unref();
      this.republishTimers.add(timer);
    });
    this.publishing.add(p);
    void p.finally(() => this.publishing.delete(p));
  }

  /** Outbox rows younger than this are left to the node that committed them (see republishOutbox). */
  private outboxMinAge(): number {
    return Math.max(2000, 5 * this.deps.config.paymentSweepInterval);
  }

  /** Publishes one transition's realtime notification (merchant app, device, order topic). */
  private publishOne(x: OutboxNotification): Promise<unknown> {
    return this.deps.notify.publish(
      {
        id: x.id,
        appId: x.appId,
        users: [x.merchantId],
        devices: x.deviceId !== null ? [x.deviceId] : undefined,
        eventTopics: [`order:${x.orderId}:status`],
        data: x.data,
        // Delivery receipts: GET /notify/:id tells whether the merchant's app heard the announcement.
        ack: true,
      },
      {
        // Cluster: while Redis is unreachable a transition is published nowhere rather than to this
        // node's sockets only (the merchant's app may be on another node); the row stays in the outbox
        // and is published to everyone once Redis is back.
        requireCluster: true,
      },
    );
  }

  /** Hands the published outbox rows to the next batch transaction. */
  private takePublished(): string[] {
    const list = this.published;
    this.published = [];
    return list;
  }

  /**
   * Records published outbox rows; deletes them on their own when no batch takes them within
   * PUBLISHED_FLUSH_MS (the node went quiet). Under load every batch takes the rows published before it,
   * so the timer finds only rows published a moment ago and waits again: deleting those on their own
   * cost the embedded store ~250 statements a minute at 3,000 events/s (6 ms each).
   */
  private donePublishing(ids: string[]): void {
    if (ids.length === 0) return;
    if (this.published.length === 0) this.publishedSince = Date.now();
    for (const id of ids) this.published.push(id);
    this.armPublished(PUBLISHED_FLUSH_MS);
  }

  private armPublished(ms: number): void {
    if (this.publishedTimer) return;
    this.publishedTimer = setTimeout(() => {
      this.publishedTimer = undefined;
      if (this.published.length === 0) return;
      const age = Date.now() - this.publishedSince;
      if (age < PUBLISHED_FLUSH_MS) this.armPublished(PUBLISHED_FLUSH_MS - age);
      else void this.flushPublished();
    }, ms);
    this.publishedTimer.unref();
  }

  private async flushPublished(): Promise<void> {
    while (this.deleting) await this.deleting;
    const list = this.takePublished();
    if (list.length === 0) return;
    this.deleting = deletePublished(this.deps.store, list).then(
      () => {
        this.deleting = undefined;
      },
      (err: unknown) => {
        this.deleting = undefined;
        // Left in the outbox: published again by a sweep with the same id (clients drop the copy).
        this.log.warn({ err, count: list.length }, 'could not delete published payment notifications');
      },
    );
    await this.deleting;
  }

  private webhook(t: Transition): void {
    if (!this.deps.notifier) {
      if (!this.warnedNoNotifier) {
        this.warnedNoNotifier = true;
        this.log.warn(
          { orderId: t.orderId },
          'an order has a notifyUrl but no webhook engine is wired; its notifications stay pending',
        );
      }
      return;
    }
    const p = this.enqueueWebhook(t).then((r) => {
      if (r !== 'retry') this.mark({ appId: t.appId, eventId: t.eventId }, r);
    });
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p));
  }

  /**
   * Hands a notification to the engine: `sent` when it accepted it (or already had it), `failed` when it
   * refused it for good, `retry` when the sweep should offer it again.
   */
  private async enqueueWebhook(t: Transition): Promise<EnqueueResult> {
    const notifier = this.deps.notifier;
    if (!notifier || t.notifyUrl === null) return 'retry';
    try {
      const r = await notifier.enqueue({
        orderNo: t.orderId,
        notifyUrl: t.notifyUrl,
        payload: webhookPayload(t),
        merchantId: t.merchantId,
        eventType: `payment.${t.to}`,
        // Scoped by app: two apps may use the same order ids.
        idempotencyKey: `${t.appId}:${t.orderId}:${t.to}`,
      });
      this.webhooksTotal.inc({ result: r.duplicate ? 'duplicate' : 'enqueued' });
      return 'sent';
    } catch (err) {
      const final = isHeraldError(err) && !TRANSIENT_CODES.has(err.code);
      this.webhooksTotal.inc({ result: final ? 'refused' : 'failed' });
      if (final) {
        this.log.error(
          { err, appId: t.appId, orderId: t.orderId, state: t.to, notifyUrl: t.notifyUrl },
          'the webhook engine refused a merchant notification; it will not be sent',
        );
        return 'failed';
      }
      this.log.warn(
        { err, appId: t.appId, orderId: t.orderId, state: t.to },
        'the webhook engine could not take a merchant notification; the sweep will offer it again',
      );
      return 'retry';
    }
  }

  private mark(e: { appId: string; eventId: string }, status: 'sent' | 'failed'): void {
    this.markQueue.push({ ...e, status });
    if (this.marking) return;
    this.marking = (async () => {
      await new Promise((r) => setImmediate(r));
      while (this.markQueue.length > 0) {
        const list = this.markQueue.splice(0, 1000);
        for (const status of ['sent', 'failed'] as const) {
          await markWebhooks(
            this.deps.store,
            list.filter((x) => x.status === status),
            status,
          ).catch((err: unknown) =>
            // Left pending: the sweep offers them again and the engine answers duplicate.
            this.log.warn({ err }, 'could not record merchant notifications as handed over'),
          );
        }
      }
      this.marking = undefined;
    })();
  }

  private publishPresence(change: MachinePresenceInfo): void {
    this.deps.notify
      .publish({
        appId: change.appId,
        eventTopics: [`devices:${change.merchantId}`],
        data: {
          type: 'device',
          deviceId: change.deviceId,
          merchantId: change.merchantId,
          online: change.online,
          lastSeenAt: change.lastSeenAt,
        },
      })
      .catch((err: unknown) => this.log.warn({ err }, 'presence notification failed'));
  }

  /**
   * Sends a command to a machine, on this node or (cluster mode) on whichever node it is connected to,
   * and resolves with its answer. Throws `device_offline` when it is connected nowhere,
   * `command_timeout` when it does not answer in time.
   */
  async command(
    appId: string,
    deviceId: string,
    command: string,
    args: unknown,
    timeoutMs = this.deps.config.commandTimeout,
  ): Promise<{ id: string; deviceId: string; reply: unknown }> {
    const bad = jsonProblem(args, false);
    if (bad) {
      throw new HeraldError('validation_failed', `args ${bad.message}.`, [
        { path: `/args${bad.path}`, message: bad.message },
      ]);
    }
    try {
      return await this.commandLocal(appId, deviceId, command, args, timeoutMs);
    } catch (err) {
      const remote = this.deps.remote;
      if (!remote || !isHeraldError(err) || err.code !== 'device_offline') throw err;
      try {
        const payload: RemoteCommand = { deviceId, command, args, timeoutMs };
        return (await remote.call(appId, 'payments.command', payload, timeoutMs + 2000)) as {
          id: string;
          deviceId: string;
          reply: unknown;
        };
      } catch (remoteErr) {
        const e = remoteErr as Error & { code?: string };
        if (e.code === 'command_timeout' || e.code === 'timeout')
          throw new HeraldError('command_timeout', e.message);
        if (e.code === 'invalid_reply') throw new HeraldError('invalid_reply', e.message);
        if (e.code === 'not_here' || e.code === 'not_found' || e.code === 'device_offline') {
          throw new HeraldError(
            'device_offline',
            `Device ${deviceId} of app ${appId} is not connected to any node.`,
          );
        }
        throw new HeraldError('internal_error', e.message);
      }
    }
  }

  /** Answers commands forwarded by other nodes for machines connected here. */
  private serveRemoteCommands(): void {
    this.deps.remote?.onCall('payments.command', async (appId, payload) => {
      const p = payload as RemoteCommand;
      try {
        return await this.commandLocal(appId, p.deviceId, p.command, p.args, p.timeoutMs);
      } catch (err) {
        if (isHeraldError(err) && err.code === 'device_offline') {
          throw Object.assign(new Error(err.message), { code: 'not_here' });
        }
        throw err;
      }
    });
  }

  /** A command to a machine connected to this node. */
  private async commandLocal(
    appId: string,
    deviceId: string,
    command: string,
    args: unknown,
    timeoutMs = this.deps.config.commandTimeout,
  ): Promise<{ id: string; deviceId: string; reply: unknown }> {
    const conns = this.deps.router
      .connsOfDevice(appId, deviceId)
      .filter((c): c is SocketConn => c instanceof SocketConn && c.socket.connected);
    const target =
      [...conns].reverse().find((c) => this.presence.isMachineSocket(appId, deviceId, c.id)) ?? conns.at(-1);
    if (!target) {
      throw new HeraldError(
        'device_offline',
        `Device ${deviceId} of app ${appId} is not connected to this node.`,
      );
    }
    const id = randomUUID();
    const socket = target.socket;
    const reply = await new Promise<unknown>((resolve, reject) => {
      let settled = false;
      const onDisconnect = () =>
        settle(() =>
          reject(
            new HeraldError(
              'command_timeout',
              `Device ${deviceId} disconnected before answering command ${id}; it may or may not have run it.`,
            ),
          ),
        );
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        socket.off('disconnect', onDisconnect);
        fn();
      };
      socket.on('disconnect', onDisconnect);
      socket
        .timeout(timeoutMs)
        .emit('command', { id, command, args: args ?? null }, (err: Error | null, answer: unknown) =>
          settle(() =>
            err
              ? reject(
                  new HeraldError(
                    'command_timeout',
                    `Device ${deviceId} did not answer command ${id} within ${timeoutMs} ms; it may or may not have run it.`,
                  ),
                )
              : resolve(answer),
          ),
        );
    });
    this.log.info({ appId, deviceId, commandId: id, command }, 'command answered');
    // The reply goes out as JSON (HTTP, or to another node): one nested too deep or holding 1e309 would
    // fail there (500, or a timeout across nodes) or turn into null.
    const bad = jsonProblem(reply, false);
    if (bad) {
      throw new HeraldError(
        'invalid_reply',
        `Device ${deviceId} answered command ${id}, but its reply ${bad.message} (at ${bad.path || '/'}).`,
      );
    }
    return { id, deviceId, reply: reply ?? null };
  }

  // ---- queries ----

  /** The order with its history; without appId, the id must be unique across apps. */
  async order(orderId: string, appId?: string): Promise<(Order & { events: HistoryEntry[] }) | undefined> {
    const found = await findOrders(this.deps.store, orderId, appId);
    if (found.length === 0) return undefined;
    if (found.length > 1) {
      throw new HeraldError(
        'validation_failed',
        `Order ${orderId} exists in several apps (${found.map((o) => o.appId).join(', ')}); pass appId.`,
        [{ path: '/appId', message: 'Required: the order id is not unique across apps' }],
      );
    }
    const order = found[0] as Order;
    return { ...order, events: await orderHistory(this.deps.store, order.appId, orderId) };
  }

  orders(
    f: OrderFilter,
    page: number,
    limit: number,
    after?: OrderCursor,
  ): Promise<{ orders: Order[]; total: number; next: OrderCursor | null }> {
    return listOrders(this.deps.store, f, page, limit, after);
  }

  stats(f: Omit<OrderFilter, 'state'>, minutes: number): Promise<Stats> {
    return stats(this.deps.store, f, minutes);
  }

  devices(
    f: { appId?: string | undefined; merchantId?: string | undefined; online?: boolean | undefined },
    page: number,
    limit: number,
  ): Promise<{ devices: MachinePresenceInfo[]; total: number }> {
    return this.presence.list(this.deps.store, f, page, limit);
  }

  /**
   * Stops the sweep, answers every queued event, waits for merchant notifications in flight, and
   * marks this node's machines offline. Call before the store closes. Idempotent.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    for (const t of this.republishTimers) clearTimeout(t);
    this.republishTimers.clear();
    await this.sweeping;
    await this.intake.close();
    await Promise.allSettled([...this.inflight, ...this.publishing]);
    if (this.publishedTimer) clearTimeout(this.publishedTimer);
    this.publishedTimer = undefined;
    await this.flushPublished();
    while (this.marking) await this.marking;
    await this.presence.close();
  }
}
