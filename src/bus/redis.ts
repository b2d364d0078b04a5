import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { clusterUnavailable } from '../errors.js';
import type { History } from '../history/index.js';
import { RedisHistory } from '../history/redis.js';
import type { Logger } from '../logger.js';
import { ONLINE_TOPIC, type TopicChange } from '../router/index.js';
import type { Notification, TopicCount } from '../router/types.js';
import { BatchPublisher, type OutgoingNotification } from './publisher.js';
import { NOW_MS_LUA, Script } from './script.js';
import { watchStalls } from './stall.js';
import type { Bus, ClusterMessage, LocalDeliver, Presence, PublishOptions } from './types.js';

export interface RedisClusterOptions {
  url: string;
  /** Prefix of every key and channel. */
  prefix: string;
  /** A node whose heartbeat is older than this is dead: its presence entries are removed. */
  presenceTtlMs: number;
  /** A Redis that owes a reply this long counts as away (REDIS_STALL_TIMEOUT). @default 2000 */
  stallMs?: number;
  /** How long notifications gathered during a script call may wait for more (CLUSTER_PUBLISH_LINGER). @default 0 */
  publishLingerMs?: number;
  deliver: LocalDeliver;
  /** The cluster-wide count of a topic may have changed. */
  onCountChange: (appId: string, topic: string) => void;
  /** Whether a user has a socket on this node. */
  hasUser: (appId: string, clientId: string) => boolean;
  /** Whether this node has any socket of an app. */
  hasApp: (appId: string) => boolean;
  /** This node's own count of a topic (used while Redis is away). */
  localCount: (appId: string, topic: string) => TopicCount;
  /**
   * What this node tells the others about itself (JSON-serialisable), written with every heartbeat and
   * read by `nodes()` (the console's node list).
   */
  nodeInfo?: () => Record<string, unknown>;
  /** This node's current subscribers, to publish them again after Redis comes back. */
  localTopics: () => Iterable<{
    appId: string;
    topic: string;
    clients: ReadonlyMap<string, number>;
    connections: number;
  }>;
  /**
   * The subscriber connection is back after an interruption and subscribed again: notifications other
   * nodes published meanwhile did not reach this node (clients can fetch them from the history).
   */
  onResubscribed?: () => void;
  logger: Logger;
}

interface PendingTopic {
  appId: string;
  topic: string;
  add: Set<string>;
  rem: Set<string>;
  connections: number;
}

/**
 * Counts distinct client ids and connections of a topic over the live nodes (ARGV[1]: the presence TTL;
 * liveness is judged in Redis time, see NOW_MS_LUA). Keys are built inside the
 * script, so this needs a single Redis (or one shard holding the prefix), which is what Herald targets.
 */
const COUNT_SCRIPT = new Script(`${NOW_MS_LUA}
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now_ms() - tonumber(ARGV[1]), '+inf')
local base = ARGV[2]
local pc = ARGV[3]
local keys = {}
local conns = 0
for _, n in ipairs(nodes) do
  keys[#keys + 1] = base .. n
  local c = redis.call('HGET', pc, n)
  if c then conns = conns + tonumber(c) end
end
local count = 0
if #keys == 1 then
  count = redis.call('SCARD', keys[1])
elseif #keys > 1 then
  redis.call('SUNIONSTORE', ARGV[4], unpack(keys))
  count = redis.call('SCARD', ARGV[4])
  redis.call('DEL', ARGV[4])
end
return { count, conns }
`);

/** Which of ARGV[3..] are members of the ONLINE pseudo-topic set of any live node. */
const ONLINE_SCRIPT = new Script(`${NOW_MS_LUA}
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now_ms() - tonumber(ARGV[1]), '+inf')
local out = {}
for i = 3, #ARGV do
  for _, n in ipairs(nodes) do
    if redis.call('SISMEMBER', ARGV[2] .. n, ARGV[i]) == 1 then
      out[#out + 1] = ARGV[i]
      break
    end
  end
end
return out
`);

/**
 * Removes a dead node's presence in one step, only if its heartbeat (KEYS[1] score of ARGV[1]) is still
 * older than the presence TTL ARGV[2] (in Redis time): a node that was only frozen and heartbeats again in between keeps its
 * entries, and a reaper that dies half-way leaves nothing behind (its ZREM done, the entries not yet
 * deleted, nobody would ever delete them). ARGV[3] is the key prefix. Answers the node's `<app>|<topic>`
 * entries, or nil when there was nothing to reap.
 */
const REAP_SCRIPT = new Script(`${NOW_MS_LUA}
local node, pre = ARGV[1], ARGV[3]
local seen = redis.call('ZSCORE', KEYS[1], node)
if not seen or tonumber(seen) > now_ms() - tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[1], node)
local nk = pre .. 'nk:' .. node
local entries = redis.call('SMEMBERS', nk)
for _, at in ipairs(entries) do
  redis.call('DEL', pre .. 'pm:' .. at .. '|' .. node)
  redis.call('HDEL', pre .. 'pc:' .. at, node)
end
redis.call('DEL', nk)
redis.call('HDEL', pre .. 'nodeinfo', node)
return entries
`);

