import { randomUUID } from 'node:crypto';
import type { Registry } from 'prom-client';
import { type Config, ConfigError } from '../config/index.js';
import { HeraldError, isHeraldError } from '../errors.js';
import { currentMaxJsonDepth, jsonProblem, textProblem } from '../input.js';
import type { Logger } from '../logger.js';
import type { Store } from '../store/index.js';
import { type Alert, Alerter, circuitBreakerAlert, slowMerchantAlert, systemAlert } from './alerts.js';
import { merchantKeyOf } from './merchant-key.js';
import { WebhookMetrics } from './metrics.js';
import {
  type DeliveryRow,
  type DeliveryUpdate,
  IntakeTimeout,
  isDataException,
  type MerchantRow,
  type MerchantTransition,
  type MerchantUpdate,
  WebhookQueue,
} from './queue.js';
import { AbortedByShutdown, Cancel, Sender, storableText } from './sender.js';
import { generateSecret, newMessageId, signatureHeaders } from './signing.js';
import { literalHostBlocked } from './ssrf.js';
import type { AttemptResult, ClaimedDelivery, MerchantNotifyInput } from './types.js';
import { SlidingWindow } from './window.js';

/** Results written between two VACUUMs of the embedded store's queue tables at most. */
const VACUUM_EVERY_RESULTS = 20_000;
/**
 * Time between two VACUUMs of the embedded store while webhooks are being delivered at all. A VACUUM holds
 * the store's one connection while it runs, so it is not run more often than this.
 */
const VACUUM_EVERY_MS = 600_000;
/** Breaker upkeep interval while this node knows of no open breaker. */
const MAINTAIN_IDLE_EVERY = 5000;

export type WebhookConfig = Pick<
  Config,
  | 'webhookTimeout'
  | 'webhookRetryDelays'
  | 'webhookRetryJitter'
  | 'webhookConcurrency'
  | 'webhookMerchantConcurrency'
  | 'webhookSlowConcurrency'
  | 'webhookSlowThreshold'
  | 'webhookSlowLaneAfter'
  | 'webhookBreakerThreshold'
  | 'webhookBreakerOpen'
  | 'webhookBreakerDelay'
  | 'webhookMaxAge'
  | 'webhookRequireSuccessBody'
  | 'webhookAllowPrivateNetworks'
  | 'webhookDefaultSecret'
  | 'webhookLease'
  | 'webhookPollInterval'
  | 'webhookLogRetention'
  | 'webhookIdempotencyRetention'
  | 'webhookSlowMinSamples'
  | 'webhookPrefetch'
  | 'webhookSlowStart'
  | 'webhookClaimBatch'
  | 'webhookFlushBatch'
  | 'webhookDispatch'
  | 'webhookAlertWindow'
  | 'webhookAlertInterval'
  | 'webhookAlertCooldown'
  | 'webhookAlertQueueLength'
  | 'webhookAlertSuccessRate'
  | 'webhookAlertErrorRate'
  | 'webhookAlertResponseTime'
  | 'webhookAlertMinSamples'
  | 'telegramBotToken'
  | 'telegramChatIds'
  | 'telegramMinInterval'
  | 'telegramApiBase'
  | 'alertWebhookUrl'
  | 'maxPayloadBytes'
>;

export interface WebhookEngineOptions {
  config: WebhookConfig;
  store: Store;
  logger: Logger;
  /** Registers the engine's metrics here (the node's `Metrics.registry`). */
  registry?: Registry;
  /** Sent in the User-Agent header. */
  version?: string;
}

interface InFlight {
  key: string;
  cancel: Cancel;
  done: Promise<void>;
  slow: boolean;
  timer: NodeJS.Timeout | undefined;
}

interface Finished {
  row: ClaimedDelivery;
  result: AttemptResult;
  update: DeliveryUpdate;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A results write the store refused (SQLSTATE class 22). */
const REFUSED = Symbol('refused');

/** A result with every text from outside made storable (see storableText). */
function storableFinished(f: Finished): Finished {
  const text = (s: string | null) => (s === null ? null : storableText(s));
  const result = { ...f.result, responseBody: text(f.result.responseBody), error: text(f.result.error) };
  return {
    row: f.row,
    result,
    update: { ...f.update, responseBody: result.responseBody, error: result.error },
  };
}

/**
 * The merchant webhook delivery engine: a durable queue in the SQL store, a dispatcher that claims due
 * webhooks in batches with a lease and sends them concurrently (global and per-merchant limits, smaller
 * shares for slow merchants, circuit breakers shared through the store), retries on a schedule, an
 * attempt log, alerts, and retention. Several nodes may run it on one PostgreSQL database.
 */
export class WebhookEngine {
  readonly queue: WebhookQueue;
  readonly alerter: Alerter;
  readonly metrics: WebhookMetrics | undefined;
  readonly nodeId = randomUUID();
  private readonly config: WebhookConfig;
  private readonly store: Store;
  private readonly logger: Logger;
  private readonly sender: Sender;
  private readonly window: SlidingWindow;
  /** Counts not yet added to the shared window table (PostgreSQL). */
  private unpublished = { attempts: 0, successes: 0, totalMs: 0, delivered: 0, failed: 0 };
  private state: 'idle' | 'running' | 'stopping' | 'stopped' = 'idle';
  private stopping: Promise<void> | undefined;
  private loopDone: Promise<void> | undefined;
  /** When the dispatcher started (slow start: WEBHOOK_SLOW_START). */
  private dispatchStartedAt = 0;
  /** Share of the concurrency limits in use, below 1 during the slow start. */
  private ramp = 1;
  private wakeUp: (() => void) | undefined;
  private woken = false;
  /** The last claim found nothing: the next poll probes the queue before claiming (see run). */
  private lastClaimEmpty = false;
  private readonly inFlight = new Map<string, InFlight>();
  /** In-flight requests in the slow lane (slow merchants, or running longer than WEBHOOK_SLOW_LANE_AFTER). */
  private slowLane = 0;
  /** The same per merchant. */
  private readonly slowLaneOf = new Map<string, number>();
  /**
   * Merchants whose last request this node sent finished within the normal lane. Until then (a merchant
   * this node has not heard from yet, or one that just lagged) a merchant gets the slow share: a slow start,
   * so that many merchants turning slow at once cannot fill both lanes before any of them is marked slow.
   */
  private readonly provenFast = new Set<string>();
  /**
   * Merchants that had a request in the slow lane and have not answered in time since: they keep the slow
   * share of leases in claims (see lagCaps) until the store marks them slow or they are fast again.
   */
  private readonly lagging = new Set<string>();
  /** The last pump stopped for want of free slots with rows still buffered (see pumpAfter). */
  private globalBound = false;
  /** A pump left rows of slow merchants buffered because the slow lane was full (see canStart). */
  private slowBound = false;
  /**
   * Claimed rows waiting for a slot, per merchant, oldest first; `at` is when the claim that leased the row
   * was sent (its lease started no earlier).
   */
  private readonly buffered = new Map<string, { row: ClaimedDelivery; at: number }[]>();
  /** Buffered rows whose lease ran too short to start them (see startable); released by the loop. */
  private expired: string[] = [];
  private bufferedCount = 0;
  private readonly merchantInFlight = new Map<string, number>();
  /** Merchants this node took in a claim and has not given up yet (see WebhookQueue.claim). */
  private readonly owned = new Set<string>();
  /** Merchants this node has seen become slow / open since their rows were claimed. */
  private readonly slowKnown = new Set<string>();
  /**
   * Consecutive failures this node saw per merchant since the store last told it the count. At the
   * breaker threshold the merchant's buffer is held until the store's verdict (open, or not) arrives, so
   * a breaker takes effect at once instead of one flush later.
   */
  private readonly localFailures = new Map<string, number>();
  /** Merchant key -> when this node learned that its breaker opened. */
  private readonly openKnown = new Map<string, number>();
  private results: Finished[] = [];
  /** The batch being written by flushLoop (its rows are still leased until it commits). */
  private flushingBatch: Finished[] = [];
  /** Results written since the last VACUUM (embedded store), and when it ran. */
  private sinceVacuum = 0;
  private lastVacuum = Date.now();
  /** When the WEBHOOK_MAX_AGE sweep last ran. */
  private lastExpire = 0;
  private toRelease: string[] = [];
  private flushing: Promise<void> | undefined;
  private initialized: Promise<string> | undefined;
  private readonly timers: NodeJS.Timeout[] = [];
  private depthCache: { at: number; value: Promise<Record<string, number>> } | undefined;
  private merchantCache:
    | { at: number; value: Promise<{ open: number; halfOpen: number; slow: number }> }
    | undefined;
  private readonly slowChecked = new Map<string, number>();

