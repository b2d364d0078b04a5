import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { AccessControl } from './auth/index.js';
import { MemoryBus, MemoryPresence } from './bus/memory.js';
import { RedisCluster } from './bus/redis.js';
import type { Bus, Presence } from './bus/types.js';
import type { Config } from './config/index.js';
import { registerConsole } from './console/index.js';
import { HeraldError } from './errors.js';
import { Gateway } from './gateway/index.js';
import { registerRecovery } from './gateway/recovery.js';
import { exposedGc } from './gc.js';
import { type History, HistoryPolicy, MemoryHistory, NoHistory } from './history/index.js';
import { MemoryReceipts, type Receipts, RedisReceipts } from './history/receipts.js';
import { RedisHistory } from './history/redis.js';
import { createHttp } from './http/index.js';
import { notifyRoutes } from './http/notify.js';
import { opsRoutes } from './http/ops.js';
import { setMaxJsonDepth } from './input.js';
import { OPEN_FILES_RESERVED, OPEN_FILES_WARN_BELOW, openFilesLimit } from './limits.js';
import { createLogger, type Logger } from './logger.js';
import { Metrics } from './metrics/index.js';
import { paymentRoutes } from './payments/http.js';
import { Payments } from './payments/index.js';
import { CountNotifier } from './router/counts.js';
import { Router } from './router/index.js';
import { NotifyService } from './router/notify.js';
import { OfflineForwarder } from './router/offline.js';
import type { Notification } from './router/types.js';
import { EmbeddedStore } from './store/embedded.js';
import { openStore, type Store } from './store/index.js';
import { WebhookEngine, webhookRoutes } from './webhooks/index.js';

export const VERSION: string = (() => {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version: string;
    };
    return pkg.version;
  } catch {
    return JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version as string;
  }
})();

export interface HeraldOptions {
  config: Config;
  logger?: Logger;
  /**
   * Run a full garbage collection once start-up is done, before the node serves (main.ts sets it: one
   * node per process). Loading modules, compiling schemas and opening the store leave a heap that V8
   * otherwise collects with a 20-70 ms pause in the first second of serving.
   */
  compactHeapAfterStart?: boolean;
}

/** A running Herald node. */
export interface Herald {
  readonly config: Config;
  readonly logger: Logger;
  readonly store: Store;
  readonly router: Router;
  readonly gateway: Gateway;
  readonly notify: NotifyService;
  readonly metrics: Metrics;
  readonly access: AccessControl;
  /** Merchant webhooks: `webhooks.enqueue(...)` for in-process producers. */
  readonly webhooks: WebhookEngine;
  /** Payment tracking: order state machine, machine presence and commands. */
  readonly payments: Payments;
  /** The bound address after start(). */
  address(): AddressInfo;
  /** Base URL, e.g. http://127.0.0.1:3000 */
  url(): string;
  /** Graceful shutdown: stop accepting, hand clients over, drain, close. Idempotent. */
  stop(): Promise<void>;
  /** While stop() runs: the step it waits for and what is still open. Undefined otherwise. */
  shutdownPending(): ShutdownPending | undefined;
}

/**
 * The steps of a graceful stop, in order: `clients` (tell every socket to reconnect elsewhere and close
 * it), `http` (in-flight HTTP requests), `socket.io`, `payments` (queued payment events), `webhooks`
 * (in-flight webhook requests, up to WEBHOOK_TIMEOUT), `history`, `bus` (Redis), `store`.
 */
export type StopStep =
  | 'clients'
  | 'http'
  | 'socket.io'
  | 'payments'
  | 'webhooks'
  | 'history'
  | 'bus'
  | 'store';

/** What a graceful stop still waits for (logged when SHUTDOWN_TIMEOUT expires first). */
export interface ShutdownPending {
  /** The step running, and for how long it has run. */
  step: StopStep;
  stepMs: number;
  /** The steps after it, not started. */
  next: StopStep[];
  /** Client sockets still open on this node. */
  connections: number;
  /** Webhook requests to merchants still in flight. */
  webhooksInFlight: number;
}