/**
 * A node's heartbeat (ARGV[1] into the nodes zset KEYS[1], stamped with Redis's clock) and the nodes whose
 * last heartbeat is older than the presence TTL ARGV[2]. Answers { 1 if the node was added anew (it was
 * reaped, or Redis lost it), the dead nodes... }.
 */
const HEARTBEAT_SCRIPT = new Script(`${NOW_MS_LUA}
local now = now_ms()
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
table.insert(dead, 1, added)
return dead
`);

/**
 * Whether a notification from another node has the fields delivery reads: ids and `data` (JSON text,
 * written into frames as is) as strings, a finite `ts`, target lists of strings.
 */
function isNotification(n: unknown): n is Notification {
  if (typeof n !== 'object' || n === null) return false;
  const x = n as Record<string, unknown>;
  const list = (v: unknown) => v === undefined || (Array.isArray(v) && v.every((e) => typeof e === 'string'));
  return (
    typeof x.id === 'string' &&
    typeof x.appId === 'string' &&
    typeof x.data === 'string' &&
    typeof x.ts === 'number' &&
    Number.isFinite(x.ts) &&
    list(x.users) &&
    list(x.devices) &&
    list(x.topics) &&
    (x.pos === undefined || (typeof x.pos === 'object' && x.pos !== null))
  );
}

/** How often a node heartbeats for a presence TTL: four times per TTL, at most every 500 ms. */
export function heartbeatPeriod(presenceTtlMs: number): number {
  return Math.max(500, Math.floor(presenceTtlMs / 4));
}

/**
 * How long the command connection may owe Redis's reply before Redis counts as unreachable. Every command
 * Herald sends is short (the longest, a batch of 256 notifications, takes Redis ~1.5 ms), so this is
 * only reached when Redis or the path to it is stalled.
 */
const STALL_MS = 2000; // the default of REDIS_STALL_TIMEOUT

/** Most topics remembered for a refresh of the counts after an outage (see RedisCluster.countRead). */
const COUNT_READ_MAX = 50_000;

/** Users per routed notification above which it goes to the app channel instead (one Lua call stays short). */
const ROUTE_MAX_USERS = 1000;

/**
 * Cluster mode on Redis: notifications fan out over one pub/sub channel per app (a node subscribes
 * only to the apps it has sockets for), and presence (who is subscribed to what) lives in per-node sets,
 * so counts are exact across nodes and a dead node's entries can be dropped as a whole.
 *
 * Notifications addressed only to users are routed: they go only to the nodes whose online set holds
 * one of the users (on the node's own channel), so a targeted notification costs one node, not all.
 * A socket is admitted (its Socket.IO connect is answered) only once its user is in this node's online
 * set and the node listens to the app channel, so a client that sees `connect` is reachable at once.
 * For a while after a Redis outage, when the online sets may be incomplete until every node has
 * re-published its presence, targeted notifications go to the app channel like any other.
 *
 * Keys (all under the prefix): `nodes` (zset node -> last heartbeat), `pm:<app>|<topic>|<node>` (set of
 * client ids), `pc:<app>|<topic>` (hash node -> connections), `nk:<node>` (set of `<app>|<topic>` the node
 * has entries for). Channel: `app:<app>`.
 */
export class RedisCluster {
  readonly nodeId = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  /** Notifications sent to the whole app channel, routed to some nodes (and to how many), received. */
  /** `localOnly`: notifications delivered to this node's sockets only, because Redis was away. */
  readonly stats = { sentApp: 0, sentRouted: 0, routedNodes: 0, received: 0, localOnly: 0 };
  readonly bus: Bus;
  readonly presence: Presence;
  private readonly pub: Redis;
  /** Sends the notifications of one event-loop turn in one script call. */
  private readonly publisher: BatchPublisher;
  private readonly sub: Redis;
  private readonly apps = new Map<string, NodeJS.Timeout | null>();
  /** The app-channel subscriptions, resolved when Redis confirmed them. */
  private readonly subscribed = new Map<string, Promise<unknown>>();
  /** Sockets admitted but not yet connected, per `<app>\u0000<client>`. */
  private readonly admitted = new Map<string, number>();
  /** Until then, user-targeted notifications go to the app channel (presence may be incomplete). */
  private routeAfter = 0;
  private pending = new Map<string, PendingTopic>();
  /**
   * Topics whose cluster-wide count was read since the last resync (the ones watchers here watch), so
   * that they are read again once Redis is back: a change another node made while Redis was away (or
   * announced before this node listened again) reaches nobody otherwise. At most COUNT_READ_MAX, the
   * least recently read go first.
   */
  private countRead = new LRUCache<string, { appId: string; topic: string }>({ max: COUNT_READ_MAX });
  private flushScheduled = false;
  private resyncNeeded = false;
  /** Whether a heartbeat of this node has reached Redis (a later one that adds the node anew was reaped). */
  private beaten = false;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly stopStallWatch: () => void;
  private closed = false;
  private tmpCounter = 0;
  private lastPublishError = 0;
  private lastMalformed = 0;
  private readonly rpcHandlers = new Map<string, (appId: string, payload: unknown) => Promise<unknown>>();
  private readonly rpcPending = new Map<
    string,
    {
      expected: number;
      misses: number;
      resolve: (v: unknown) => void;
      reject: (e: Error) => void;
      lastError?: { code: string; message: string };
    }
  >();