  constructor(opts: WebhookEngineOptions) {
    const { config } = opts;
    if (config.webhookLease <= config.webhookTimeout) {
      throw new ConfigError(
        'WEBHOOK_LEASE',
        `must be longer than WEBHOOK_TIMEOUT (${config.webhookTimeout}ms), or live deliveries would be sent twice`,
      );
    }
    this.config = config;
    this.store = opts.store;
    this.logger = opts.logger.child({ part: 'webhooks' });
    const retryTotal = config.webhookRetryDelays.reduce((a, b) => a + b, 0);
    // The longest the schedule can take: every delay stretched by the whole jitter.
    const retrySpan = retryTotal * (1 + config.webhookRetryJitter);
    if (config.webhookMaxAge > 0 && retrySpan >= config.webhookMaxAge) {
      this.logger.warn(
        {
          webhookMaxAgeMs: config.webhookMaxAge,
          retryDelaysTotalMs: retryTotal,
          retryJitter: config.webhookRetryJitter,
        },
        'WEBHOOK_MAX_AGE is not longer than the sum of WEBHOOK_RETRY_DELAYS (with WEBHOOK_RETRY_JITTER): webhooks fail at the max age before their last retries',
      );
    }
    this.queue = new WebhookQueue(opts.store, {
      nodeId: this.nodeId,
      singleNode: opts.store.kind === 'embedded',
      lease: config.webhookLease,
      merchantLeases: config.webhookMerchantConcurrency * config.webhookPrefetch,
      slowLeases: Math.min(config.webhookSlowConcurrency, config.webhookMerchantConcurrency),
      slowThreshold: config.webhookSlowThreshold,
      slowMinSamples: config.webhookSlowMinSamples,
      breakerThreshold: config.webhookBreakerThreshold,
      breakerOpen: config.webhookBreakerOpen,
      breakerDelay: config.webhookBreakerDelay,
    });
    this.sender = new Sender({
      timeout: config.webhookTimeout,
      allowPrivateNetworks: config.webhookAllowPrivateNetworks,
      userAgent: `Herald-Webhooks/${opts.version ?? '0'}`,
      connectionsPerOrigin: config.webhookMerchantConcurrency,
    });
    this.window = new SlidingWindow(config.webhookAlertWindow);
    this.metrics = opts.registry
      ? new WebhookMetrics(opts.registry, {
          depth: () => this.cachedDepth(),
          merchants: () => this.cachedMerchantCounts(),
          inFlight: () => this.inFlight.size,
        })
      : undefined;
    this.alerter = new Alerter(
      config,
      this.logger,
      (alert, sink, ok) => this.metrics?.alerts.inc({ type: alert.type, sink, result: ok ? 'ok' : 'failed' }),
      (alert) => this.queue.recordAlert(alert),
    );
  }

  /** The merchant key of a notify URL / merchant id (the seed's `merchant_key`). */
  merchantKey(notifyUrl: string, merchantId?: string | null): string {
    return merchantKeyOf(notifyUrl, merchantId);
  }

  /**
   * Stores a notification durably and returns its id (the `webhook-id` merchants receive). The same
   * idempotency key (default: orderNo + eventType) returns the first notification's id with
   * `duplicate: true` and never creates a second delivery. Throws HeraldError: `validation_failed`,
   * `invalid_notify_url`, `payload_too_large`, or `store_unavailable` when the store fails.
   * `options.wrapDepth`: levels an in-process producer added around a value it accepted at MAX_JSON_DEPTH
   * (the offline fallback wraps a notification's `data` once), allowed on top of that limit.
   */
  async enqueue(
    input: MerchantNotifyInput,
    options: { wrapDepth?: number } = {},
  ): Promise<{ id: string; duplicate: boolean }> {
    const orderNo = typeof input.orderNo === 'string' ? input.orderNo.trim() : '';
    if (orderNo.length === 0 || orderNo.length > 128) {
      throw new HeraldError('validation_failed', 'orderNo must be a string of 1-128 characters.');
    }
    const url = this.checkNotifyUrl(input.notifyUrl);
    for (const [name, v, max] of [
      ['merchantId', input.merchantId, 128],
      ['eventType', input.eventType, 64],
      ['idempotencyKey', input.idempotencyKey, 256],
    ] as const) {
      if (v !== undefined && v !== null && (typeof v !== 'string' || v.length === 0 || v.length > max)) {
        throw new HeraldError('validation_failed', `${name} must be a string of 1-${max} characters.`);
      }
    }
    // The store cannot hold NUL characters or unpaired surrogates in text: name the field (a 400), instead
    // of letting the insert fail (a 503 the client would retry forever).
    for (const [name, v] of [
      ['orderNo', orderNo],
      ['merchantId', input.merchantId],
      ['eventType', input.eventType],
      ['idempotencyKey', input.idempotencyKey],
    ] as const) {
      const problem = typeof v === 'string' ? textProblem(v) : undefined;
      if (problem) {
        throw new HeraldError('validation_failed', `${name} ${problem}.`, [
          { path: `/${name}`, message: problem },
        ]);
      }
    }
    if (input.payload === undefined) throw new HeraldError('validation_failed', 'payload is required.');
    // The payload is stored as JSON text, where NUL and lone surrogates travel as \u escapes: only
    // numbers JSON cannot carry (1e309 parses to Infinity, sent as null) and absurd nesting are refused.
    const bad = jsonProblem(input.payload, false, currentMaxJsonDepth() + (options.wrapDepth ?? 0));
    if (bad) {
      throw new HeraldError('validation_failed', `payload${bad.path} ${bad.message}.`, [
        { path: `/payload${bad.path}`, message: bad.message },
      ]);
    }
    let body: string;
    try {
      body = JSON.stringify(input.payload);
    } catch (err) {
      throw new HeraldError('validation_failed', `payload cannot be sent as JSON: ${(err as Error).message}`);
    }
    if (Buffer.byteLength(body) > this.config.maxPayloadBytes) {
      throw new HeraldError(
        'payload_too_large',
        `payload is larger than MAX_PAYLOAD_BYTES (${this.config.maxPayloadBytes} bytes as JSON).`,
      );
    }
    // null is taken as "not given", for callers that carry optional columns as null.
    const eventType = input.eventType ?? null;
    const idempotencyKey = input.idempotencyKey ?? `${orderNo}:${eventType ?? ''}`;
    const merchantId = input.merchantId ?? null;
    try {
      const r = await this.queue.enqueue({
        id: newMessageId(),
        idempotencyKey,
        orderNo,
        eventType,
        merchantKey: merchantKeyOf(url.href, merchantId),
        merchantId,
        notifyUrl: url.href,
        body,
      });
      this.metrics?.enqueued.inc({ result: r.duplicate ? 'duplicate' : 'new' });
      if (!r.duplicate) this.wake();
      return r;
    } catch (err) {
      if (isHeraldError(err)) throw err;
      if (err instanceof IntakeTimeout) {
        this.logger.error({ orderNo, ms: err.ms }, 'webhook intake: the store did not answer in time');
        throw new HeraldError(
          'store_unavailable',
          err.stored === false
            ? `The store did not take the webhook within ${err.ms} ms; it was not stored. Retry later.`
            : `The store did not confirm the webhook within ${err.ms} ms. Retry later with the same ` +
                'idempotency key: if it was stored meanwhile, the answer is duplicate with its id.',
        );
      }
      if (isDataException(err)) {
        // SQLSTATE class 22: the store refused a value of this request; sending it again cannot help.
        this.logger.warn({ err, orderNo }, 'webhook intake: the store refused a value');
        throw new HeraldError(
          'validation_failed',
          'The store refused a value of this webhook (text, number or time it cannot hold); fix the request.',
        );
      }
      this.logger.error({ err, orderNo }, 'webhook intake: the store failed');
      throw new HeraldError('store_unavailable', 'The webhook could not be stored; retry later.');
    }
  }

