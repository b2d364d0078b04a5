import { HeraldError, isHeraldError } from '../errors.js';
import type { Logger } from '../logger.js';
import { SqlError, type Store } from '../store/index.js';
import {
  applyEvents,
  DuplicateConflict,
  type Item,
  type ItemOutcome,
  loadOrders,
  OrderConflict,
  orderKey,
} from './ledger.js';
import type { OrderCache } from './order-cache.js';
import type { EventSource, Order, PaymentEvent, ReportResult, Transition } from './types.js';

export interface IntakeOptions {
  store: Store;
  logger: Logger;
  defaultCurrency: string;
  /** Most events stored in one transaction. */
  batchMax: number;
  /**
   * Most events waiting for the store on this node (all lanes); past it `submit` refuses with
   * `overloaded`, so a slow store cannot grow the queue, and the memory, without bound.
   */
  queueMax?: number;
  /**
   * Batches in flight at once. Events of one order always go to the same lane, so one node applies
   * them in arrival order; several lanes only help a store with several connections (PostgreSQL).
   */
  lanes: number;
  /**
   * Called after each commit, before the reporters are answered, with the transitions to notify and
   * the outbox row that holds their realtime notifications.
   */
  onCommitted: (transitions: Transition[], outboxId: string | undefined) => void;
  /** The realtime payload of a transition, written to the outbox with it (see ApplyOptions.realtime). */
  realtime?: (t: Transition) => Record<string, unknown>;
  /**
   * Outbox rows published since the last batch, deleted by the next batch transaction; `giveBack`
   * returns them when that transaction did not commit.
   */
  published?: { take: () => string[]; giveBack: (ids: string[]) => void };
  /** Called once per stored event with its outcome, for metrics. */
  onOutcome?: (outcome: 'transition' | 'stale' | 'duplicate' | 'invalid' | 'overloaded') => void;
  /** Called after each transaction with the number of events and its duration in seconds. */
  onBatch?: (events: number, seconds: number) => void;
  /** Open orders this node stored last (see OrderCache); without it every batch reads its orders. */
  cache?: OrderCache;
  /**
   * Called once per order of a batch: `hit` (taken from the cache), `new` (a `created` event for an
   * order not cached, assumed new), `read` (read from the store), `stale` (a batch decided on the cache
   * found an order changed by someone else and ran again from the store).
   */
  onCache?: (result: 'hit' | 'new' | 'read' | 'stale', n: number) => void;
}

interface Pending extends Item {
  resolve: (r: ReportResult) => void;
  reject: (e: HeraldError) => void;
}

/** SQLSTATEs worth running the transaction again for: serialization failure, deadlock. */
const RETRY_SQLSTATES = new Set(['40001', '40P01']);
const MAX_ATTEMPTS = 8;

function storeError(err: unknown): HeraldError {
  if (isHeraldError(err)) return err;
  const code = err instanceof SqlError ? err.code : undefined;
  if (code === undefined || code.startsWith('08') || code.startsWith('57P') || code === '53300') {
    return new HeraldError('store_unavailable');
  }
  // A data exception: the store refused a value of the event (the checks in parseEvent should have).
  if (code.startsWith('22')) {
    return new HeraldError(
      'invalid_event',
      `The store refused a value of this event: ${(err as Error).message}.`,
    );
  }
  return new HeraldError('internal_error');
}

function hash(text: string): number {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619);
  return h >>> 0;
}

/**
 * The one pipeline for payment events, whatever their source. Events wait in a queue while a
 * transaction is running and are stored together in the next one (group commit): under load one
 * batch stores hundreds of events with two statements (a read, one write), and a lone event is stored
 * at once. A reporter is answered only after the transaction that stored its event has committed.
 */
export class PaymentIntake {
  private readonly lanes: Lane[];
  private closed = false;