/**
 * Wires every part from the config and starts listening. This is the only place that knows which
 * implementation of each back-end (bus, store) is in use.
 */
/**
 * One full, blocking garbage collection. `gc` is reachable only with --expose-gc: the flag is turned on
 * for a fresh context, which then exposes the function (the `expose-gc` package does the same).
 */
function collectGarbage(logger: Logger): void {
  const gc = exposedGc();
  if (!gc) {
    logger.debug('could not compact the heap after start-up: V8 does not expose gc');
    return;
  }
  const started = performance.now();
  gc();
  logger.debug({ ms: Math.round(performance.now() - started) }, 'heap compacted after start-up');
}

export async function startHerald(options: HeraldOptions): Promise<Herald> {
  const { config } = options;
  const logger = options.logger ?? createLogger(config.logLevel);
  const startedAt = Date.now();
  // Every check of client JSON (notify, payments, webhooks, admin bodies) reads it from there.
  setMaxJsonDepth(config.maxJsonDepth);
  const access = new AccessControl(config.apps);
  if (access.mode === 'open') {
    logger.warn(
      'open mode: no apps are configured, so any appId is accepted without credentials. ' +
        'Declare apps (HERALD_CONFIG or HERALD_APPS) to require API keys and client tokens.',
    );
  } else {
    logger.info({ apps: access.appIds() }, 'apps mode');
  }

  const store = await openStore(config);
  logger.info({ store: store.kind }, 'store ready');

  let draining = false;
  let stopping: Promise<void> | undefined;

  // Parts that refer to each other are created in dependency order; the router is the hub. The
  // presence and bus back-ends are chosen here, once: memory (one node) or Redis (cluster).
  let counts: CountNotifier | undefined;
  let presence: Presence | undefined;
  let cluster: RedisCluster | undefined;
  // What this node says about itself with each cluster heartbeat: the console's sampler, set up later.
  let nodeInfo: (() => Record<string, unknown>) | undefined;
  /** Set once the gateway exists: asks this node's clients to catch up on their streams. */
  let resyncClients: ((reason: string) => void) | undefined;
  let resyncs = 0;
  const router = new Router({
    onTopicChange: (change) => presence?.local(change),
    onAppAdded: (appId) => cluster?.appAdded(appId),
    onAppRemoved: (appId) => cluster?.appRemoved(appId),
  });
  const metrics = new Metrics(router);
  if (store instanceof EmbeddedStore) observeEmbeddedStore(store, metrics.registry);
  const deliverLocal = (n: Notification): number => {
    const written = router.deliver(n);
    if (written > 0) metrics.deliveries.inc({ app: n.appId }, written);
    metrics.notifyToEmit.observe(Math.max(0, Date.now() - n.ts) / 1000);
    return written;
  };
  const countChanged = (appId: string, topic: string) => counts?.changed(appId, topic);
  let bus: Bus;
  if (config.redisUrl) {
    cluster = new RedisCluster({
      url: config.redisUrl,
      prefix: config.redisPrefix,
      presenceTtlMs: config.presenceTtl,
      stallMs: config.redisStallTimeout,
      publishLingerMs: config.clusterPublishLinger,
      deliver: deliverLocal,
      onCountChange: countChanged,
      localCount: (appId, topic) => router.localCount(appId, topic),
      hasUser: (appId, clientId) => router.hasUser(appId, clientId),
      hasApp: (appId) => router.appIds().includes(appId),
      localTopics: () => router.allTopics(),
      nodeInfo: () => nodeInfo?.() ?? {},
      onResubscribed: () => {
        resyncs++;
        resyncClients?.('cluster_resubscribed');
      },
      logger: logger.child({ part: 'cluster' }),
    });
    await cluster.start();
    const stats = cluster.stats;
    new Counter({
      name: 'herald_cluster_notifications_total',
      help: 'Notifications sent to other nodes (route app: every node of the app; route user: only the nodes holding the users) and received from them.',
      labelNames: ['direction', 'route'],
      registers: [metrics.registry],
      collect() {
        this.reset();
        this.inc({ direction: 'sent', route: 'app' }, stats.sentApp);
        this.inc({ direction: 'sent', route: 'user' }, stats.sentRouted);
        this.inc({ direction: 'received', route: 'any' }, stats.received);
      },
    });
    new Counter({
      name: 'herald_cluster_local_only_total',
      help: "Notifications delivered to this node's sockets only because Redis was away: clients on other nodes miss them (they have no stream offset, so recover cannot report the gap).",
      registers: [metrics.registry],
      collect() {
        this.reset();
        this.inc(stats.localOnly);
      },
    });
    new Counter({
      name: 'herald_cluster_resyncs_total',
      help: "Times this node's subscription to the other nodes came back after an interruption and it asked its clients to catch up on their streams (`resync`).",
      registers: [metrics.registry],
      collect() {
        this.reset();
        this.inc(resyncs);
      },
    });
    new Counter({
      name: 'herald_cluster_routed_nodes_total',
      help: 'Nodes that user-routed notifications were sent to (divide by the sent/user count for nodes per notification).',
      registers: [metrics.registry],
      collect() {
        this.reset();
        this.inc(stats.routedNodes);
      },
    });
    const publishing = cluster;
    new Counter({
      name: 'herald_cluster_publish_calls_total',
      help: 'Redis calls that appended and sent this node\'s notifications (one carries every notification published in one event-loop turn); compare with herald_cluster_notifications_total{direction="sent"}.',
      registers: [metrics.registry],
      collect() {
        this.reset();
        this.inc(publishing.publishCalls);
      },
    });
    bus = cluster.bus;
    presence = cluster.presence;
    logger.info({ node: cluster.nodeId, prefix: config.redisPrefix }, 'cluster mode on redis');
  } else {
    bus = new MemoryBus(deliverLocal);
    presence = new MemoryPresence(
      (appId, topic) => router.localCount(appId, topic),
      countChanged,
      (appId, clientId) => router.hasUser(appId, clientId),
    );
  }
  const presenceNow = presence;
  counts = new CountNotifier(
    { get: (appId, topic) => presenceNow.get(appId, topic) },
    (appId, topic) => router.watchersOf(appId, topic),
    config.countInterval,
    (err) => logger.error({ err }, 'count update failed'),
    (n) => metrics.countUpdates.inc(n),
  );

  // History (recovery after reconnects) and delivery receipts: in memory on one node, in Redis in a cluster.
  const historyPolicy = new HistoryPolicy(config.historyRules, config.historySize, config.historyTtl);
  const history: History = !historyPolicy.enabled()
    ? new NoHistory()
    : cluster
      ? new RedisHistory(cluster.commands, config.redisPrefix, historyPolicy)
      : new MemoryHistory(historyPolicy, {
          maxEntries: config.historyMaxEntries,
          maxBytes: config.historyMaxBytes,
          maxStreams: config.historyMaxStreams,
          follows: (appId, stream) => router.follows(appId, stream),
        });
  let lastReceiptWarning = 0;
  const receipts: Receipts = cluster
    ? new RedisReceipts(cluster.commands, config.redisPrefix, config.receiptTtl, (err) => {
        // Redis away: the notification is delivered, its receipts cannot be recorded (one line per 5 s).
        const now = Date.now();
        if (now - lastReceiptWarning < 5000) return;
        lastReceiptWarning = now;
        logger.warn(
          { err: (err as Error).message },
          'receipts unavailable: notifications with ack: true are delivered without receipts',
        );
      })
    : new MemoryReceipts(config.receiptTtl, config.receiptMax);
  if (receipts instanceof RedisReceipts) {
    const r = receipts;
    new Counter({
      name: 'herald_receipts_unrecorded_total',
      help: 'Cluster: notifications sent with ack: true whose receipts could not be recorded because Redis was away (delivered; GET /notify/:id does not know them).',
      registers: [metrics.registry],
      collect() {
        this.reset();
        this.inc(r.unrecorded);
      },
    });
  }
  if (history instanceof MemoryHistory) {
    const h = history;
    new Gauge({
      name: 'herald_history_held',
      help: 'Single node: history entries and streams held in memory (bounded by HISTORY_MAX_ENTRIES, HISTORY_MAX_STREAMS), and the bytes of the entries (`bytes`) and of the buffers holding them outside the JavaScript heap (`buffer_bytes`).',
      labelNames: ['kind'],
      registers: [metrics.registry],
      collect() {
        this.set({ kind: 'entries' }, h.size.entries);
        this.set({ kind: 'streams' }, h.size.streams);
        const bytes = h.bytes;
        this.set({ kind: 'bytes' }, bytes.live);
        this.set({ kind: 'buffer_bytes' }, bytes.held);
      },
    });
    new Counter({
      name: 'herald_history_evicted_total',
      help: 'Single node: history entries and streams dropped because a global limit was reached (not by size or TTL).',
      labelNames: ['kind'],
      registers: [metrics.registry],
      collect() {
        this.reset();
        this.inc({ kind: 'entries' }, h.evicted.entries);
        this.inc({ kind: 'streams' }, h.evicted.streams);
      },
    });
  }
  if (receipts instanceof MemoryReceipts) {
    const r = receipts;
    new Gauge({
      name: 'herald_receipts_held',
      help: 'Single node: notifications whose delivery receipts are held in memory (bounded by RECEIPT_MAX).',
      registers: [metrics.registry],
      collect() {
        this.set(r.size);
      },
    });
    new Counter({
      name: 'herald_receipts_evicted_total',
      help: 'Single node: notifications whose receipts were forgotten before RECEIPT_TTL because RECEIPT_MAX was reached.',
      registers: [metrics.registry],
      collect() {
        this.reset();
        this.inc(r.evicted);
      },
    });
  }

  const notify = new NotifyService({
    bus,
    metrics,
    maxPayloadBytes: config.maxPayloadBytes,
    history,
    receipts,
    logger,
    afterPublish: (n) => afterPublish?.(n),
  });
  let afterPublish: ((n: Notification) => void) | undefined;

  const http = await createHttp({ config, logger, metrics, version: VERSION });
  const clusterNow = cluster;
  const gateway = new Gateway(http.server, {
    config,
    access,
    router,
    counts,
    metrics,
    logger,
    ...(clusterNow ? { admit: (appId, clientId) => clusterNow.admit(appId, clientId) } : {}),
  });
  resyncClients = (reason) => gateway.hintResync(reason);
  registerRecovery({
    gateway,
    history,
    receipts,
    maxTopicsPerCall: config.maxTopicsPerCall,
    maxTopicsPerConnection: config.maxTopicsPerConnection,
    subscribe: (conn, topics) => gateway.subscribe(conn, topics),
  });

  const readiness = {
    draining: () => draining,
    async checks() {
      const out: Record<string, { ok: boolean; critical: boolean; error?: string }> = {};
      const critical = store.kind === 'embedded';
      try {
        await store.ping(2000);
        out.store = { ok: true, critical };
      } catch (err) {
        out.store = { ok: false, critical, error: (err as Error).message };
      }
      out.bus = bus.healthy()
        ? { ok: true, critical: false }
        : { ok: false, critical: false, error: `${bus.kind} unreachable: serving local sockets only` };
      return out;
    },
  };
  opsRoutes(http, { metrics, readiness, startedAt, metricsToken: config.metricsToken });
  notifyRoutes(http, {
    config,
    access,
    notify,
    receipts,
    assertAccepting: () => {
      if (draining) throw new HeraldError('shutting_down');
    },
  });

  // ---- merchant webhooks (src/webhooks): engine, POST /merchant-notify and /admin/merchant-notify/* ----
  const webhooks = new WebhookEngine({ config, store, logger, registry: metrics.registry, version: VERSION });
  await webhookRoutes(http, {
    config,
    accessMode: access.mode,
    appOfKey: (authorization) => access.appOfKey(authorization),
    engine: webhooks,
    logger,
    assertAccepting: () => {
      if (draining) throw new HeraldError('shutting_down');
    },
    onError: (code) => metrics.httpErrors.inc({ code }),
  });
  // ---- end merchant webhooks ----

  let stopOffline: (() => void) | undefined;
  if (config.offlineWebhookUrl) {
    const forwards = new Counter({
      name: 'herald_offline_forwards_total',
      help: 'Users of notifications forwarded to OFFLINE_WEBHOOK_URL (forwarded), whose forward will not be stored (failed: refused, or the webhook store stayed down for 10 minutes of retries), or not looked at because presence stayed unreadable (unknown).',
      labelNames: ['result'],
      registers: [metrics.registry],
    });
    const forwarder = new OfflineForwarder({
      url: config.offlineWebhookUrl,
      presence: presenceNow,
      sink: webhooks,
      logger,
      onResult: (result, users) => forwards.inc({ result }, users),
    });
    new Gauge({
      name: 'herald_offline_forwards_pending',
      help: 'Offline forwards (and notifications whose users presence could not be read) waiting to be tried again.',
      registers: [metrics.registry],
      collect() {
        this.set(forwarder.pending);
      },
    });
    afterPublish = (n) => forwarder.forward(n);
    stopOffline = () => forwarder.stop();
  }

  // ---- payment tracking (src/payments): events, order state machine, presence, commands ----
  const payments = new Payments({
    config,
    store,
    router,
    gateway,
    notify,
    access,
    logger,
    metrics,
    notifier: webhooks,
    remote: cluster,
  });
  paymentRoutes(http, {
    config,
    access,
    payments,
    assertAccepting: () => {
      if (draining) throw new HeraldError('shutting_down');
    },
  });
  // ---- end payment tracking ----

  // ---- web console (src/console): /console, /admin/api/*, the /admin/console namespace ----
  const consoleParts = await registerConsole({
    http,
    io: gateway.io,
    config,
    router,
    metrics,
    notify,
    access,
    store,
    bus,
    ...(cluster ? { cluster } : {}),
    readiness,
    logger,
    version: VERSION,
    startedAt,
    assertAccepting: () => {
      if (draining) throw new HeraldError('shutting_down');
    },
  });
  nodeInfo = consoleParts.nodeInfo;
  // ---- end web console ----

  try {
    await http.listen({ port: config.port, host: config.host });
  } catch (err) {
    await payments.stop().catch(() => undefined);
    await webhooks.stop().catch(() => undefined);
    counts.close();
    await bus.close().catch(() => undefined);
    await store.close().catch(() => undefined);
    metrics.close();
    throw err;
  }
  const address = http.server.address() as AddressInfo;
  logger.info(
    {
      port: address.port,
      host: config.host,
      version: VERSION,
      startupMs: Date.now() - startedAt,
      maxConnections: Number.isFinite(gateway.maxConnections) ? gateway.maxConnections : null,
    },
    'herald listening',
  );
  const files = openFilesLimit();
  if (files && files.soft < OPEN_FILES_WARN_BELOW) {
    logger.warn(
      { openFilesSoft: files.soft, openFilesHard: files.hard },
      `the open-files limit (${files.soft}) lets this node hold about ${Math.max(0, files.soft - OPEN_FILES_RESERVED)} client connections${config.maxConnections > 0 ? '' : ' (MAX_CONNECTIONS unset: new ones past that are refused as too_many_connections)'}; raise it (ulimit -n, LimitNOFILE= in systemd, --ulimit nofile= in Docker) for more`,
    );
  }
  if (options.compactHeapAfterStart) collectGarbage(logger);
  // The event-loop delay gauges describe serving: start-up (opening the store, migrations, compiling)
  // blocks the loop by design before anything is accepted, and would show as the first scrape's p99.
  metrics.eventLoop.reset();
  webhooks.start();
  await payments.start();

  // The graceful stop, in order. Each step waits for what the one before let go of: the clients are
  // handed over before HTTP closes, payment events reach the webhook engine before it stops, and the
  // engine's in-flight webhooks finish (or give their lease back) before the store closes.
  const stopSteps: [StopStep, () => Promise<unknown>][] = [
    ['clients', () => gateway.drain()],
    [
      'http',
      async () => {
        counts?.close();
        await http.close().catch((err: unknown) => logger.warn({ err }, 'http close'));
      },
    ],
    ['socket.io', () => gateway.close().catch(() => undefined)],
    ['payments', () => payments.stop().catch((err: unknown) => logger.warn({ err }, 'payments stop'))],
    [
      'webhooks',
      () => {
        // Offline forwards still waiting for the webhook store are given up (counted) first.
        stopOffline?.();
        return webhooks.stop().catch((err: unknown) => logger.warn({ err }, 'webhooks stop'));
      },
    ],
    [
      'history',
      async () => {
        await history.close().catch(() => undefined);
        if (receipts instanceof MemoryReceipts) receipts.close();
      },
    ],
    ['bus', () => bus.close().catch((err: unknown) => logger.warn({ err }, 'bus close'))],
    ['store', () => store.close().catch((err: unknown) => logger.warn({ err }, 'store close'))],
  ];
  let stepAt = -1;
  let stepSince = 0;
  const stop = (): Promise<void> => {
    if (stopping) return stopping;
    stopping = (async () => {
      draining = true;
      logger.info('shutting down: draining clients');
      for (const [i, [, run]] of stopSteps.entries()) {
        stepAt = i;
        stepSince = Date.now();
        await run();
      }
      stepAt = stopSteps.length;
      metrics.close();
      logger.info('shut down');
    })();
    return stopping;
  };
  const shutdownPending = (): ShutdownPending | undefined => {
    const step = stopSteps[stepAt];
    if (!stopping || !step) return undefined;
    return {
      step: step[0],
      stepMs: Date.now() - stepSince,
      next: stopSteps.slice(stepAt + 1).map(([name]) => name),
      connections: router.connectionCount(),
      webhooksInFlight: webhooks.inFlightCount,
    };
  };

  return {
    config,
    logger,
    store,
    router,
    gateway,
    notify,
    metrics,
    access,
    webhooks,
    payments,
    address: () => address,
    url: () =>
      `http://${address.address.includes(':') ? `[${address.address}]` : address.address}:${address.port}`,
    stop,
    shutdownPending,
  };
}