  constructor(private readonly opts: RedisClusterOptions) {
    const common = {
      lazyConnect: true,
      retryStrategy: (n: number) => Math.min(100 * n, 2000),
      connectTimeout: 3000,
    };
    // Commands fail fast while Redis is away (no offline queue): a late notification is worse than
    // a missed one for the other nodes, and local sockets are served either way. For the same reason
    // the commands in flight when the connection drops fail at once (maxRetriesPerRequest 0) rather
    // than being sent again after a reconnect, possibly twice. A Redis that stops answering without
    // closing the connection (a stalled host, a dead network path, CLIENT PAUSE) counts as away once
    // it has owed a reply for `stallMs` (REDIS_STALL_TIMEOUT): the connection is dropped, so that notifications are delivered
    // locally at once instead of waiting (and piling up) for minutes, and /readyz shows it.
    // Auto-pipelining sends the commands of one event-loop turn in one write (history appends, routes
    // and publishes of concurrent requests), which is most of what a busy node sends.
    this.pub = new Redis(opts.url, {
      ...common,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      enableAutoPipelining: true,
    });
    // ioredis's `socketTimeout`, checked a few times per stall period instead of per write (see stall.ts).
    this.stopStallWatch = watchStalls(this.pub, opts.stallMs ?? STALL_MS);
    this.sub = new Redis(opts.url, { ...common, autoResubscribe: true });
    this.publisher = new BatchPublisher({
      redis: this.pub,
      nodesKey: this.key('nodes'),
      nodePrefix: this.key('node:'),
      nodeId: this.nodeId,
      presenceTtlMs: opts.presenceTtlMs,
      lingerMs: opts.publishLingerMs ?? 0,
    });
    for (const [name, client] of [
      ['publisher', this.pub],
      ['subscriber', this.sub],
    ] as const) {
      client.on('error', (err: Error) =>
        opts.logger.debug({ err: err.message, client: name }, 'redis error'),
      );
    }
    let everReady = false;
    this.pub.on('ready', () => {
      if (everReady) {
        opts.logger.info('redis is back: publishing this node presence again');
        this.resyncNeeded = true;
        // Redis may have lost the online sets; every node re-publishes them within a heartbeat.
        this.routeAfter = Date.now() + opts.presenceTtlMs + 2000;
      }
      everReady = true;
      void this.beat();
    });
    this.pub.on('end', () => undefined);
    this.pub.on('close', () => {
      if (!this.closed) this.resyncNeeded = true;
    });
    let subEverReady = false;
    this.sub.on('ready', () => {
      // The subscriber connection came back (alone, e.g. dropped by Redis past its output buffer limit):
      // count changes announced meanwhile were missed.
      if (subEverReady && !this.closed) void this.subscriberBack();
      subEverReady = true;
    });
    this.sub.on('messageBuffer', (channel: Buffer, message: Buffer) => this.onMessage(channel, message));

    const self = this;
    this.bus = {
      kind: 'redis',
      async publish(n: Notification, options?: PublishOptions) {
        if (options?.requireCluster) {
          // Redis first, then this node's sockets: a notification that cannot reach every node
          // reaches none, and the producer can publish it again without anyone getting it twice.
          if (!self.commandsReady()) throw clusterUnavailable();
          try {
            await self.send(n, undefined);
          } catch (err) {
            throw clusterUnavailable(err);
          }
          opts.deliver(n);
          return undefined;
        }
        opts.deliver(n);
        try {
          await self.send(n, undefined);
        } catch (err) {
          self.publishFailed(err);
        }
        return undefined;
      },
      publishRecorded(n: Notification, history: History) {
        if (!(history instanceof RedisHistory) || n.pos !== undefined) return undefined;
        const plan = history.plan(n);
        return plan ? self.recordAndPublish(n, plan) : undefined;
      },
      healthy: () => this.healthy(),
      reachable: () => this.commandsReady(),
      close: () => this.close(),
    };
    this.presence = {
      local: (change) => this.localChange(change),
      get: (appId, topic) => this.count(appId, topic),
      online: (appId, users) => this.online(appId, users),
      healthy: () => this.healthy(),
      close: async () => undefined,
    };
  }