  constructor(private readonly opts: IntakeOptions) {
    this.lanes = Array.from({ length: Math.max(1, opts.lanes) }, () => new Lane(this));
  }

  /** Stores one validated event; resolves with its result or rejects with a HeraldError. */
  submit(event: PaymentEvent, source: EventSource): Promise<ReportResult> {
    if (this.closed) return Promise.reject(new HeraldError('shutting_down'));
    if (this.opts.queueMax !== undefined && this.waiting() >= this.opts.queueMax) {
      this.opts.onOutcome?.('overloaded');
      return Promise.reject(
        new HeraldError(
          'overloaded',
          `${this.waiting()} payment events already wait for the store on this node (PAYMENT_QUEUE_MAX ${this.opts.queueMax}); retry later.`,
        ),
      );
    }
    const lane = this.lanes[hash(orderKey(event.appId, event.orderId)) % this.lanes.length] as Lane;
    return new Promise((resolve, reject) => lane.push({ event, source, resolve, reject }));
  }

  /** Events waiting for a transaction, over all lanes (not those of the transactions running). */
  waiting(): number {
    let n = 0;
    for (const l of this.lanes) n += l.size;
    return n;
  }

  /** Refuses new events and resolves when every queued one has been answered. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.lanes.map((l) => l.idle()));
  }

  /** Forgets cached orders that something other than the intake changed (the timeout sweep). */
  forget(keys: Iterable<string>): void {
    const cache = this.opts.cache;
    if (cache) for (const k of keys) cache.delete(k);
  }

  /**
   * The orders of a batch: from the cache when it holds them, assumed new when their first event in
   * the batch is `created` and the cache does not know them, read from the store otherwise (one round
   * trip for all of those). `cached` lists the keys the write must check (see ApplyOptions.cached).
   */
  private async ordersOf(
    batch: readonly Pending[],
    useCache: boolean,
  ): Promise<{ orders: Map<string, Order>; cached: Set<string>; assumed: number }> {
    const { store, cache, onCache } = this.opts;
    const cached = new Set<string>();
    if (!cache || !useCache) {
      const orders = await loadOrders(
        store,
        batch.map((p) => p.event),
      );
      onCache?.('read', new Set(batch.map((p) => orderKey(p.event.appId, p.event.orderId))).size);
      return { orders, cached, assumed: 0 };
    }
    const orders = new Map<string, Order>();
    const first = new Map<string, PaymentEvent>();
    for (const p of batch) {
      const k = orderKey(p.event.appId, p.event.orderId);
      if (!first.has(k)) first.set(k, p.event);
    }
    const missing: PaymentEvent[] = [];
    let assumed = 0;
    for (const [k, ev] of first) {
      const o = cache.get(k);
      if (o) {
        orders.set(k, o);
        cached.add(k);
      } else if (ev.type === 'created') assumed++;
      else missing.push(ev);
    }
    if (missing.length > 0) for (const [k, o] of await loadOrders(store, missing)) orders.set(k, o);
    if (onCache) {
      if (cached.size > 0) onCache('hit', cached.size);
      if (assumed > 0) onCache('new', assumed);
      if (missing.length > 0) onCache('read', missing.length);
    }
    return { orders, cached, assumed };
  }