/**
 * The embedded store runs every statement in turn on one connection: how long turns waited for it and
 * how long each kind held it (a transaction for its whole span) tell an operator whether the store is
 * what slows the payment intake or the webhook engine, and which part holds it.
 */
function observeEmbeddedStore(store: EmbeddedStore, registry: Registry): void {
  const buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
  const wait = new Histogram({
    name: 'herald_embedded_store_wait_seconds',
    help: 'Time statements and transactions queued for the embedded store (one connection) behind others.',
    buckets,
    registers: [registry],
  });
  const hold = new Histogram({
    name: 'herald_embedded_store_hold_seconds',
    help: 'Time the embedded store was held, by statement (prepared name, or verb and first table) or transaction (named after its first statement).',
    labelNames: ['op'],
    buckets,
    registers: [registry],
  });
  store.observe((op, waitMs, holdMs) => {
    wait.observe(waitMs / 1000);
    hold.observe({ op }, holdMs / 1000);
  });
  const checkpoints = store.checkpointStats;
  new Counter({
    name: 'herald_embedded_store_checkpoints_total',
    help: 'Checkpoints the embedded store ran (by WAL size or interval; their hold is op="checkpoint" above), and those that failed.',
    labelNames: ['result'],
    registers: [registry],
    collect() {
      this.reset();
      this.inc({ result: 'done' }, checkpoints.checkpoints);
      this.inc({ result: 'failed' }, checkpoints.failures);
    },
  });
  new Gauge({
    name: 'herald_embedded_store_wal_bytes',
    help: 'WAL the embedded store wrote since its last checkpoint (as of the last check, every 10 s): what a crash would replay.',
    registers: [registry],
    collect() {
      this.set(checkpoints.walBytes);
    },
  });
}
