import { heartbeatPeriod } from '../bus/redis.js';
import type { HealthCheck, NodeInfo, NodeList, NodeRow } from './types.js';

/** A node as the cluster lists it (RedisCluster.nodes()). */
export interface ClusterNode {
  id: string;
  self: boolean;
  lastSeen: number;
  info: Record<string, unknown>;
}

/** The part of RedisCluster the node list needs. */
export interface ClusterNodes {
  readonly nodeId: string;
  /** Live nodes, this one included; rejects while Redis is away. */
  nodes(): Promise<ClusterNode[]>;
}

export interface NodeDirectoryDeps {
  /** This node's info now (the console sampler's figures). */
  self: () => NodeInfo;
  /** Cluster mode: where the other nodes are listed. */
  cluster?: ClusterNodes;
  /** PRESENCE_TTL: a node silent for this long is no longer listed. */
  presenceTtlMs: number;
  /** A list read less than this ago is served again without reading Redis. @default 900 */
  maxAgeMs?: number;
  /** A read of Redis that takes longer fails (Redis counts as unreachable). @default 2000 */
  timeoutMs?: number;
}

/** The heartbeat period of RedisCluster for a presence TTL. */
export { heartbeatPeriod };

type Read = { at: number; ok: true; nodes: ClusterNode[] } | { at: number; ok: false; error: string };

const NUMBERS = [
  'pid',
  'startedAt',
  'uptime',
  'connections',
  'subscriptions',
  'topics',
  'apps',
  'notifyRate',
  'deliveryRate',
  'loopP99',
  'rssBytes',
  'at',
] as const;
const STRINGS = ['id', 'host', 'version', 'nodeVersion', 'status'] as const;

/**
 * Keeps what another node wrote about itself that has the expected type, field by field: nodes of
 * other versions may write more, less or something else, and the console must not trip over it.
 */
export function readNodeInfo(raw: Record<string, unknown>): Partial<NodeInfo> {
  const out: Partial<NodeInfo> = {};
  for (const k of NUMBERS) {
    const v = raw[k];
    if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
  }
  for (const k of STRINGS) {
    const v = raw[k];
    if (typeof v === 'string') out[k] = v.slice(0, 200);
  }
  if (raw.store === 'embedded' || raw.store === 'postgres') out.store = raw.store;
  if (raw.bus === 'memory' || raw.bus === 'redis') out.bus = raw.bus;
  if (raw.health && typeof raw.health === 'object' && !Array.isArray(raw.health)) {
    const health: Record<string, HealthCheck> = {};
    for (const [name, c] of Object.entries(raw.health as Record<string, unknown>)) {
      if (!c || typeof c !== 'object') continue;
      const check = c as Record<string, unknown>;
      if (typeof check.ok !== 'boolean') continue;
      health[name] = {
        ok: check.ok,
        critical: check.critical === true,
        ...(typeof check.error === 'string' ? { error: check.error.slice(0, 500) } : {}),
      };
    }
    out.health = health;
  }
  return out;
}

/**
 * The node list of the console. On a single node it is this node. In a cluster it reads the live
 * nodes from Redis, at most once per `maxAgeMs` however many consoles and requests ask (concurrent
 * callers share one read), and shows this node with its own figures of now rather than those of its
 * last heartbeat. When Redis cannot be read the list says so and holds this node only.
 */
export class NodeDirectory {
  private last: Read | undefined;
  private reading: Promise<Read> | undefined;
  /** Reads of the cluster so far (for tests and diagnostics). */
  reads = 0;

  constructor(private readonly deps: NodeDirectoryDeps) {}

  get mode(): 'single' | 'cluster' {
    return this.deps.cluster ? 'cluster' : 'single';
  }

  async list(): Promise<NodeList> {
    const self = this.deps.self();
    const { cluster } = this.deps;
    if (!cluster) return summarise({ mode: 'single', state: 'ok', readAt: self.at, nodes: [selfRow(self)] });
    const read = await this.read(cluster);
    const heartbeatMs = heartbeatPeriod(this.deps.presenceTtlMs);
    const common = { mode: 'cluster' as const, heartbeatMs, presenceTtlMs: this.deps.presenceTtlMs };
    if (!read.ok) {
      return summarise({
        ...common,
        state: 'unreachable',
        error: read.error,
        readAt: read.at,
        nodes: [selfRow(self)],
      });
    }
    const rows: NodeRow[] = read.nodes.map((n) => ({
      id: n.id,
      self: n.self,
      lastSeen: n.lastSeen,
      stale: read.at - n.lastSeen > 2 * heartbeatMs,
      info: n.self ? self : readNodeInfo(n.info),
    }));
    // This node is listed before its first heartbeat too (or while Redis is back but it has not beaten yet).
    if (!rows.some((r) => r.self)) rows.push(selfRow(self));
    rows.sort((a, b) => Number(b.self) - Number(a.self) || a.id.localeCompare(b.id));
    return summarise({ ...common, state: 'ok', readAt: read.at, nodes: rows });
  }

  private read(cluster: ClusterNodes): Promise<Read> {
    const maxAge = this.deps.maxAgeMs ?? 900;
    if (this.last && Date.now() - this.last.at < maxAge) return Promise.resolve(this.last);
    if (this.reading) return this.reading;
    const timeoutMs = this.deps.timeoutMs ?? 2000;
    this.reads++;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`Redis did not answer within ${timeoutMs} ms`)), timeoutMs);
    });
    this.reading = Promise.race([cluster.nodes(), timeout])
      .then(
        (nodes): Read => ({ at: Date.now(), ok: true, nodes }),
        (err: unknown): Read => ({
          at: Date.now(),
          ok: false,
          error: `Cluster unreachable: cannot read the node list from Redis (${(err as Error)?.message ?? String(err)}). Showing this node only.`,
        }),
      )
      .then((r) => {
        clearTimeout(timer);
        this.last = r;
        this.reading = undefined;
        return r;
      });
    return this.reading;
  }
}

function selfRow(info: NodeInfo): NodeRow {
  return { id: info.id, self: true, lastSeen: null, stale: false, info };
}

function summarise(list: Omit<NodeList, 'totals'>): NodeList {
  const totals = {
    nodes: list.nodes.length,
    connections: 0,
    subscriptions: 0,
    notifyRate: 0,
    deliveryRate: 0,
  };
  for (const { info } of list.nodes) {
    totals.connections += info.connections ?? 0;
    totals.subscriptions += info.subscriptions ?? 0;
    totals.notifyRate += info.notifyRate ?? 0;
    totals.deliveryRate += info.deliveryRate ?? 0;
  }
  totals.notifyRate = Math.round(totals.notifyRate * 10) / 10;
  totals.deliveryRate = Math.round(totals.deliveryRate * 10) / 10;
  return { ...list, totals };
}