  private checkNotifyUrl(raw: unknown): URL {
    if (typeof raw !== 'string' || raw.length === 0 || raw.length > 2048) {
      throw new HeraldError(
        'invalid_notify_url',
        'notifyUrl must be an http(s) URL of at most 2048 characters.',
      );
    }
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new HeraldError('invalid_notify_url', `notifyUrl ${JSON.stringify(raw)} is not a URL.`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new HeraldError('invalid_notify_url', 'notifyUrl must start with http:// or https://.');
    }
    if (!this.config.webhookAllowPrivateNetworks && literalHostBlocked(url)) {
      throw new HeraldError(
        'invalid_notify_url',
        'notifyUrl points to a private or local address; set WEBHOOK_ALLOW_PRIVATE_NETWORKS=true to allow it.',
      );
    }
    return url;
  }

  /** Starts the dispatcher (unless WEBHOOK_DISPATCH=false), the alert rules and retention. Idempotent. */
  start(): void {
    if (this.state !== 'idle') return;
    this.state = 'running';
    if (this.config.webhookDispatch) {
      this.startSlowStart();
      this.loopDone = this.run();
    }
    const every = (ms: number, fn: () => Promise<void>) => {
      const t = setInterval(() => {
        fn().catch((err: unknown) => this.logger.warn({ err }, 'webhook background task failed'));
      }, ms);
      t.unref();
      this.timers.push(t);
    };
    every(this.config.webhookAlertInterval, () => this.checkAlerts());
    if (this.store.kind === 'postgres') {
      every(this.publishEvery(), () => this.publishWindow());
    }
    const cleanupEvery = Math.max(
      60_000,
      Math.min(3_600_000, Math.floor(this.config.webhookLogRetention / 10)),
    );
    every(cleanupEvery, async () => {
      await this.cleanup(this.config.webhookLogRetention);
    });
  }

