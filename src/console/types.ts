/**
 * What the web console and the server exchange: the JSON of `/admin/api/*` and the events of the
 * reserved `/admin/console` Socket.IO namespace. Types only, so the browser bundle can import them too.
 */

/** Per-app figures of this node. */
export interface AppStats {
  appId: string;
  connections: number;
  subscriptions: number;
  topics: number;
  /** Notifications accepted for this app per second (last sample). */
  notifyRate: number;
  /** Socket writes for this app per second (last sample). */
  deliveryRate: number;
}

export interface HealthCheck {
  ok: boolean;
  critical: boolean;
  error?: string;
}

/** One second of this node, pushed as the `stats` event of `/admin/console` and served by GET /admin/api/overview. */
export interface StatsSnapshot {
  ts: number;
  node: {
    version: string;
    /** Seconds since the node started. */
    uptime: number;
    pid: number;
    nodeVersion: string;
    rssBytes: number;
    heapUsedBytes: number;
    store: 'embedded' | 'postgres';
    bus: 'memory' | 'redis';
    accessMode: 'open' | 'apps';
    adminToken: boolean;
  };
  totals: { connections: number; subscriptions: number; topics: number; apps: number };
  /** Notifications accepted per second by this node's API and in-process producers. */
  notifyRate: number;
  /** Socket writes per second on this node. */
  deliveryRate: number;
  /** Event-loop delay over the last second, in milliseconds. */
  loop: { p50: number; p99: number; max: number };
  apps: AppStats[];
  /** `store` and `bus`, as in GET /readyz; absent until the first check has finished. */
  health: Record<string, HealthCheck>;
  /** readyz status: ready, degraded, not_ready or draining. */
  status: string;
  /** Console sockets connected to this node. */
  consoles: number;
  /**
   * Every node of the deployment (this one alone on a single node); see {@link NodeList}. Set on the
   * snapshots the console pushes and GET /admin/api/overview serves; absent from the sampler's own.
   */
  nodes?: NodeList;
}

/**
 * What a node says about itself: written to Redis with each cluster heartbeat (`<prefix>nodeinfo`)
 * and shown in the console's node list. Figures are those of the node's last one-second sample.
 */
export interface NodeInfo {
  /** The cluster node id (`<host>-<pid>-<random>`); `<host>-<pid>` on a single node. */
  id: string;
  host: string;
  pid: number;
  /** Herald's version. */
  version: string;
  nodeVersion: string;
  /** When the node started (epoch ms). */
  startedAt: number;
  /** Seconds since the node started, when this info was made. */
  uptime: number;
  connections: number;
  subscriptions: number;
  topics: number;
  apps: number;
  /** Notifications accepted per second (last sample). */
  notifyRate: number;
  /** Socket writes per second (last sample). */
  deliveryRate: number;
  /** Event-loop delay p99 over the last sample, in milliseconds. */
  loopP99: number;
  rssBytes: number;
  store: 'embedded' | 'postgres';
  bus: 'memory' | 'redis';
  /** readyz status: ready, degraded, not_ready or draining. */
  status: string;
  /** `store` and `bus` checks of /readyz (empty until the first check has finished). */
  health: Record<string, HealthCheck>;
  /** When this info was made (epoch ms). */
  at: number;
}

/** One row of the node list. */
export interface NodeRow {
  id: string;
  /** The node serving this console. */
  self: boolean;
  /** Its last cluster heartbeat (epoch ms); null on a single node or when Redis is unreachable. */
  lastSeen: number | null;
  /** Missed heartbeats: silent for more than two heartbeat periods (it is dropped after PRESENCE_TTL). */
  stale: boolean;
  /**
   * What the node last said about itself. Fields it did not send (an older version, or a node that
   * has just started and not yet sampled) are absent.
   */
  info: Partial<NodeInfo>;
}

/**
 * The nodes of the deployment, as the `nodes` field of {@link StatsSnapshot} and GET /admin/api/nodes.
 * Single node: this node only. Cluster (REDIS_URL): every node with a heartbeat within PRESENCE_TTL,
 * read from Redis at most about once a second per node; `state: 'unreachable'` when Redis cannot be
 * read, with this node only.
 */
export interface NodeList {
  mode: 'single' | 'cluster';
  state: 'ok' | 'unreachable';
  /** Why the cluster could not be read (state `unreachable`). */
  error?: string;
  /** When the list was read (epoch ms). */
  readAt: number;
  /** Cluster mode: heartbeat period and presence TTL, in milliseconds. */
  heartbeatMs?: number;
  presenceTtlMs?: number;
  /** This node first, then by id. */
  nodes: NodeRow[];
  /** Sums over the listed nodes. */
  totals: {
    nodes: number;
    connections: number;
    subscriptions: number;
    notifyRate: number;
    deliveryRate: number;
  };
}

/** A compact point of the charts (one per second). */
export interface StatsPoint {
  ts: number;
  notifyRate: number;
  deliveryRate: number;
  connections: number;
  loopP99: number;
}

export interface TopicRow {
  appId: string;
  topic: string;
  /** Distinct client ids subscribed on this node. */
  count: number;
  /** Sockets subscribed on this node. */
  connections: number;
}

export interface ClientSocket {
  appId: string;
  clientId: string;
  socketId: string;
  deviceId: string | null;
  topics: string[];
  watches: string[];
}

/** A payment event as the console feed shows it (from the payment event history). */
export interface PaymentFeedItem {
  seq: number;
  appId: string;
  eventId: string;
  orderId: string;
  merchantId: string;
  deviceId: string | null;
  type: string;
  outcome: string;
  from: string | null;
  to: string | null;
  reason: string | null;
  amount: number | null;
  currency: string | null;
  source: string;
  occurredAt: string;
  receivedAt: string;
}

/** A machine going online or offline. */
export interface MachineFeedItem {
  appId: string;
  deviceId: string;
  merchantId: string;
  online: boolean;
  at: string;
}

/** One attempt of a merchant webhook (from the attempt log). */
export interface WebhookFeedItem {
  id: number;
  deliveryId: string;
  orderNo: string;
  merchantKey: string;
  url: string;
  attempt: number;
  outcome: string;
  statusCode: number | null;
  durationMs: number;
  error: string | null;
  at: string;
}

/** Feeds a console socket can watch (`watch` event). */
export type FeedName = 'stats' | 'topics' | 'payments' | 'machines' | 'webhooks';

/** Server -> console events of `/admin/console`. */
export interface ConsoleServerEvents {
  stats: (s: StatsSnapshot) => void;
  /** Sent once after `watch(['stats'])`: the last minutes, oldest first. */
  history: (points: StatsPoint[]) => void;
  topics: (rows: TopicRow[]) => void;
  payments: (items: PaymentFeedItem[]) => void;
  machines: (items: MachineFeedItem[]) => void;
  webhooks: (items: WebhookFeedItem[]) => void;
}
