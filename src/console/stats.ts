import { hostname } from 'node:os';
import { type IntervalHistogram, monitorEventLoopDelay } from 'node:perf_hooks';
import type { Counter } from 'prom-client';
import type { Readiness } from '../http/ops.js';
import { LOOP_RESOLUTION_MS, loopDelayMs, type Metrics } from '../metrics/index.js';
import type { Router } from '../router/index.js';
import type { AppStats, HealthCheck, NodeInfo, StatsPoint, StatsSnapshot, TopicRow } from './types.js';

/** Points kept for the charts: five minutes at one per second. */
export const HISTORY_POINTS = 300;

export interface SamplerDeps {
  router: Router;
  metrics: Metrics;
  readiness: Readiness;
  version: string;
  startedAt: number;
  store: 'embedded' | 'postgres';
  bus: 'memory' | 'redis';
  accessMode: 'open' | 'apps';
  adminToken: boolean;
  /** Console sockets connected now. */
  consoles: () => number;
}

async function perApp(counter: Counter<'app'>): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const v of (await counter.get()).values) {
    const app = String(v.labels.app ?? '');
    out.set(app, (out.get(app) ?? 0) + v.value);
  }
  return out;
}

/** An event-loop delay histogram value in ms, less the sampling interval (see loopDelayMs). */
function ms(ns: number): number {
  return Number.isFinite(ns) ? Math.round(loopDelayMs(ns) * 100) / 100 : 0;
}

/**
 * Samples this node once per call: connections and subscriptions per app from the router, rates
 * from the Prometheus counters (difference between two samples), the event-loop delay from its own
 * histogram (so that the console never resets the one /metrics reads) and, when asked, the health
 * checks of /readyz. Keeps the last {@link HISTORY_POINTS} points for the charts.
 */
export class StatsSampler {
  private readonly loop: IntervalHistogram;
  private prev: { ts: number; published: Map<string, number>; deliveries: Map<string, number> } | undefined;
  private readonly points: StatsPoint[] = [];
  private health: Record<string, HealthCheck> = {};
  private status = 'ready';
  private checking = false;
  last: StatsSnapshot | undefined;

  constructor(private readonly deps: SamplerDeps) {
    this.loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    this.loop.enable();
  }

  history(): StatsPoint[] {
    return [...this.points];
  }

  /** Runs the /readyz checks in the background (at most one at a time); the next sample shows them. */
  refreshHealth(): void {
    if (this.checking) return;
    this.checking = true;
    this.deps.readiness
      .checks()
      .then((checks) => {
        this.health = checks;
        const list = Object.values(checks);
        this.status = this.deps.readiness.draining()
          ? 'draining'
          : list.some((c) => !c.ok && c.critical)
            ? 'not_ready'
            : list.every((c) => c.ok)
              ? 'ready'
              : 'degraded';
      })
      .catch((err: unknown) => {
        this.health = { store: { ok: false, critical: true, error: (err as Error).message } };
        this.status = 'not_ready';
      })
      .finally(() => {
        this.checking = false;
      });
  }