  /**
   * Stops claiming, lets in-flight deliveries finish (up to the request timeout), gives back the leases of
   * any that did not, and writes every result. Idempotent; call before the store closes.
   */
  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    this.stopping = (async () => {
      const wasRunning = this.state === 'running';
      this.state = 'stopping';
      for (const t of this.timers) clearInterval(t);
      this.wake();
      if (wasRunning) {
        await this.loopDone;
        this.toRelease.push(...this.unbuffer(), ...this.expired.splice(0));
        const all = () => Promise.allSettled([...this.inFlight.values()].map((f) => f.done));
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          all(),
          new Promise<void>((r) => {
            timer = setTimeout(r, this.config.webhookTimeout + 500);
          }),
        ]);
        if (timer) clearTimeout(timer);
        for (const f of this.inFlight.values()) f.cancel.abort();
        await all();
        await this.flushNow();
        if (this.store.kind === 'postgres') {
          await this.publishWindow().catch((err: unknown) =>
            this.logger.warn({ err }, 'could not add the last alert-window counts to the shared table'),
          );
        }
        // Leases first: a node that takes a merchant given up here counts no leases of this one.
        if (this.toRelease.length > 0) {
          const ids = this.toRelease.splice(0);
          await this.queue
            .release(ids)
            .catch((err: unknown) =>
              this.logger.warn(
                { err, count: ids.length },
                'could not release leases; they expire by themselves',
              ),
            );
        }
        await this.queue
          .releaseOwnership()
          .catch((err: unknown) =>
            this.logger.warn({ err }, 'could not give up merchants; other nodes take them after the lease'),
          );
        this.owned.clear();
      }
      await this.sender.close();
      await this.alerter.close();
      this.state = 'stopped';
    })();
    return this.stopping;
  }

  /** The effective default signing secret (configured, or generated once and kept in the store). */
  defaultSecret(): Promise<string> {
    if (!this.initialized) {
      this.initialized = this.queue
        .defaultSecret(this.config.webhookDefaultSecret, generateSecret())
        .catch((err) => {
          this.initialized = undefined;
          throw err;
        });
    }
    return this.initialized;
  }

  /** The secret a merchant's webhooks are signed with. */
  async signingSecret(merchant: MerchantRow | null): Promise<string> {
    return merchant?.secret ?? (await this.defaultSecret());
  }

  /** Sends the alert of `type` about one merchant now, bypassing de-duplication (admin action). */
  sendMerchantAlert(m: MerchantRow, type: 'slow_merchant' | 'circuit_breaker'): Alert {
    const alert =
      type === 'slow_merchant'
        ? slowMerchantAlert({
            merchantKey: m.merchant_key,
            notifyUrl: m.notify_url,
            avgMs: m.avg_ms,
            thresholdMs: this.config.webhookSlowThreshold,
          })
        : circuitBreakerAlert({
            merchantKey: m.merchant_key,
            notifyUrl: m.notify_url,
            failures: m.consecutive_failures,
            openMs: this.config.webhookBreakerOpen,
          });
    this.alerter.emit(alert);
    return alert;
  }

  /** Sends matching webhooks again now with a fresh retry schedule (admin action). */
  async retry(
    ref: { seq?: number; id?: string; orderNo?: string },
    includeDelivered = false,
  ): Promise<DeliveryRow[]> {
    const rows = await this.queue.retry(ref, includeDelivered);
    if (rows.length > 0) this.wake();
    return rows;
  }

  /** Closes a merchant's breaker, clears its failures and re-enables a URL disabled by 410 (admin action). */
  async resetMerchant(merchantKey: string): Promise<MerchantRow | null> {
    const r = await this.queue.resetMerchant(merchantKey);
    this.openKnown.delete(merchantKey);
    this.logger.info({ merchantKey }, 'merchant reset by an admin');
    this.wake();
    return r;
  }

  /**
   * Deletes attempt logs older than `olderThanMs` and the payload of webhooks finished before then; their
   * idempotency keys stay until WEBHOOK_IDEMPOTENCY_RETENTION (see WebhookQueue.cleanup).
   */
  async cleanup(olderThanMs: number): Promise<{ logs: number; notifications: number; keys: number }> {
    const r = await this.queue.cleanup(olderThanMs, this.config.webhookIdempotencyRetention);
    if (r.logs + r.notifications + r.keys > 0) this.logger.info(r, 'webhook retention: old logs deleted');
    return r;
  }

  /** Current concurrency share of a merchant. */
  concurrencyOf(m: MerchantRow): number {
    if (m.breaker_state === 'open') return 0;
    if (m.breaker_state === 'half_open') return 1;
    return m.is_slow
      ? Math.min(this.config.webhookSlowConcurrency, this.config.webhookMerchantConcurrency)
      : this.config.webhookMerchantConcurrency;
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  // ---- dispatcher ---------------------------------------------------------------------------------

  private wake(): void {
    this.woken = true;
    const w = this.wakeUp;
    this.wakeUp = undefined;
    w?.();
  }

  private idle(ms: number): Promise<void> {
    if (this.woken || this.state !== 'running') {
      this.woken = false;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.wakeUp = undefined;
        resolve();
      }, ms);
      this.wakeUp = () => {
        clearTimeout(t);
        resolve();
      };
    }).then(() => {
      this.woken = false;
    });
  }

  private async run(): Promise<void> {
    const poll = this.config.webhookPollInterval;
    // Start-up: the default secret, and leases left by a dead process of the embedded store.
    while (this.state === 'running') {
      try {
        await this.defaultSecret();
        if (!this.config.webhookDefaultSecret) {
          this.logger.warn(
            'WEBHOOK_DEFAULT_SECRET is not set: merchants without their own secret get webhooks signed with a ' +
              'secret generated once and kept in the store (GET /admin/merchant-notify/signing-secret shows it)',
          );
        }
        if (this.store.kind === 'embedded') {
          const n = await this.queue.releaseAllLeases();
          if (n > 0)
            this.logger.info({ count: n }, 'webhooks left in flight by a previous run are due again');
        }
        break;
      } catch (err) {
        this.logger.error({ err }, 'webhook dispatcher cannot start: the store failed; retrying');
        await this.idle(Math.max(poll, 1000));
      }
    }
    let lastMaintain = 0;
    let failures = 0;
    while (this.state === 'running') {
      try {
        let trials: string[] = [];
        // Breaker upkeep runs often while this node knows of a breaker that is not closed, and
        // every few seconds otherwise (to find breakers opened by other nodes): most of the time no
        // breaker is open, and the statement is not free on the single-connection embedded store.
        // With a breaker open, upkeep runs often enough for its periods (a tenth of the shorter of open
        // period and delay, at most every second), not every poll: on the embedded store each run takes the
        // store's one connection from the claims and results of the healthy merchants.
        const openEvery = Math.max(
          poll,
          Math.min(1000, this.config.webhookBreakerOpen / 10, this.config.webhookBreakerDelay / 10),
        );
        const every = this.openKnown.size > 0 ? openEvery : Math.max(poll, MAINTAIN_IDLE_EVERY);
        if (Date.now() >= lastMaintain + every) {
          lastMaintain = Date.now();
          const m = await this.queue.maintain();
          if (m.delayed > 0) {
            this.metrics?.breakerDelayed.inc(m.delayed);
            this.logger.debug({ count: m.delayed }, 'webhooks of merchants with an open breaker delayed');
          }
          trials = m.trials;
        }
        // Leases given back first: a row that reached the max age while it waited here (pastMaxAge) is
        // given back, then ended by expireOld, which takes unleased rows only.
        await this.releaseStale();
        await this.expireOld();
        await this.releaseIdleOwnership();
        await this.vacuumIfDue();
        const budget =
          this.config.webhookConcurrency * 2 +
          this.config.webhookMerchantConcurrency * this.config.webhookPrefetch;
        const room = budget - this.inFlight.size - this.bufferedCount;
        // A claim costs the store one statement that visits every merchant with queued rows, whatever it
        // returns: while the buffer still holds work for every slot, the next claim waits until it can take
        // a good share of the budget (a quarter), so that rows held by slow merchants or by open breakers
        // cannot turn the dispatcher into a stream of claims of a few rows each.
        // During the slow start claims grow with the concurrency limits: a claim of hundreds of rows is
        // decoded and buffered in one turn, which cold code made the start-up's longest turn.
        const claimMax = Math.max(1, Math.floor(this.config.webhookClaimBatch * this.ramp));
        const chunk = Math.min(claimMax, Math.max(1, Math.floor(budget / 4)));
        // Free slots after a pump: nothing buffered can start, so a claim is needed however small.
        const starving = this.freeSlots() > 0;
        // After a claim that found nothing, an empty queue is told by a cheap probe (an enqueue on this
        // node wakes the dispatcher; one on another node is found at the next poll, as before).
        const empty =
          this.lastClaimEmpty && trials.length === 0 && room > 0 && !(await this.queue.anyQueued());
        if (
          !empty &&
          room > 0 &&
          (room >= chunk || starving || trials.length > 0) &&
          this.state === 'running'
        ) {
          const want = Math.min(room, claimMax);
          const claimedAt = Date.now();
          const rows = await this.queue.claim(want, trials, this.heldLeases(), this.lagCaps());
          this.lastClaimEmpty = rows.length === 0;
          if (trials.length > 0) {
            const used = new Set(rows.filter((r) => r.trial).map((r) => r.merchantKey));
            const unused = trials.filter((t) => !used.has(t));
            await this.queue.releaseTrials(unused);
            for (const t of used)
              this.logger.info({ merchantKey: t }, 'breaker half-open: sending one trial webhook');
          }
          const giveBack: string[] = [];
          // A row this node still holds (buffered, in flight, or its result not yet written) comes back in
          // a claim once its lease ran out meanwhile: the claim renewed the lease, and the row must not be
          // buffered a second time (it would be sent twice).
          const mine = rows.length > 0 ? this.heldIds() : undefined;
          for (const row of rows) {
            if (mine?.has(row.id)) {
              this.renewBuffered(row, claimedAt);
              continue;
            }
            // A claimed row proves the merchant's breaker was closed (or this is its trial) when the claim
            // started, and says whether it is slow. A claim that started before this node learned that the
            // breaker opened is older news: its rows of that merchant go back at once.
            const openedAt = this.openKnown.get(row.merchantKey);
            if (openedAt !== undefined && openedAt >= claimedAt && !row.trial) {
              giveBack.push(row.id);
              continue;
            }
            this.openKnown.delete(row.merchantKey);
            this.owned.add(row.merchantKey);
            if (row.slow) this.slowKnown.add(row.merchantKey);
            else this.slowKnown.delete(row.merchantKey);
            let q = this.buffered.get(row.merchantKey);
            if (!q) {
              q = [];
              this.buffered.set(row.merchantKey, q);
            }
            q.push({ row, at: claimedAt });
            this.bufferedCount++;
          }
          this.pump();
          if (giveBack.length > 0) await this.queue.release(giveBack);
          failures = 0;
          // A full claim suggests more due rows: claim again at once while there is room for a chunk.
          if (rows.length === want && room - rows.length >= chunk) continue;
        } else if (trials.length > 0) {
          await this.queue.releaseTrials(trials);
        }
        failures = 0;
        await this.idle(poll);
      } catch (err) {
        failures++;
        this.logger.error({ err }, 'webhook dispatcher: the store failed; retrying');
        await this.idle(Math.min(5000, poll * 2 ** Math.min(failures, 6)));
      }
    }
  }

  /**
   * WEBHOOK_MAX_AGE: queued webhooks older than the max age end `failed` (see WebhookQueue.expireOld), in
   * statements of at most WEBHOOK_FLUSH_BATCH rows, a few per run; counted as failed in the metrics
   * (`result="expired"`) and in the alert window (error_rate).
   */
  private async expireOld(): Promise<void> {
    const maxAge = this.config.webhookMaxAge;
    if (maxAge <= 0) return;
    const every = Math.max(this.config.webhookPollInterval, Math.min(MAINTAIN_IDLE_EVERY, maxAge / 10));
    if (Date.now() < this.lastExpire + every) return;
    this.lastExpire = Date.now();
    const limit = this.config.webhookFlushBatch;
    let total = 0;
    for (let i = 0; i < 10; i++) {
      const n = await this.queue.expireOld(maxAge, limit);
      total += n;
      if (n < limit) break;
    }
    if (total === 0) return;
    this.metrics?.deliveries.inc({ result: 'expired' }, total);
    this.window.finished('failed', total);
    this.unpublished.failed += total;
    this.logger.warn(
      { count: total, maxAgeMs: maxAge },
      'webhooks not delivered within WEBHOOK_MAX_AGE failed (max age reached)',
    );
  }

  /**
   * Free slots of the normal lane. Requests to merchants marked slow, and requests that have run longer
   * than WEBHOOK_SLOW_LANE_AFTER (or WEBHOOK_SLOW_THRESHOLD if shorter), move to a slow lane of the same
   * size, so slow merchants (even ones not yet known to be slow) can never take the capacity that the
   * others need for longer than that.
   */
  private freeSlots(): number {
    const c = this.limit(this.config.webhookConcurrency);
    const normal = this.inFlight.size - this.slowLane;
    return c - normal - Math.max(0, this.slowLane - c);
  }

  private toSlowLane(f: InFlight): void {
    if (f.slow) return;
    f.slow = true;
    this.slowLane++;
    this.provenFast.delete(f.key);
    this.lagging.add(f.key);
    this.slowLaneOf.set(f.key, (this.slowLaneOf.get(f.key) ?? 0) + 1);
    this.pump();
    this.wake();
  }

  /**
   * Slow start: the concurrency limits grow from a tenth to their full value over WEBHOOK_SLOW_START after
   * the dispatcher starts. A node restarted with a backlog otherwise starts every slot at once while its code
   * is still cold (interpreted, not yet optimised): the first second's turns ran two to four times longer and
   * its event-loop p99 reached 20-40 ms in `npm run bench -- webhooks`, against under 10 ms afterwards.
   */
  private startSlowStart(): void {
    const span = this.config.webhookSlowStart;
    if (span <= 0) return;
    this.dispatchStartedAt = Date.now();
    this.ramp = 0.1;
    const t = setInterval(
      () => {
        this.ramp = Math.min(1, 0.1 + (0.9 * (Date.now() - this.dispatchStartedAt)) / span);
        if (this.ramp >= 1) {
          clearInterval(t);
          const i = this.timers.indexOf(t);
          if (i >= 0) this.timers.splice(i, 1);
        }
        // Slots grew: start what the buffer holds (nothing else would until a request finishes).
        this.pump();
      },
      Math.max(20, Math.min(250, span / 20)),
    );
    t.unref();
    this.timers.push(t);
  }

  /** A concurrency limit as it applies now (slow start), never below 1. */
  private limit(full: number): number {
    return this.ramp >= 1 || full <= 1 ? full : Math.max(1, Math.floor(full * this.ramp));
  }

  /** How many requests this node sends to a merchant at once. */
  private capOf(key: string, row: ClaimedDelivery): number {
    return this.limit(this.fullCapOf(key, row));
  }

  private fullCapOf(key: string, row: ClaimedDelivery): number {
    if (row.trial) return 1;
    if (this.openKnown.has(key)) return 0;
    if ((this.localFailures.get(key) ?? 0) >= this.config.webhookBreakerThreshold) return 0;
    // A merchant with a request in the slow lane, or not yet heard answering in time, gets the slow share
    // (before enough samples mark it slow): otherwise many merchants that turn slow together could fill
    // both lanes until their first answers.
    if (row.slow || this.slowKnown.has(key) || this.slowLaneOf.has(key) || !this.provenFast.has(key)) {
      return Math.min(this.config.webhookSlowConcurrency, this.config.webhookMerchantConcurrency);
    }
    return this.config.webhookMerchantConcurrency;
  }

  /**
   * Whether the next buffered row of a merchant (`n` of its requests in flight) may start now: a free slot,
   * the merchant under its share, and, for a merchant known to be slow (marked slow, or with a request that
   * had to move to the slow lane and no answer in time since), a free slot of the slow lane. Their requests
   * would move there at once or soon; started while it is full, they would spill into the normal lane, and
   * enough slow merchants (each with its slow share) would then take every slot the others need.
   */
  private canStart(key: string, row: ClaimedDelivery, n: number): boolean {
    if (this.freeSlots() <= 0 || n >= this.capOf(key, row)) return false;
    if (
      (row.slow || this.slowKnown.has(key) || this.lagging.has(key)) &&
      this.slowLane >= this.limit(this.config.webhookConcurrency)
    ) {
      this.slowBound = true;
      return false;
    }
    return true;
  }

  /** Starts buffered webhooks while there are free slots, each merchant up to its share. */
  private pump(): void {
    this.slowBound = false;
    try {
      this.pumpAll();
    } finally {
      this.globalBound = this.bufferedCount > 0 && this.freeSlots() <= 0;
    }
  }

  private pumpAll(): void {
    if (this.bufferedCount === 0 || this.state !== 'running') return;
    for (const key of [...this.buffered.keys()]) {
      if (this.freeSlots() <= 0) return;
      const q = this.buffered.get(key);
      if (!q || q.length === 0) continue;
      let n = this.merchantInFlight.get(key) ?? 0;
      while (q.length > 0 && this.canStart(key, (q[0] as { row: ClaimedDelivery }).row, n)) {
        const b = q.shift() as { row: ClaimedDelivery; at: number };
        this.bufferedCount--;
        if (!this.startable(b.at) || this.pastMaxAge(b.row)) {
          this.expire(b.row.id);
          continue;
        }
        this.launch(b.row);
        n++;
      }
      if (q.length === 0) this.buffered.delete(key);
    }
  }

  /**
   * After a request of `key` finished. While the last pump left free slots (every merchant with buffered
   * rows was at its own share), only this merchant can have become able to start more, so only its buffer
   * is looked at: a pump over every buffered merchant after every answer cost the fast merchants about 20 µs
   * per webhook with twenty slow ones buffered. When slots were the limit, the full pump keeps the order
   * fair between merchants.
   */
  private pumpAfter(key: string, slow: boolean): void {
    // A slot of the slow lane freed while slow merchants wait for one: any of them may start.
    if (this.globalBound || (slow && this.slowBound)) {
      this.pump();
      return;
    }
    if (this.state !== 'running') return;
    const q = this.buffered.get(key);
    if (q && q.length > 0) {
      let n = this.merchantInFlight.get(key) ?? 0;
      while (q.length > 0 && this.canStart(key, (q[0] as { row: ClaimedDelivery }).row, n)) {
        const b = q.shift() as { row: ClaimedDelivery; at: number };
        this.bufferedCount--;
        if (!this.startable(b.at) || this.pastMaxAge(b.row)) {
          this.expire(b.row.id);
          continue;
        }
        this.launch(b.row);
        n++;
      }
      if (q.length === 0) this.buffered.delete(key);
    }
    this.globalBound = this.bufferedCount > 0 && this.freeSlots() <= 0;
  }

  /**
   * Whether a row leased by a claim sent at `claimedAt` may still be sent: its request (up to
   * WEBHOOK_TIMEOUT) must end well before its lease does, or another node (or this one) may claim it
   * again and send it a second time while it is still running. The buffer gives rows back after half the
   * spare time (releaseStale, run by the loop); this also holds when the loop is held up by a slow store
   * statement or a claim answered late, when rows would otherwise start from the buffer as slots free up.
   */
  private startable(claimedAt: number): boolean {
    const spare = this.config.webhookLease - this.config.webhookTimeout;
    return Date.now() - claimedAt <= (spare * 3) / 4;
  }

  /**
   * Whether a claimed row reached WEBHOOK_MAX_AGE while it waited for a slot (its merchant busy, a slow
   * lane full): it is not sent, but given back, and the max-age sweep, asked to run at once, ends it
   * `failed` (it takes unleased rows only).
   */
  private pastMaxAge(row: ClaimedDelivery): boolean {
    const maxAge = this.config.webhookMaxAge;
    if (maxAge <= 0 || Date.now() - row.ageFrom.getTime() < maxAge) return false;
    this.lastExpire = 0;
    return true;
  }

  private expire(id: string): void {
    this.expired.push(id);
    this.wake();
  }

  /**
   * Ids of the rows this node holds: buffered, in flight, finished with the result not yet written, or
   * about to be given back (expired): buffered again, such a row would lose its new lease to that release.
   */
  private heldIds(): Set<string> {
    const ids = new Set<string>(this.inFlight.keys());
    for (const id of this.expired) ids.add(id);
    for (const q of this.buffered.values()) for (const b of q) ids.add(b.row.id);
    for (const f of this.results) ids.add(f.row.id);
    for (const f of this.flushingBatch) ids.add(f.row.id);
    return ids;
  }

  /** A buffered row claimed again (its lease had run out): it keeps its place with the new lease. */
  private renewBuffered(row: ClaimedDelivery, claimedAt: number): void {
    const b = this.buffered.get(row.merchantKey)?.find((x) => x.row.id === row.id);
    if (b) b.at = claimedAt;
  }

  /**
   * Leases this node holds per merchant: buffered, in flight, and finished but not yet written. Claims
   * take them from here rather than counting them in the table (see WebhookQueue.claim).
   */
  private heldLeases(): Record<string, number> {
    const held: Record<string, number> = {};
    for (const [k, q] of this.buffered) held[k] = (held[k] ?? 0) + q.length;
    for (const [k, n] of this.merchantInFlight) held[k] = (held[k] ?? 0) + n;
    for (const f of this.results) held[f.row.merchantKey] = (held[f.row.merchantKey] ?? 0) + 1;
    for (const f of this.flushingBatch) held[f.row.merchantKey] = (held[f.row.merchantKey] ?? 0) + 1;
    return held;
  }

  /**
   * Lease caps for the merchants that lagged (a request in the slow lane, none answered in time since),
   * which the store may not have marked slow yet: the slow share, so their backlog does not fill this
   * node's buffer while their answers take seconds.
   */
  private lagCaps(): Record<string, number> | undefined {
    if (this.lagging.size === 0) return undefined;
    const caps: Record<string, number> = {};
    const share = Math.min(this.config.webhookSlowConcurrency, this.config.webhookMerchantConcurrency);
    for (const k of this.lagging) caps[k] = share;
    return caps;
  }

  /** The embedded store's upkeep (see WebhookQueue.vacuum), run between claims. */
  private async vacuumIfDue(): Promise<void> {
    if (this.store.kind !== 'embedded' || this.sinceVacuum === 0) return;
    if (this.sinceVacuum < VACUUM_EVERY_RESULTS && Date.now() - this.lastVacuum < VACUUM_EVERY_MS) return;
    this.sinceVacuum = 0;
    this.lastVacuum = Date.now();
    const started = Date.now();
    await this.queue.vacuum();
    const ms = Date.now() - started;
    if (ms > 1000) this.logger.info({ ms }, 'webhook queue tables vacuumed (the embedded store waited)');
    else this.logger.debug({ ms }, 'webhook queue tables vacuumed');
  }

  /**
   * Gives up the merchants this node has nothing buffered or in flight for. Runs in the dispatcher loop,
   * between claims, so a claim of this node can never race with its own release.
   */
  private async releaseIdleOwnership(): Promise<void> {
    if (this.owned.size === 0) return;
    const idle: string[] = [];
    for (const k of this.owned) {
      if (!this.buffered.has(k) && !this.merchantInFlight.has(k)) idle.push(k);
    }
    if (idle.length === 0) return;
    await this.queue.releaseOwnership(idle);
    for (const k of idle) {
      this.owned.delete(k);
      this.lagging.delete(k);
    }
  }

  /** Takes a merchant's buffered rows out (to give their leases back). */
  private unbuffer(key?: string): string[] {
    const ids: string[] = [];
    for (const [k, q] of this.buffered) {
      if (key !== undefined && k !== key) continue;
      for (const b of q) ids.push(b.row.id);
      this.bufferedCount -= q.length;
      this.buffered.delete(k);
    }
    return ids;
  }

  /**
   * Buffered rows that waited half of what their lease leaves after a request (their merchant slowed down
   * or filled its share) go back to the queue, so a row is never sent after its lease ran out.
   */
  private async releaseStale(): Promise<void> {
    if (this.bufferedCount === 0 && this.expired.length === 0) return;
    const limit = Date.now() - (this.config.webhookLease - this.config.webhookTimeout) / 2;
    const share = Math.min(this.config.webhookSlowConcurrency, this.config.webhookMerchantConcurrency);
    const ids: string[] = this.expired.splice(0);
    for (const [k, q] of this.buffered) {
      while (q.length > 0 && (q[0] as { at: number }).at < limit) {
        ids.push((q.shift() as { row: ClaimedDelivery }).row.id);
        this.bufferedCount--;
      }
      // A merchant that turned out to lag keeps no more buffered than its slow share: the rest go back to
      // the queue (in order, as their place there is kept), so its backlog does not hold the buffer that
      // the healthy merchants draw from for seconds.
      if (this.lagging.has(k) && q.length > share) {
        const extra = q.splice(share);
        for (const b of extra) ids.push(b.row.id);
        this.bufferedCount -= extra.length;
      }
      if (q.length === 0) this.buffered.delete(k);
    }
    if (ids.length > 0) await this.queue.release(ids);
  }

  private launch(row: ClaimedDelivery): void {
    const cancel = new Cancel();
    const f: InFlight = {
      key: row.merchantKey,
      cancel,
      done: Promise.resolve(),
      slow: false,
      timer: undefined,
    };
    if (row.slow) this.toSlowLane(f);
    else {
      f.timer = setTimeout(
        () => this.toSlowLane(f),
        Math.min(this.config.webhookSlowLaneAfter, this.config.webhookSlowThreshold),
      );
      f.timer.unref();
    }
    this.merchantInFlight.set(row.merchantKey, (this.merchantInFlight.get(row.merchantKey) ?? 0) + 1);
    f.done = this.deliver(row, cancel)
      .then(
        (result) => this.record(row, result),
        (err: unknown) => {
          if (err instanceof AbortedByShutdown) this.toRelease.push(row.id);
          else
            this.logger.error({ err, webhookId: row.id }, 'webhook delivery crashed; its lease will expire');
        },
      )
      .finally(() => {
        if (f.timer) clearTimeout(f.timer);
        if (!f.slow && !f.cancel.aborted) {
          if (this.provenFast.size >= 100_000) this.provenFast.clear();
          this.provenFast.add(f.key);
          this.lagging.delete(f.key);
        }
        if (f.slow) {
          this.slowLane--;
          const s = (this.slowLaneOf.get(f.key) ?? 1) - 1;
          if (s > 0) this.slowLaneOf.set(f.key, s);
          else this.slowLaneOf.delete(f.key);
        }
        this.inFlight.delete(row.id);
        const n = (this.merchantInFlight.get(row.merchantKey) ?? 1) - 1;
        if (n > 0) this.merchantInFlight.set(row.merchantKey, n);
        else this.merchantInFlight.delete(row.merchantKey);
        this.pumpAfter(row.merchantKey, f.slow);
      });
    this.inFlight.set(row.id, f);
  }

  private async deliver(row: ClaimedDelivery, cancel: Cancel): Promise<AttemptResult> {
    if (row.disabled) {
      return {
        outcome: 'disabled',
        statusCode: null,
        responseBody: null,
        durationMs: 0,
        error: 'the notify URL was disabled by 410 Gone; reset the merchant to enable it again',
        retryAfterMs: null,
      };
    }
    const secret = row.secret ?? (await this.defaultSecret());
    return this.sender.send({
      url: row.notifyUrl,
      body: row.body,
      headers: signatureHeaders(secret, row.id, row.body),
      requireSuccessBody: row.requireSuccessBody ?? this.config.webhookRequireSuccessBody,
      cancel,
    });
  }

  private record(row: ClaimedDelivery, result: AttemptResult): void {
    const attempts = row.attempts + 1;
    let status: DeliveryUpdate['status'];
    let delayMs: number | null = null;
    if (result.outcome === 'success') status = 'delivered';
    else if (result.outcome === 'gone' || result.outcome === 'disabled') status = 'failed';
    else {
      const delay = this.config.webhookRetryDelays[attempts - row.attemptBase - 1];
      if (delay === undefined) status = 'failed';
      else {
        status = 'retrying';
        delayMs = retryDelay(delay, this.config.webhookRetryJitter, result.retryAfterMs);
      }
    }
    if (result.outcome === 'success') this.localFailures.delete(row.merchantKey);
    else if (result.outcome !== 'disabled') {
      this.localFailures.set(row.merchantKey, (this.localFailures.get(row.merchantKey) ?? 0) + 1);
    }
    this.metrics?.deliveries.inc({ result: result.outcome });
    if (result.outcome !== 'disabled') {
      this.metrics?.responseSeconds.observe(result.durationMs / 1000);
      this.window.attempt(result.outcome === 'success', result.durationMs);
      this.unpublished.attempts++;
      if (result.outcome === 'success') this.unpublished.successes++;
      this.unpublished.totalMs += result.durationMs;
    }
    if (status !== 'retrying') {
      this.window.finished(status);
      this.unpublished[status]++;
    }
    const log = {
      webhookId: row.id,
      orderNo: row.orderNo,
      merchantKey: row.merchantKey,
      attempt: attempts,
      outcome: result.outcome,
      statusCode: result.statusCode,
      ms: Math.round(result.durationMs),
    };
    if (status === 'failed') this.logger.warn({ ...log, error: result.error }, 'webhook failed for good');
    else if (status === 'retrying')
      this.logger.debug({ ...log, error: result.error, delayMs }, 'webhook will be retried');
    else this.logger.debug(log, 'webhook delivered');
    this.results.push({
      row,
      result,
      update: {
        id: row.id,
        status,
        attempts,
        delayMs,
        statusCode: result.statusCode,
        error: result.error,
        orderNo: row.orderNo,
        merchantKey: row.merchantKey,
        url: row.notifyUrl,
        outcome: result.outcome,
        responseBody: result.responseBody,
        durationMs: result.durationMs,
      },
    });
    if (!this.flushing) {
      this.flushing = this.flushLoop().finally(() => {
        this.flushing = undefined;
        if (this.results.length > 0) this.flushNow().catch(() => undefined);
      });
    }
  }

  private async flushNow(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.results.length > 0) {
      this.flushing = this.flushLoop().finally(() => {
        this.flushing = undefined;
      });
      await this.flushing;
    }
  }

  /**
   * Writes finished attempts in batches: results that arrive while one batch is being written form the
   * next one, so the number of statements follows the store's speed, not the number of webhooks.
   */
  private async flushLoop(): Promise<void> {
    while (this.results.length > 0) {
      const batch = this.results.splice(0, this.config.webhookFlushBatch);
      this.flushingBatch = batch;
      let transitions = await this.writeResults(batch);
      if (transitions === REFUSED) {
        // SQLSTATE class 22: a value of one row (text the store cannot hold) fails the whole statement, and
        // retrying or dropping the batch would resend every merchant's webhooks in it. Write the rows one by
        // one, so that only the bad row is refused; it is written again with its texts made storable.
        transitions = [];
        for (const f of batch) {
          let t = batch.length > 1 ? await this.writeResults([f]) : REFUSED;
          if (t === REFUSED) {
            this.logger.warn(
              { webhookId: f.row.id, merchantKey: f.row.merchantKey },
              'the store refused a value of a webhook result; writing it with its texts made storable',
            );
            t = await this.writeResults([storableFinished(f)]);
          }
          if (t === REFUSED) {
            this.logger.warn(
              { webhookId: f.row.id, merchantKey: f.row.merchantKey },
              'the store refused a webhook result; this webhook will be sent again after its lease',
            );
          } else if (t) transitions.push(...t);
        }
      }
      this.flushingBatch = [];
      // A trial whose row went to a URL disabled by 410 sent no request and says nothing about the
      // merchant: the trial is given back (open, its period over), so the next upkeep takes another one at
      // once instead of the breaker staying half-open until the trial's lease ends.
      const voidTrials = batch.filter((f) => f.row.trial && f.result.outcome === 'disabled');
      if (voidTrials.length > 0) {
        await this.queue
          .releaseTrials(voidTrials.map((f) => f.row.merchantKey))
          .catch((err: unknown) =>
            this.logger.warn({ err }, 'could not give back a trial; it ends after its lease'),
          );
      }
      this.wake();
      if (transitions) await this.onTransitions(transitions);
    }
  }

  /**
   * Writes one batch of results, retrying a failing store: for as long as the dispatcher runs while the
   * store is unavailable (a result given up would have its webhook sent again after its lease although the
   * merchant has answered; this node claims none of these rows meanwhile, see heldIds), a few times while
   * it stops or when the store refuses the statement itself. Undefined when it
   * could not be written (the webhooks are sent again after their lease), REFUSED when the store refused a
   * value (SQLSTATE class 22: writing the same rows again cannot help).
   */
  private async writeResults(
    batch: readonly Finished[],
  ): Promise<MerchantTransition[] | undefined | typeof REFUSED> {
    const merchants = aggregate(batch);
    // One id for every try of this batch: a try that committed although its answer was lost (the
    // connection broke) makes the next ones change nothing (see WebhookQueue.complete).
    const batchId = randomUUID();
    for (let attempt = 1; ; attempt++) {
      try {
        this.sinceVacuum += batch.length;
        return await this.queue.complete(
          batchId,
          batch.map((f) => f.update),
          merchants,
        );
      } catch (err) {
        if (isDataException(err)) {
          this.logger.warn({ err, count: batch.length }, 'the store refused a value of the webhook results');
          return REFUSED;
        }
        if (attempt >= 5 && (this.state !== 'running' || !unavailable(err))) {
          this.logger.error(
            { err, count: batch.length },
            'webhook results could not be written; these webhooks will be sent again after their lease',
          );
          return undefined;
        }
        if (attempt <= 5 || attempt % 20 === 0) {
          this.logger.warn({ err, attempt, count: batch.length }, 'writing webhook results failed; retrying');
        }
        await sleep(Math.min(2000, 100 * 2 ** attempt));
      }
    }
  }

  private async onTransitions(transitions: MerchantTransition[]): Promise<void> {
    const release: string[] = [];
    for (const t of transitions) {
      if (t.isSlow) this.slowKnown.add(t.merchantKey);
      else this.slowKnown.delete(t.merchantKey);
      // The store's count replaces this node's (other nodes' results are in it too).
      if (t.newState === 'closed' && t.consecutiveFailures < this.config.webhookBreakerThreshold) {
        this.localFailures.set(t.merchantKey, t.consecutiveFailures);
      } else this.localFailures.delete(t.merchantKey);
      if (t.newState === 'closed') this.openKnown.delete(t.merchantKey);
      else if (t.newState === 'open') {
        this.openKnown.set(t.merchantKey, Date.now());
        release.push(...this.unbuffer(t.merchantKey));
      }
    }
    this.pump();
    if (release.length > 0) {
      await this.queue
        .release(release)
        .catch((err: unknown) =>
          this.logger.warn({ err }, 'could not release leases; they expire by themselves'),
        );
    }
    const marks: string[] = [];
    const slow: MerchantTransition[] = [];
    for (const t of transitions) {
      if (t.newState === 'open' && t.oldState !== 'open') {
        this.logger.warn(
          { merchantKey: t.merchantKey, failures: t.consecutiveFailures, from: t.oldState },
          'merchant circuit breaker opened',
        );
        // A breaker that opens from closed always alerts; re-opening after a failed trial alerts at most
        // once per cooldown.
        const key = `circuit_breaker:${t.merchantKey}`;
        const allowed =
          t.oldState === 'closed'
            ? await this.queue.takeAlertMarks([key], 0).catch(() => [key])
            : await this.queue.takeAlertMarks([key], this.config.webhookAlertCooldown).catch(() => []);
        if (allowed.length > 0) {
          this.alerter.emit(
            circuitBreakerAlert({
              merchantKey: t.merchantKey,
              notifyUrl: t.notifyUrl,
              failures: t.consecutiveFailures,
              openMs: this.config.webhookBreakerOpen,
            }),
          );
        }
      } else if (t.newState === 'closed' && t.oldState !== 'closed') {
        this.logger.info(
          { merchantKey: t.merchantKey },
          'merchant circuit breaker closed: the trial succeeded',
        );
      }
      if (t.isSlow !== t.wasSlow) {
        this.logger.info(
          { merchantKey: t.merchantKey, avgMs: Math.round(t.avgMs), slow: t.isSlow },
          'merchant speed',
        );
      }
      if (t.isSlow) {
        const last = this.slowChecked.get(t.merchantKey) ?? 0;
        const recheck = Math.min(this.config.webhookAlertCooldown, 60_000);
        if (!t.wasSlow || Date.now() - last >= recheck) {
          this.slowChecked.set(t.merchantKey, Date.now());
          marks.push(`slow_merchant:${t.merchantKey}`);
          slow.push(t);
        }
      }
    }
    if (marks.length === 0) return;
    let allowed: Set<string>;
    try {
      allowed = new Set(await this.queue.takeAlertMarks(marks, this.config.webhookAlertCooldown));
    } catch (err) {
      this.logger.warn({ err }, 'slow-merchant alert de-duplication failed; alert skipped');
      return;
    }
    for (const t of slow) {
      if (!allowed.has(`slow_merchant:${t.merchantKey}`)) continue;
      this.alerter.emit(
        slowMerchantAlert({
          merchantKey: t.merchantKey,
          notifyUrl: t.notifyUrl,
          avgMs: t.avgMs,
          thresholdMs: this.config.webhookSlowThreshold,
        }),
      );
    }
  }

  // ---- alert rules and gauges ---------------------------------------------------------------------

  /** The seed's system rules, checked every WEBHOOK_ALERT_INTERVAL; each alert at most once per cooldown. */
  async checkAlerts(): Promise<void> {
    const c = this.config;
    const candidates: Alert[] = [];
    const depth = await this.queue.depth();
    const queued = depth.pending + depth.retrying + depth.delayed;
    if (queued > c.webhookAlertQueueLength) {
      candidates.push(systemAlert('queue_length', queued, c.webhookAlertQueueLength, c.webhookAlertWindow));
    }
    // On PostgreSQL the window covers every node (shared counters); the embedded store has one node.
    const w =
      this.store.kind === 'postgres'
        ? await this.publishWindow().then(() => this.queue.sharedWindow(c.webhookAlertWindow))
        : this.window.snapshot();
    if (w.attempts >= c.webhookAlertMinSamples) {
      const rate = w.successes / w.attempts;
      if (rate < c.webhookAlertSuccessRate / 100) {
        candidates.push(
          systemAlert('success_rate', rate, c.webhookAlertSuccessRate / 100, c.webhookAlertWindow),
        );
      }
      if (w.avgMs > c.webhookAlertResponseTime) {
        candidates.push(
          systemAlert('response_time', w.avgMs, c.webhookAlertResponseTime, c.webhookAlertWindow),
        );
      }
    }
    const finished = w.delivered + w.failed;
    if (finished >= c.webhookAlertMinSamples && w.failed / finished > c.webhookAlertErrorRate / 100) {
      candidates.push(
        systemAlert('error_rate', w.failed / finished, c.webhookAlertErrorRate / 100, c.webhookAlertWindow),
      );
    }
    if (candidates.length === 0) return;
    const allowed = new Set(
      await this.queue.takeAlertMarks(
        candidates.map((a) => `system:${a.type}`),
        c.webhookAlertCooldown,
      ),
    );
    for (const a of candidates) if (allowed.has(`system:${a.type}`)) this.alerter.emit(a);
  }

  /** How often a node adds its counts to the shared window: every second, or every check if more often. */
  private publishEvery(): number {
    return Math.min(this.config.webhookAlertInterval, 1000);
  }

  /** Adds this node's window counts to the shared table (PostgreSQL); kept for the next try on failure. */
  private async publishWindow(): Promise<void> {
    const d = this.unpublished;
    this.unpublished = { attempts: 0, successes: 0, totalMs: 0, delivered: 0, failed: 0 };
    try {
      await this.queue.publishWindow(Math.max(1000, this.publishEvery()), this.config.webhookAlertWindow, d);
    } catch (err) {
      const u = this.unpublished;
      this.unpublished = {
        attempts: u.attempts + d.attempts,
        successes: u.successes + d.successes,
        totalMs: u.totalMs + d.totalMs,
        delivered: u.delivered + d.delivered,
        failed: u.failed + d.failed,
      };
      throw err;
    }
  }

  private cachedDepth(): Promise<Record<string, number>> {
    const now = Date.now();
    if (!this.depthCache || now - this.depthCache.at > 2000) {
      this.depthCache = { at: now, value: this.queue.depth() };
    }
    return this.depthCache.value;
  }

  private cachedMerchantCounts(): Promise<{ open: number; halfOpen: number; slow: number }> {
    const now = Date.now();
    if (!this.merchantCache || now - this.merchantCache.at > 2000) {
      this.merchantCache = { at: now, value: this.queue.merchantCounts() };
    }
    return this.merchantCache.value;
  }
}

