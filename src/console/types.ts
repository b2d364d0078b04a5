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
