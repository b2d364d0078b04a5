import { type IntervalHistogram, monitorEventLoopDelay } from 'node:perf_hooks';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/** Sampling interval of the event-loop delay histograms. */
export const LOOP_RESOLUTION_MS = 10;

/**
 * The delay in ms of a value from a `monitorEventLoopDelay` histogram. Each sample is the time between two
 * runs of its timer, so it includes the sampling interval itself (an idle process shows about 10 ms at a
 * resolution of 10 ms); the interval is taken off, as APM agents do.
 */
export function loopDelayMs(nanos: number): number {
  return Math.max(0, nanos / 1e6 - LOOP_RESOLUTION_MS);
}

/**
 * Most apps named in the per-app counters (`herald_notifications_published_total`,
 * `herald_deliveries_total`); the others are counted under `app="_other"`. Open mode takes any app id
 * from any caller, and a counter's series live as long as the process: without a bound, a caller
 * posting to new app ids grows memory and /metrics for good.
 */
export const MAX_APP_SERIES = 1000;

/** The `app` label of per-app counters: the app id for the first MAX_APP_SERIES apps, then `_other`. */
export class AppLabels {
  private readonly named = new Set<string>();

  constructor(private readonly max = MAX_APP_SERIES) {}

  of(app: string): string {
    if (this.named.has(app)) return app;
    if (this.named.size >= this.max) return '_other';
    this.named.add(app);
    return app;
  }
}

/** A per-app counter whose `app` label goes through AppLabels. */
export interface AppCounter {
  inc(labels: { app: string }, value?: number): void;
  /** The prom-client counter (to read its values). */
  readonly counter: Counter<'app'>;
}

/**
 * A per-app counter counted in a Map and added to the prom-client counter when it is read (a scrape,
 * the console's stats): prom-client hashes and checks the labels of every `inc`, a few percent of a
 * node's CPU at 40,000 notifications/s, for counts nobody reads in between.
 */
function boundedByApp(name: string, help: string, registers: Registry[], labels: AppLabels): AppCounter {
  const pending = new Map<string, number>();
  const counter = new Counter({
    name,
    help,
    labelNames: ['app'],
    registers,
    collect() {
      for (const [app, value] of pending) this.inc({ app }, value);
      pending.clear();
    },
  });
  return {
    counter,
    inc(l, value = 1) {
      if (!(value >= 0) || !Number.isFinite(value)) throw new TypeError(`not a count: ${value}`);
      const app = labels.of(l.app);
      pending.set(app, (pending.get(app) ?? 0) + value);
    },
  };
}

export interface GatewayStats {
  stats(): { appId: string; connections: number; subscriptions: number; topics: number }[];
}

/**
 * Prometheus metrics of one node. Each Herald instance has its own registry, so that several
 * instances in one process (tests) do not share counters.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly eventLoop: IntervalHistogram;
  readonly connections: Gauge<'app'>;
  readonly subscriptions: Gauge<'app'>;
  readonly published: AppCounter;
  readonly deliveries: AppCounter;
  readonly notifyToEmit: Histogram;
  readonly clientErrors: Counter<'code'>;
  readonly httpErrors: Counter<'code'>;
  readonly countUpdates: Counter;
  readonly slowClients: Counter;
  readonly clientEventsRefused: Counter;
  readonly floodingClients: Counter;
  readonly connectGc: Counter;
  readonly connectionsRefused: Counter<'reason'>;

  constructor(gateway: GatewayStats) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.eventLoop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    this.eventLoop.enable();
    const loop = this.eventLoop;

    this.connections = new Gauge({
      name: 'herald_connections',
      help: 'Connected sockets on this node, per app.',
      labelNames: ['app'],
      registers,
      collect() {
        this.reset();
        for (const s of gateway.stats()) this.set({ app: s.appId }, s.connections);
      },
    });
    this.subscriptions = new Gauge({
      name: 'herald_subscriptions',
      help: 'Topic subscriptions held by sockets on this node, per app.',
      labelNames: ['app'],
      registers,
      collect() {
        this.reset();
        for (const s of gateway.stats()) this.set({ app: s.appId }, s.subscriptions);
      },
    });
    const appLabels = new AppLabels();
    this.published = boundedByApp(
      'herald_notifications_published_total',
      `Notifications accepted by the HTTP API of this node (past ${MAX_APP_SERIES} apps, under app="_other").`,
      registers,
      appLabels,
    );
    this.deliveries = boundedByApp(
      'herald_deliveries_total',
      `Notifications written to sockets on this node (past ${MAX_APP_SERIES} apps, under app="_other").`,
      registers,
      appLabels,
    );
    this.notifyToEmit = new Histogram({
      name: 'herald_notify_to_emit_seconds',
      help: 'Time from accepting a notification to writing it to the last local socket.',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.clientErrors = new Counter({
      name: 'herald_client_errors_total',
      help: 'Errors returned to socket clients, by code.',
      labelNames: ['code'],
      registers,
    });
    this.httpErrors = new Counter({
      name: 'herald_http_errors_total',
      help: 'Error responses of the HTTP API, by code.',
      labelNames: ['code'],
      registers,
    });
    this.countUpdates = new Counter({
      name: 'herald_count_updates_total',
      help: 'Count updates written to watchers.',
      registers,
    });
    this.connectionsRefused = new Counter({
      name: 'herald_connections_refused_total',
      help: 'Connections refused as too_many_connections: node (MAX_CONNECTIONS) or client (MAX_CONNECTIONS_PER_CLIENT).',
      labelNames: ['reason'],
      registers,
    });
    this.slowClients = new Counter({
      name: 'herald_slow_clients_dropped_total',
      help: 'Connections closed because their send buffer exceeded MAX_SOCKET_BUFFER.',
      registers,
    });
    this.clientEventsRefused = new Counter({
      name: 'herald_client_events_refused_total',
      help: 'Client events not handled because their connection was over CLIENT_EVENT_RATE (answered rate_limited).',
      registers,
    });
    this.floodingClients = new Counter({
      name: 'herald_flooding_clients_closed_total',
      help: 'Connections closed because they kept sending events over CLIENT_EVENT_RATE after CLIENT_EVENT_BURST refusals.',
      registers,
    });
    this.connectGc = new Counter({
      name: 'herald_connect_gc_total',
      help: 'Young-generation collections this node asked for while accepting connections (CONNECT_GC_EVERY).',
      registers,
    });
    new Gauge({
      name: 'herald_event_loop_delay_max_seconds',
      help: 'Largest event-loop delay since the previous scrape (read before the p99 gauge resets the histogram).',
      registers,
      collect() {
        this.set(loopDelayMs(loop.max) / 1000);
      },
    });
    new Gauge({
      name: 'herald_event_loop_delay_p99_seconds',
      help: 'p99 event-loop delay since the previous scrape.',
      registers,
      collect() {
        this.set(loopDelayMs(loop.percentile(99)) / 1000);
        loop.reset();
      },
    });
  }

  close(): void {
    this.eventLoop.disable();
    this.registry.clear();
  }
}