/**
 * The delay before a retry: the schedule's `delay` made longer by a random share of it below `jitter`
 * (WEBHOOK_RETRY_JITTER), so webhooks that failed together (a merchant that was down) come due spread over
 * that share instead of all at once when it recovers. Never shorter than the schedule (merchants were
 * promised "not before"), exactly the schedule with a jitter of 0, and a longer Retry-After wins.
 * `random` returns a number in [0, 1), as Math.random does.
 */
export function retryDelay(
  delay: number,
  jitter: number,
  retryAfterMs: number | null,
  random: () => number = Math.random,
): number {
  // Whole milliseconds, rounded down: the extra stays below delay × jitter and the delay never shrinks.
  const stretched = jitter > 0 ? delay + Math.floor(delay * jitter * random()) : delay;
  return Math.max(stretched, retryAfterMs ?? 0);
}

/**
 * Whether a store error says the store is unavailable for now (connection lost, shutting down, out of
 * resources, a serialization failure or deadlock), which waiting outlives, rather than a statement the store
 * will refuse again however long one waits.
 */
function unavailable(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  if (typeof code !== 'string' || code.length !== 5) return true;
  return ['08', '40', '53', '57', '58'].includes(code.slice(0, 2));
}

/** Per-merchant aggregates of a batch, in finishing order (for the failure count and breaker). */
function aggregate(batch: readonly Finished[]): MerchantUpdate[] {
  const by = new Map<string, MerchantUpdate>();
  for (const { row, result } of batch) {
    if (result.outcome === 'disabled') continue;
    let m = by.get(row.merchantKey);
    if (!m) {
      m = {
        merchantKey: row.merchantKey,
        times: [],
        successes: 0,
        failures: 0,
        hadSuccess: false,
        trailingFailures: 0,
        goneUrl: null,
        lastGone: false,
        lastCode: null,
        lastError: null,
      };
      by.set(row.merchantKey, m);
    }
    m.times.push(result.durationMs);
    if (result.outcome === 'success') {
      m.successes++;
      m.hadSuccess = true;
      m.trailingFailures = 0;
    } else {
      m.failures++;
      m.trailingFailures++;
    }
    if (result.outcome === 'gone') m.goneUrl = row.notifyUrl;
    m.lastGone = result.outcome === 'gone';
    m.lastCode = result.statusCode;
    m.lastError = result.error;
  }
  return [...by.values()];
}