  async sample(): Promise<StatsSnapshot> {
    const { router, metrics } = this.deps;
    const now = Date.now();
    const [published, deliveries] = await Promise.all([
      perApp(metrics.published.counter),
      perApp(metrics.deliveries.counter),
    ]);
    const prev = this.prev;
    const dt = prev ? Math.max(0.001, (now - prev.ts) / 1000) : 1;
    const rate = (
      cur: Map<string, number>,
      before: Map<string, number> | undefined,
      app?: string,
    ): number => {
      if (!before) return 0;
      let d = 0;
      if (app === undefined) {
        for (const [k, v] of cur) d += v - (before.get(k) ?? 0);
      } else d = (cur.get(app) ?? 0) - (before.get(app) ?? 0);
      return Math.max(0, Math.round((d / dt) * 10) / 10);
    };
    const apps: AppStats[] = router
      .stats()
      .map((s) => ({
        ...s,
        notifyRate: rate(published, prev?.published, s.appId),
        deliveryRate: rate(deliveries, prev?.deliveries, s.appId),
      }))
      .sort((a, b) => b.connections - a.connections || a.appId.localeCompare(b.appId));
    this.prev = { ts: now, published, deliveries };

    const loop = {
      p50: ms(this.loop.percentile(50)),
      p99: ms(this.loop.percentile(99)),
      max: ms(this.loop.max),
    };
    this.loop.reset();
    const mem = process.memoryUsage();
    const totals = { connections: 0, subscriptions: 0, topics: 0, apps: apps.length };
    for (const a of apps) {
      totals.connections += a.connections;
      totals.subscriptions += a.subscriptions;
      totals.topics += a.topics;
    }
    const snap: StatsSnapshot = {
      ts: now,
      node: {
        version: this.deps.version,
        uptime: Math.round((now - this.deps.startedAt) / 1000),
        pid: process.pid,
        nodeVersion: process.version,
        rssBytes: mem.rss,
        heapUsedBytes: mem.heapUsed,
        store: this.deps.store,
        bus: this.deps.bus,
        accessMode: this.deps.accessMode,
        adminToken: this.deps.adminToken,
      },
      totals,
      notifyRate: rate(published, prev?.published),
      deliveryRate: rate(deliveries, prev?.deliveries),
      loop,
      apps,
      health: this.health,
      status: this.deps.readiness.draining() ? 'draining' : this.status,
      consoles: this.deps.consoles(),
    };
    this.last = snap;
    this.points.push({
      ts: now,
      notifyRate: snap.notifyRate,
      deliveryRate: snap.deliveryRate,
      connections: totals.connections,
      loopP99: loop.p99,
    });
    if (this.points.length > HISTORY_POINTS) this.points.splice(0, this.points.length - HISTORY_POINTS);
    return snap;
  }

  /**
   * What this node says about itself in the node list (and, in a cluster, with each heartbeat): the
   * figures of the last sample, the uptime and memory of now. Before the first sample the counts are 0.
   */
  nodeInfo(id: string): NodeInfo {
    const now = Date.now();
    const last = this.last;
    return {
      id,
      host: hostname(),
      pid: process.pid,
      version: this.deps.version,
      nodeVersion: process.version,
      startedAt: this.deps.startedAt,
      uptime: Math.round((now - this.deps.startedAt) / 1000),
      connections: last?.totals.connections ?? 0,
      subscriptions: last?.totals.subscriptions ?? 0,
      topics: last?.totals.topics ?? 0,
      apps: last?.totals.apps ?? 0,
      notifyRate: last?.notifyRate ?? 0,
      deliveryRate: last?.deliveryRate ?? 0,
      loopP99: last?.loop.p99 ?? 0,
      rssBytes: process.memoryUsage.rss(),
      store: this.deps.store,
      bus: this.deps.bus,
      status: this.deps.readiness.draining() ? 'draining' : this.status,
      health: this.health,
      at: now,
    };
  }

  close(): void {
    this.loop.disable();
  }
}

/**
 * The busiest topics of this node: the `limit` topics with the most distinct subscribers (then
 * sockets), in one pass over the router's topics without sorting them all. Topics that clients cannot
 * name (a leading control character: Herald's own pseudo-topics) are left out.
 */
export function busiestTopics(router: Router, limit = 20, appId?: string): TopicRow[] {
  const top: TopicRow[] = [];
  const better = (a: TopicRow, b: TopicRow) => a.count - b.count || a.connections - b.connections;
  for (const t of router.allTopics()) {
    if (appId !== undefined && t.appId !== appId) continue;
    // Internal pseudo-topics (e.g. the presence of every client) start with a control character.
    if (t.topic.charCodeAt(0) < 0x20) continue;
    const row: TopicRow = {
      appId: t.appId,
      topic: t.topic,
      count: t.clients.size,
      connections: t.connections,
    };
    if (top.length === limit && better(row, top[top.length - 1] as TopicRow) <= 0) continue;
    let i = top.length;
    while (i > 0 && better(row, top[i - 1] as TopicRow) > 0) i--;
    top.splice(i, 0, row);
    if (top.length > limit) top.pop();
  }
  return top;
}