  /** Stores a batch, retrying on conflicts; answers every item. */
  async process(batch: Pending[]): Promise<void> {
    const { store, logger, cache } = this.opts;
    let known = new Set<string>();
    for (let attempt = 1; ; attempt++) {
      const started = performance.now();
      let outcomes: ItemOutcome[];
      let transitions: Transition[];
      let outboxId: string | undefined;
      let orders: Map<string, Order> | undefined;
      // The cache serves the first attempt only: a retry reads everything from the store.
      let fromCache = false;
      const published = this.opts.published?.take() ?? [];
      try {
        // No explicit transaction: the orders (from the cache, or read in one round trip), then one
        // statement that writes everything and aborts itself if another statement changed any of it.
        const read = await this.ordersOf(batch, attempt === 1 && known.size === 0);
        orders = read.orders;
        fromCache = read.cached.size > 0 || read.assumed > 0;
        ({ outcomes, transitions, outboxId } = await applyEvents(store, orders, batch, {
          defaultCurrency: this.opts.defaultCurrency,
          knownDuplicates: known,
          realtime: this.opts.realtime,
          published,
          cached: read.cached,
          keyedUpdate: store.kind === 'postgres',
        }));
      } catch (err) {
        if (cache) for (const p of batch) cache.delete(orderKey(p.event.appId, p.event.orderId));
        if (published.length > 0) this.opts.published?.giveBack(published);
        if (err instanceof OrderConflict && fromCache && attempt < MAX_ATTEMPTS) {
          // The cache was stale (another node or the sweep changed an order): at once from the store.
          this.opts.onCache?.('stale', 1);
          continue;
        }
        if (err instanceof DuplicateConflict && attempt < MAX_ATTEMPTS) {
          known = new Set([...known, ...err.keys]);
          continue;
        }
        const retryable =
          err instanceof OrderConflict ||
          (err instanceof SqlError && err.code !== undefined && RETRY_SQLSTATES.has(err.code));
        if (retryable && attempt < MAX_ATTEMPTS) {
          await new Promise((r) => setTimeout(r, Math.random() * 10 * attempt));
          continue;
        }
        // Not when the store is unreachable (no SQLSTATE, or the connection classes postgres.ts gives
        // such failures, 08006): each event alone would wait for the store to fail again (up to the
        // 5 s connect timeout), so a batch of 256 answered its reporters 20 minutes later, and every
        // event queued behind it waited too.
        const unreachable = storeError(err).code === 'store_unavailable';
        if (batch.length > 1 && !unreachable) {
          // One event may be what the store refuses: store the others one by one.
          logger.warn({ err, events: batch.length }, 'payment batch failed; storing its events one by one');
          for (const p of batch) await this.process([p]);
          return;
        }
        logger.error(
          { err, eventIds: batch.map((p) => p.event.eventId) },
          'payment events could not be stored',
        );
        const he = storeError(err);
        for (const p of batch) p.reject(he);
        return;
      }
      this.opts.onBatch?.(batch.length, (performance.now() - started) / 1000);
      if (cache) for (const [k, o] of orders) cache.set(k, o);
      try {
        this.opts.onCommitted(transitions, outboxId);
      } catch (err) {
        logger.error({ err }, 'payment notifications failed');
      }
      outcomes.forEach((o, i) => {
        const p = batch[i] as Pending;
        if (o.ok) {
          this.opts.onOutcome?.(o.result.duplicate ? 'duplicate' : o.result.stale ? 'stale' : 'transition');
          p.resolve(o.result);
        } else {
          this.opts.onOutcome?.('invalid');
          p.reject(o.error);
        }
      });
      return;
    }
  }

  get batchMax(): number {
    return this.opts.batchMax;
  }
}

/** A FIFO of events stored by one transaction at a time. */
class Lane {
  private readonly queue: Pending[] = [];
  private running: Promise<void> | undefined;

  constructor(private readonly intake: PaymentIntake) {}

  get size(): number {
    return this.queue.length;
  }

  push(p: Pending): void {
    this.queue.push(p);
    if (!this.running) this.running = this.run();
  }

  private async run(): Promise<void> {
    // Let the events that arrive in the same turn of the event loop join the first batch.
    await new Promise((r) => setImmediate(r));
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, this.intake.batchMax);
      try {
        await this.intake.process(batch);
      } catch {
        // process() answers every item itself; this only guards the lane against a bug there.
        for (const p of batch) p.reject(new HeraldError('internal_error'));
      }
    }
    this.running = undefined;
  }

  async idle(): Promise<void> {
    while (this.running) await this.running;
  }
}
