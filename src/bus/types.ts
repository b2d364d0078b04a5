import type { History } from '../history/index.js';
import type { TopicChange } from '../router/index.js';
import type { Notification, TopicCount } from '../router/types.js';

/**
 * Carries notifications to every node (one node: straight to the local router). Messages between
 * nodes are versioned (`v`), so that nodes of two versions can share a bus during a rolling upgrade.
 */
export interface Bus {
  readonly kind: 'memory' | 'redis';
  /**
   * Sends a notification to every node, this one included. Resolves with the number of sockets
   * reached when this node can know it (single node), otherwise `undefined`. By default a cluster
   * node that cannot reach Redis delivers to its own sockets only; with `requireCluster` it delivers
   * nowhere and rejects with `cluster_unavailable` (a HeraldError) instead.
   */
  publish(n: Notification, opts?: PublishOptions): Promise<number | undefined>;
  /**
   * The same as `publish`, done before it returns, on a bus that can (one node: the local router):
   * the number of sockets reached. Lets a caller publish without a promise per notification.
   */
  publishNow?(n: Notification): number;
  /**
   * Appends `n` to `history` (setting its offsets) and publishes it in one step (cluster: one Redis
   * script instead of two round trips). Returns `undefined`, having done nothing, when this bus cannot
   * do that with this history (the caller appends, then publishes). A rejection means that nothing was
   * appended or sent to other nodes, nor delivered here.
   */
  publishRecorded?(n: Notification, history: History): Promise<number | undefined> | undefined;
  /** Whether the bus currently reaches the other nodes. */
  healthy(): boolean;
  /**
   * Whether a notification published now would reach the other nodes (cluster: the command connection
   * to Redis is up; the subscriber connection only brings other nodes' notifications here).
   */
  reachable(): boolean;
  close(): Promise<void>;
}

export interface PublishOptions {
  /**
   * Cluster: deliver the notification only if it reaches Redis (so every node), else nowhere, and
   * reject with `cluster_unavailable`. For producers that retry (POST /notify with
   * `REDIS_DOWN_NOTIFY=reject`, the payment outbox) rather than have other nodes' clients miss it.
   */
  requireCluster?: boolean;
}

/** What a bus calls to deliver a notification on this node. */
export type LocalDeliver = (n: Notification) => number;

/**
 * Who is subscribed to what, for counts: this node alone (memory) or the whole cluster (Redis).
 * It learns this node's changes through `local()` and calls `onChange(appId, topic)` whenever the
 * cluster-wide count of a topic may have changed, here or on another node.
 */
export interface Presence {
  local(change: TopicChange): void;
  get(appId: string, topic: string): TopicCount | Promise<TopicCount>;
  /** Which of these users have at least one connected socket (anywhere in the cluster). */
  online(appId: string, users: readonly string[]): Promise<Set<string>>;
  healthy(): boolean;
  close(): Promise<void>;
}

/** Messages between nodes. A node ignores a version it does not know. */
export type ClusterMessage =
  | { v: 1; t: 'notify'; node: string; n: Notification }
  /** Several notify messages of one node, in order (one publish for a batch; see bus/publisher.ts). */
  | { v: 1; t: 'batch'; node: string; ms: ClusterMessage[] }
  | { v: 1; t: 'count'; node: string; topics: string[] }
  | { v: 1; t: 'rpc'; node: string; id: string; kind: string; appId: string; payload: unknown }
  | {
      v: 1;
      t: 'rpc-reply';
      node: string;
      id: string;
      ok: boolean;
      result?: unknown;
      error?: { code: string; message: string };
    };