  /** Connects (waiting at most `timeoutMs`; a node starts degraded rather than not at all). */
  async start(timeoutMs = 10_000): Promise<boolean> {
    const connect = Promise.all([this.pub.connect(), this.sub.connect()]).then(
      () => true,
      (err: Error) => {
        this.opts.logger.error(
          { err: err.message },
          'redis unreachable at start-up: serving local sockets only until it is back',
        );
        return false;
      },
    );
    // Replies to this node's remote calls and routed notifications come on its own channel. Subscribed
    // once the connection is under way (a command before connect() would start it and make connect()
    // fail); queued until Redis answers, and re-subscribed after every reconnect.
    this.sub.subscribe(this.key(`node:${this.nodeId}`)).catch(() => undefined);
    const ok = await Promise.race([
      connect,
      new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs)),
    ]);
    this.heartbeat = setInterval(() => void this.beat(), heartbeatPeriod(this.opts.presenceTtlMs));
    this.heartbeat.unref();
    return ok;
  }

  healthy(): boolean {
    return this.pub.status === 'ready' && this.sub.status === 'ready';
  }

  /**
   * Whether commands reach Redis. Presence is written and counts are read on the command connection:
   * while only the subscriber connection is away (this node misses other nodes' messages for a moment),
   * they go on as usual, or the changes of that moment would be lost and counts shrink to this node's.
   */
  private commandsReady(): boolean {
    return this.pub.status === 'ready';
  }

  /** Script calls that carried this node's notifications to Redis (one per event-loop turn that published). */
  get publishCalls(): number {
    return this.publisher.stats.calls;
  }

  /** The command connection (fails fast while Redis is away), for history and receipts. */
  get commands(): Redis {
    return this.pub;
  }

  private key(name: string): string {
    return `${this.opts.prefix}${name}`;
  }

  private channel(appId: string): string {
    return this.key(`app:${appId}`);
  }

  private publishFailed(err: unknown): void {
    this.stats.localOnly++;
    const now = Date.now();
    if (now - this.lastPublishError > 5000) {
      this.lastPublishError = now;
      this.opts.logger.warn(
        { err: (err as Error).message },
        'redis publish failed: other nodes miss notifications until it is back',
      );
    }
  }

  // --- routing --------------------------------------------------------------------------------

  private async recordAndPublish(
    n: Notification,
    plan: NonNullable<ReturnType<RedisHistory['plan']>>,
  ): Promise<undefined> {
    const positions = await this.send(n, plan);
    RedisHistory.applyPositions(n, plan.triples, positions);
    this.opts.deliver(n);
    return undefined;
  }

  /**
   * Sends a notification to the other nodes (routed to the nodes holding its users when it is addressed
   * only to users, else on the app channel), appending it to its history streams first when `plan` is
   * given, through the batch publisher; resolves with the (offset, epoch) list of the planned streams.
   */
  private async send(
    n: Notification,
    plan: NonNullable<ReturnType<RedisHistory['plan']>> | undefined,
  ): Promise<unknown[]> {
    const route = this.routable(n);
    const json = JSON.stringify({ v: 1, t: 'notify', node: this.nodeId, n } satisfies ClusterMessage);
    const item: OutgoingNotification = {
      mode: route ? 'route' : 'app',
      channel: this.channel(n.appId),
      onlinePrefix: this.key(`pm:${n.appId}|${ONLINE_TOPIC}|`),
      head: json.slice(0, -2),
      base: plan?.base ?? '',
      entry: plan?.entry ?? '',
      triples: plan?.triples ?? [],
      users: route ? (n.users as string[]) : [],
    };
    const out = await this.publisher.publish(item);
    if (route) {
      this.stats.sentRouted++;
      this.stats.routedNodes += out.routedNodes;
    } else this.stats.sentApp++;
    return out.positions;
  }

  /** Whether a notification can go only to the nodes holding its users. */
  private routable(n: Notification): boolean {
    return (
      n.users !== undefined &&
      n.users.length <= ROUTE_MAX_USERS &&
      n.topics === undefined &&
      n.devices === undefined &&
      n.broadcast !== true &&
      Date.now() >= this.routeAfter
    );
  }

  /**
   * Called before a socket's connect is answered: makes sure this node listens to the app's channel and
   * that the user is in this node's online set, so that notifications routed to the user reach this
   * node from the moment the client sees `connect`. Bounded by `timeoutMs`; while Redis is away the
   * socket is admitted at once (the resync after the outage publishes it).
   */
  async admit(appId: string, clientId: string, timeoutMs = 2000): Promise<() => void> {
    if (this.closed) return () => undefined;
    this.appAdded(appId);
    const key = `${appId}\u0000${clientId}`;
    this.admitted.set(key, (this.admitted.get(key) ?? 0) + 1);
    // Released when the socket is in the router, or after 10 s if it never got there.
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      clearTimeout(settle);
      this.admissionOver(appId, clientId);
    };
    const settle = setTimeout(release, 10_000);
    settle.unref();
    if (!this.healthy()) return release;
    const waits: Promise<unknown>[] = [this.subscribed.get(appId) ?? Promise.resolve()];
    if (!this.opts.hasUser(appId, clientId)) {
      const at = `${appId}|${ONLINE_TOPIC}`;
      waits.push(
        this.pub
          .multi()
          .sadd(this.key(`pm:${at}|${this.nodeId}`), clientId)
          .sadd(this.key(`nk:${this.nodeId}`), at)
          .exec()
          .catch(() => undefined),
      );
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(waits),
      new Promise<void>((r) => {
        timer = setTimeout(r, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    return release;
  }

  /** An admitted socket connected, or had time to: undo what no connected socket needs any more. */
  private admissionOver(appId: string, clientId: string): void {
    const key = `${appId}\u0000${clientId}`;
    const left = (this.admitted.get(key) ?? 1) - 1;
    if (left > 0) {
      this.admitted.set(key, left);
      return;
    }
    this.admitted.delete(key);
    if (this.closed) return;
    if (!this.opts.hasUser(appId, clientId) && this.healthy()) {
      this.pub.srem(this.key(`pm:${appId}|${ONLINE_TOPIC}|${this.nodeId}`), clientId).catch(() => undefined);
    }
    if (!this.opts.hasApp(appId)) this.appRemoved(appId);
  }

  // --- app channels ---------------------------------------------------------------------------

  /** The first local socket of an app connected: receive the app's traffic. */
  appAdded(appId: string): void {
    const timer = this.apps.get(appId);
    if (timer) clearTimeout(timer);
    if (this.apps.has(appId)) {
      this.apps.set(appId, null);
      return;
    }
    this.apps.set(appId, null);
    this.subscribed.set(
      appId,
      this.sub.subscribe(this.channel(appId)).catch(() => undefined),
    );
  }

  /** The last local socket of an app left: stop receiving its traffic after a grace period. */
  appRemoved(appId: string): void {
    if (!this.apps.has(appId)) return;
    const timer = setTimeout(() => {
      if (this.opts.hasApp(appId)) {
        this.apps.set(appId, null);
        return;
      }
      this.apps.delete(appId);
      this.subscribed.delete(appId);
      this.sub.unsubscribe(this.channel(appId)).catch(() => undefined);
    }, 5000);
    timer.unref();
    this.apps.set(appId, timer);
  }

  /**
   * A message from another node. It runs in ioredis's socket handler, where a throw would be an
   * uncaught exception (the process exits): a message of the wrong shape (a node of another version, or
   * of another deployment sharing REDIS_PREFIX by mistake) is dropped with a warning, as is anything a
   * handler throws on it.
   */
  private onMessage(channelBuf: Buffer, message: Buffer): void {
    let msg: ClusterMessage;
    try {
      msg = JSON.parse(message.toString('utf8')) as ClusterMessage;
    } catch {
      this.malformed(channelBuf, 'not JSON');
      return;
    }
    if (typeof msg !== 'object' || msg === null || msg.v !== 1 || msg.node === this.nodeId) return;
    try {
      const problem = this.dispatch(channelBuf, msg);
      if (problem) this.malformed(channelBuf, problem);
    } catch (err) {
      this.opts.logger.warn(
        { err, channel: channelBuf.toString() },
        'a cluster message could not be handled; dropped',
      );
    }
  }

  /** Acts on a message from another node; answers what is wrong with it, if anything. */
  private dispatch(channelBuf: Buffer, msg: ClusterMessage): string | undefined {
    if (msg.t === 'notify') {
      if (!isNotification(msg.n)) return 'a notify without a valid notification';
      this.stats.received++;
      this.opts.deliver(msg.n);
    } else if (msg.t === 'batch') {
      if (!Array.isArray(msg.ms)) return 'a batch without a list';
      let problem: string | undefined;
      for (const m of msg.ms) {
        if (typeof m !== 'object' || m === null || m.t !== 'notify') continue;
        if (!isNotification(m.n)) {
          problem = 'a notify without a valid notification';
          continue;
        }
        this.stats.received++;
        this.opts.deliver(m.n);
      }
      return problem;
    } else if (msg.t === 'rpc') {
      if (typeof msg.id !== 'string' || typeof msg.kind !== 'string' || typeof msg.appId !== 'string') {
        return 'a call without id, kind or app';
      }
      this.answer(msg);
    } else if (msg.t === 'rpc-reply') {
      if (typeof msg.id !== 'string') return 'a reply without an id';
      this.onReply(msg);
    } else if (msg.t === 'count') {
      if (!Array.isArray(msg.topics)) return 'a count without topics';
      const appId = channelBuf.toString('utf8').slice(this.key('app:').length);
      for (const topic of msg.topics) if (typeof topic === 'string') this.opts.onCountChange(appId, topic);
    }
    return undefined;
  }

  private malformed(channel: Buffer, what: string): void {
    const now = Date.now();
    if (now - this.lastMalformed < 5000) return;
    this.lastMalformed = now;
    this.opts.logger.warn(
      { channel: channel.toString(), what },
      'ignoring a malformed cluster message (another Herald version or deployment on this REDIS_PREFIX?)',
    );
  }

  // --- remote calls ---------------------------------------------------------------------------

  /**
   * Handles calls of `kind` from other nodes. The handler throws a HeraldError with code `not_here`
   * (or any code) when this node cannot serve the call; the caller waits for a node that can.
   */
  onCall(kind: string, handler: (appId: string, payload: unknown) => Promise<unknown>): void {
    this.rpcHandlers.set(kind, handler);
  }

  /**
   * Asks the other nodes serving `appId` to run `kind`; resolves with the first success. Rejects with
   * the last error when every node that received the call failed it (e.g. the device is on none of
   * them), or with `timeout` after `timeoutMs`.
   */
  async call(appId: string, kind: string, payload: unknown, timeoutMs: number): Promise<unknown> {
    const id = randomBytes(8).toString('hex');
    const msg: ClusterMessage = { v: 1, t: 'rpc', node: this.nodeId, id, kind, appId, payload };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.rpcPending.delete(id);
        reject(
          Object.assign(new Error(`no node answered ${kind} within ${timeoutMs} ms`), { code: 'timeout' }),
        );
      }, timeoutMs);
      const done = {
        expected: Number.POSITIVE_INFINITY,
        misses: 0,
        resolve: (v: unknown) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.rpcPending.set(id, done);
      this.pub.publish(this.channel(appId), JSON.stringify(msg)).then(
        (receivers) => {
          // PUBLISH counts subscribers; this node's own subscription (if any) never answers.
          done.expected = receivers - (this.apps.has(appId) ? 1 : 0);
          this.settleMisses(id);
        },
        (err: Error) => {
          this.rpcPending.delete(id);
          done.reject(
            Object.assign(new Error(`cluster unreachable: ${err.message}`), { code: 'unavailable' }),
          );
        },
      );
    });
  }

  private settleMisses(id: string): void {
    const p = this.rpcPending.get(id);
    if (!p || p.misses < p.expected) return;
    this.rpcPending.delete(id);
    const e = p.lastError ?? { code: 'not_found', message: 'no node could serve the call' };
    p.reject(Object.assign(new Error(e.message), { code: e.code }));
  }

  private answer(msg: Extract<ClusterMessage, { t: 'rpc' }>): void {
    const handler = this.rpcHandlers.get(msg.kind);
    const reply = (r: { ok: boolean; result?: unknown; error?: { code: string; message: string } }) => {
      const out: ClusterMessage = { v: 1, t: 'rpc-reply', node: this.nodeId, id: msg.id, ...r };
      let text: string;
      try {
        text = JSON.stringify(out);
      } catch (err) {
        // A result JSON cannot carry (too deep, a BigInt): the caller gets an error, not a timeout.
        const error = {
          code: 'internal_error',
          message: `the answer could not be encoded: ${(err as Error).message}`,
        };
        text = JSON.stringify({ v: 1, t: 'rpc-reply', node: this.nodeId, id: msg.id, ok: false, error });
      }
      this.pub.publish(this.key(`node:${msg.node}`), text).catch(() => undefined);
    };
    if (!handler) {
      reply({ ok: false, error: { code: 'not_here', message: `no handler for ${msg.kind}` } });
      return;
    }
    handler(msg.appId, msg.payload).then(
      (result) => reply({ ok: true, result }),
      (err: Error & { code?: string }) =>
        reply({ ok: false, error: { code: err.code ?? 'internal_error', message: err.message } }),
    );
  }

  private onReply(msg: Extract<ClusterMessage, { t: 'rpc-reply' }>): void {
    const p = this.rpcPending.get(msg.id);
    if (!p) return;
    if (msg.ok) {
      this.rpcPending.delete(msg.id);
      p.resolve(msg.result);
      return;
    }
    p.misses++;
    // A real failure (the device was there but timed out) beats "not here".
    if (msg.error && (msg.error.code !== 'not_here' || !p.lastError)) p.lastError = msg.error;
    this.settleMisses(msg.id);
  }

  // --- presence -------------------------------------------------------------------------------

  private localChange(c: TopicChange): void {
    const k = `${c.appId}|${c.topic}`;
    let p = this.pending.get(k);
    if (!p) {
      p = { appId: c.appId, topic: c.topic, add: new Set(), rem: new Set(), connections: c.connections };
      this.pending.set(k, p);
    }
    p.connections = c.connections;
    if (c.clientDelta === 1) {
      p.rem.delete(c.clientId);
      p.add.add(c.clientId);
    } else if (c.clientDelta === -1) {
      p.add.delete(c.clientId);
      // A socket of the same user being admitted right now keeps the user in the online set.
      if (c.topic !== ONLINE_TOPIC || !this.admitted.has(`${c.appId}\u0000${c.clientId}`))
        p.rem.add(c.clientId);
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => void this.flush());
    }
  }

  /** Writes this tick's presence changes in one pipeline, then tells every node. */
  private async flush(): Promise<void> {
    this.flushScheduled = false;
    const batch = this.pending;
    this.pending = new Map();
    if (batch.size === 0) return;
    if (this.resyncNeeded || !this.commandsReady()) {
      // Redis is away or just came back: a full resync will publish everything; tell local watchers now.
      this.resyncNeeded = true;
      for (const p of batch.values()) this.opts.onCountChange(p.appId, p.topic);
      return;
    }
    const node = this.nodeId;
    const m = this.pub.multi();
    for (const p of batch.values()) {
      const at = `${p.appId}|${p.topic}`;
      const members = this.key(`pm:${at}|${node}`);
      if (p.add.size) m.sadd(members, ...p.add);
      if (p.rem.size) m.srem(members, ...p.rem);
      if (p.connections > 0) {
        m.hset(this.key(`pc:${at}`), node, p.connections);
        m.sadd(this.key(`nk:${node}`), at);
      } else {
        m.hdel(this.key(`pc:${at}`), node);
        // The online set may hold users being admitted (see admit), so it is only ever trimmed, and
        // stays listed for the reaper.
        if (p.topic !== ONLINE_TOPIC) {
          m.del(members);
          m.srem(this.key(`nk:${node}`), at);
        }
      }
    }
    try {
      await m.exec();
      await this.announce([...batch.values()]);
    } catch (err) {
      this.resyncNeeded = true;
      this.opts.logger.warn({ err: (err as Error).message }, 'redis presence update failed; will resync');
    }
    for (const p of batch.values()) this.opts.onCountChange(p.appId, p.topic);
  }

  /** Publishes count-changed messages, one per app. */
  private async announce(topics: { appId: string; topic: string }[]): Promise<void> {
    const byApp = new Map<string, string[]>();
    for (const t of topics) {
      let list = byApp.get(t.appId);
      if (!list) {
        list = [];
        byApp.set(t.appId, list);
      }
      list.push(t.topic);
    }
    const m = this.pub.pipeline();
    for (const [appId, list] of byApp) {
      for (let i = 0; i < list.length; i += 500) {
        const msg: ClusterMessage = { v: 1, t: 'count', node: this.nodeId, topics: list.slice(i, i + 500) };
        m.publish(this.channel(appId), JSON.stringify(msg));
      }
    }
    await m.exec();
  }

  /** Heartbeat; resync after an outage; removal of dead nodes' entries. */
  private async beat(): Promise<void> {
    if (this.closed || this.pub.status !== 'ready') return;
    try {
      const [added, ...dead] = (await HEARTBEAT_SCRIPT.run(
        this.pub,
        1,
        this.key('nodes'),
        this.nodeId,
        String(this.opts.presenceTtlMs),
      )) as [number, ...string[]];
      if (added === 1 && this.beaten && !this.resyncNeeded) {
        // Another node took this one for dead (frozen, or cut off from Redis longer than the presence
        // TTL) and removed its entries: its subscribers and online users must be published again.
        this.opts.logger.warn('this node was taken for dead by the cluster: publishing its presence again');
        this.resyncNeeded = true;
      }
      this.beaten = true;
      // close() may have run meanwhile and removed this node's entries: writing them again now would
      // leave keys without a TTL that no node reaps (this node is no longer in the nodes set).
      if (this.closed) return;
      if (this.opts.nodeInfo) {
        await this.pub.hset(this.key('nodeinfo'), this.nodeId, JSON.stringify(this.opts.nodeInfo()));
      }
      if (this.closed) return;
      if (this.resyncNeeded) await this.resync();
      for (const node of dead) await this.reap(node);
    } catch (err) {
      this.opts.logger.debug({ err: (err as Error).message }, 'redis heartbeat failed');
    }
  }

  /** Publishes this node's whole presence again (after Redis restarted or was unreachable). */
  private async resync(): Promise<void> {
    this.resyncNeeded = false;
    const node = this.nodeId;
    const old = await this.pub.smembers(this.key(`nk:${node}`));
    const m = this.pub.multi();
    const now = new Set<string>();
    const touched: { appId: string; topic: string }[] = [];
    for (const t of this.opts.localTopics()) {
      const at = `${t.appId}|${t.topic}`;
      now.add(at);
      const members = this.key(`pm:${at}|${node}`);
      m.del(members);
      if (t.clients.size) m.sadd(members, ...t.clients.keys());
      m.hset(this.key(`pc:${at}`), node, t.connections);
      m.sadd(this.key(`nk:${node}`), at);
      touched.push({ appId: t.appId, topic: t.topic });
    }
    // Sockets being admitted right now are online too.
    for (const key of this.admitted.keys()) {
      const nul = key.indexOf('\u0000');
      const at = `${key.slice(0, nul)}|${ONLINE_TOPIC}`;
      m.sadd(this.key(`pm:${at}|${node}`), key.slice(nul + 1));
      m.sadd(this.key(`nk:${node}`), at);
      now.add(at);
    }
    for (const at of old) {
      if (now.has(at)) continue;
      m.del(this.key(`pm:${at}|${node}`));
      m.hdel(this.key(`pc:${at}`), node);
      m.srem(this.key(`nk:${node}`), at);
      const bar = at.indexOf('|');
      touched.push({ appId: at.slice(0, bar), topic: at.slice(bar + 1) });
    }
    // Commands sent before close() began run before its removal on this connection; none after it.
    if (this.closed) return;
    try {
      await m.exec();
      // Re-subscribe app channels too, in case the subscriber connection came back first. Resolved
      // when Redis confirmed them, so every count change announced from now on reaches this node.
      for (const appId of this.apps.keys()) await this.sub.subscribe(this.channel(appId));
      await this.announce(touched);
    } catch (err) {
      this.resyncNeeded = true;
      throw err;
    }
    for (const t of touched) this.opts.onCountChange(t.appId, t.topic);
    // What the local watchers were shown may be stale: other nodes' subscribers may have left while
    // Redis was away (a node re-publishing after a restart does not know what it held before), or their
    // announcements came while this node was not listening.
    this.refreshCounts();
  }

  /** Reads every watched count again; those still watched are remembered again, the others forgotten. */
  private refreshCounts(): void {
    const read = [...this.countRead.values()];
    this.countRead.clear();
    for (const t of read) this.opts.onCountChange(t.appId, t.topic);
  }

  /** Once the app channels are confirmed again (so no later change is missed), refreshes the counts. */
  private async subscriberBack(): Promise<void> {
    try {
      const channels = [...this.apps.keys()].map((appId) => this.channel(appId));
      if (channels.length) await this.sub.subscribe(...channels);
    } catch {
      return; // Away again: its next return refreshes.
    }
    this.refreshCounts();
    this.opts.onResubscribed?.();
  }

  /** Removes a dead node's presence (atomically, and only if it is still dead; see REAP_SCRIPT). */
  private async reap(node: string): Promise<void> {
    if (node === this.nodeId) return;
    const entries = (await REAP_SCRIPT.run(
      this.pub,
      1,
      this.key('nodes'),
      node,
      String(this.opts.presenceTtlMs),
      this.opts.prefix,
    )) as string[] | null;
    if (!entries) return;
    const touched = entries.map((at) => {
      const bar = at.indexOf('|');
      return { appId: at.slice(0, bar), topic: at.slice(bar + 1) };
    });
    this.opts.logger.warn(
      { node, topics: entries.length },
      'removed the presence of a node that stopped heartbeating',
    );
    await this.announce(touched);
    for (const t of touched) this.opts.onCountChange(t.appId, t.topic);
  }

  /** The cluster-wide count, or this node's own when Redis is away. */
  private async count(appId: string, topic: string): Promise<TopicCount> {
    const at = `${appId}|${topic}`;
    // An LRU list: a full Map dropping its first key at each read would skip every deleted slot.
    this.countRead.set(at, { appId, topic });
    if (!this.commandsReady()) return this.localOnly(appId, topic);
    try {
      const tmp = this.key(`tmp:${this.nodeId}:${this.tmpCounter++}`);
      const res = (await COUNT_SCRIPT.run(
        this.pub,
        1,
        this.key('nodes'),
        String(this.opts.presenceTtlMs),
        this.key(`pm:${at}|`),
        this.key(`pc:${at}`),
        tmp,
      )) as [number, number];
      return { count: Number(res[0]), connections: Number(res[1]) };
    } catch {
      return this.localOnly(appId, topic);
    }
  }

  /** Users with a socket on any live node; this node's own view while Redis is away. */
  private async online(appId: string, users: readonly string[]): Promise<Set<string>> {
    if (users.length === 0) return new Set();
    const local = new Set(users.filter((u) => this.opts.hasUser(appId, u)));
    if (!this.commandsReady()) return local;
    try {
      const res = (await ONLINE_SCRIPT.run(
        this.pub,
        1,
        this.key('nodes'),
        String(this.opts.presenceTtlMs),
        this.key(`pm:${appId}|${ONLINE_TOPIC}|`),
        ...users,
      )) as string[];
      for (const u of res) local.add(u);
      return local;
    } catch {
      return local;
    }
  }

  private localOnly(appId: string, topic: string): TopicCount {
    return this.opts.localCount(appId, topic);
  }

  /**
   * The live nodes (heartbeat within the presence TTL), this one included, with what each last said
   * about itself (`nodeInfo`) and when. Rejects while Redis is away.
   */
  async nodes(): Promise<{ id: string; self: boolean; lastSeen: number; info: Record<string, unknown> }[]> {
    // Heartbeats are stamped with Redis's clock (see NOW_MS_LUA); `lastSeen` is given on this node's
    // clock, so that it compares with this node's Date.now() whatever the two clocks say.
    const [sec, usec] = await this.pub.time();
    const redisNow = Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
    const offset = redisNow - Date.now();
    const since = redisNow - this.opts.presenceTtlMs;
    const flat = await this.pub.zrangebyscore(this.key('nodes'), since, '+inf', 'WITHSCORES');
    const ids: string[] = [];
    const seen: number[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      ids.push(flat[i] as string);
      seen.push(Number(flat[i + 1]) - offset);
    }
    const infos = ids.length ? await this.pub.hmget(this.key('nodeinfo'), ...ids) : [];
    return ids.map((id, i) => {
      let info: Record<string, unknown> = {};
      try {
        const parsed: unknown = infos[i] ? JSON.parse(infos[i] as string) : {};
        // Only an object: `null` or a list written by another version would break the node list.
        if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) {
          info = parsed as Record<string, unknown>;
        }
      } catch {
        // A node of another version wrote something else: show it without details.
      }
      return { id, self: id === this.nodeId, lastSeen: seen[i] as number, info };
    });
  }

  /** Leaves the cluster: removes this node's presence so no stale counts remain, and disconnects. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.stopStallWatch();
    for (const t of this.apps.values()) if (t) clearTimeout(t);
    if (this.pending.size) await this.flush().catch(() => undefined);
    if (this.pub.status === 'ready') {
      try {
        await this.pub.zadd(this.key('nodes'), 0, this.nodeId);
        await this.reapSelf();
      } catch {
        // Redis away: the other nodes will reap this node after the presence TTL.
      }
    }
    this.pub.disconnect();
    this.sub.disconnect();
  }

  private async reapSelf(): Promise<void> {
    const node = this.nodeId;
    const entries = await this.pub.smembers(this.key(`nk:${node}`));
    const m = this.pub.multi();
    for (const at of entries) {
      m.del(this.key(`pm:${at}|${node}`));
      m.hdel(this.key(`pc:${at}`), node);
    }
    m.del(this.key(`nk:${node}`));
    m.zrem(this.key('nodes'), node);
    m.hdel(this.key('nodeinfo'), node);
    await m.exec();
    await this.announce(
      entries.map((at) => {
        const bar = at.indexOf('|');
        return { appId: at.slice(0, bar), topic: at.slice(bar + 1) };
      }),
    );
  }
}
