import type { Redis } from 'ioredis';
import { newEpoch } from '../history/index.js';
import { APPEND_STREAMS_LUA } from '../history/redis.js';
import { NOW_MS_LUA, Script } from './script.js';

/**
 * One notification for the batch script: where it goes (`app`: the app channel; `route`: the nodes whose
 * online set holds one of `users`), its cluster message without the last two braces, and, when it keeps
 * history, the (stream, size, ttlMs) triples to append it to.
 */
export interface OutgoingNotification {
  mode: 'app' | 'route';
  /** The app channel (mode `app`). */
  channel: string;
  /** Prefix of the per-node online sets of the app (mode `route`). */
  onlinePrefix: string;
  /** The JSON of the cluster message without its last two braces (`pos` is inserted before them). */
  head: string;
  /** History key base and entry; unused when `triples` is empty. */
  base: string;
  entry: string;
  triples: readonly (string | number)[];
  /** The users to route to (mode `route`). */
  users: readonly string[];
}

/** What the script answered for one notification: (offset, epoch) per stream, and nodes routed to. */
export interface PublishOutcome {
  positions: unknown[];
  routedNodes: number;
}

/**
 * Appends a batch of notifications to their history streams and publishes them, in one call, in order.
 * ARGV: nodes zset, presence TTL in ms (a node is live when its heartbeat, in Redis time, is that recent), caller node, node-channel prefix, epoch candidate, now, the head of a
 * batch message (`{"v":1,"t":"batch","node":…,"ms":[`), the number of notifications, then per
 * notification: mode, app channel, online-set prefix, message head, history base, history entry, stream
 * count, the (stream, size, ttlMs) triples, user count, the users.
 *
 * Messages for one channel are published together (one PUBLISH, a batch message when there are several),
 * keeping the order any one receiver could observe: a node receives its app channels and its own node
 * channel, so app-channel messages of an app are published before a later node-channel message of that
 * app, and node-channel messages before a later app-channel message.
 *
 * Returns, per notification, the flat (offset, epoch) list of its streams then the number of nodes it was
 * routed to.
 */
const PUBLISH_BATCH_SCRIPT = new Script(`${APPEND_STREAMS_LUA}${NOW_MS_LUA}
local nodes = redis.call('ZRANGEBYSCORE', ARGV[1], now_ms() - tonumber(ARGV[2]), '+inf')
local self, node_prefix, epoch, now, batch_head = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local lists, order = {}, {}
local node_lists, app_lists = {}, {}
local function publish(ch)
  local l = lists[ch]
  if not l or #l == 0 then return end
  if #l == 1 then
    redis.call('PUBLISH', ch, l[1])
  else
    redis.call('PUBLISH', ch, batch_head .. table.concat(l, ',') .. ']}')
  end
  lists[ch] = {}
end
local function push(ch, msg)
  local l = lists[ch]
  if not l then
    l = {}
    lists[ch] = l
    order[#order + 1] = ch
  end
  l[#l + 1] = msg
end
local out = {}
local i = 9
for _ = 1, tonumber(ARGV[8]) do
  local mode, channel, online, head, base, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local count = tonumber(ARGV[i + 6])
  local first = i + 7
  local msg = head
  if count > 0 then
    local offs, pos = append_streams(base, entry, epoch, now, first, count, true)
    for _, v in ipairs(offs) do out[#out + 1] = v end
    if #pos > 0 then msg = msg .. ',"pos":{' .. table.concat(pos, ',') .. '}' end
  end
  msg = msg .. '}}'
  local u = first + count * 3
  local nusers = tonumber(ARGV[u])
  local sent = 0
  if mode == 'app' then
    for ch in pairs(node_lists) do publish(ch) end
    node_lists = {}
    app_lists[channel] = true
    push(channel, msg)
  else
    if app_lists[channel] then
      publish(channel)
      app_lists[channel] = nil
    end
    for _, n in ipairs(nodes) do
      if n ~= self then
        local hits = redis.call('SMISMEMBER', online .. n, unpack(ARGV, u + 1, u + nusers))
        for _, h in ipairs(hits) do
          if h == 1 then
            local ch = node_prefix .. n
            node_lists[ch] = true
            push(ch, msg)
            sent = sent + 1
            break
          end
        end
      end
    end
  end
  out[#out + 1] = sent
  i = u + 1 + nusers
end
for _, ch in ipairs(order) do publish(ch) end
return out
`);

/** Most notifications in one script call (it blocks Redis while it runs: ~5 µs of Redis per entry). */
const MAX_BATCH = 256;
/** Most argument bytes in one script call. */
const MAX_BATCH_BYTES = 1 << 20;
/** Notifications gathered during a call that are enough to send at once, without lingering for more. */
const LINGER_ENOUGH = 32;

interface Queued {
  item: OutgoingNotification;
  resolve: (o: PublishOutcome) => void;
  reject: (e: Error) => void;
}

export interface BatchPublisherOptions {
  redis: Redis;
  /** The nodes zset key. */
  nodesKey: string;
  /** Prefix of the per-node channels (`<prefix>node:`). */
  nodePrefix: string;
  nodeId: string;
  presenceTtlMs: number;
  /**
   * How long notifications that gathered while a call was in flight may wait for more before the next
   * call (CLUSTER_PUBLISH_LINGER), counted from the first of them; 0 sends them as soon as the call is
   * answered. A lone notification never waits.
   * @default 0
   */
  lingerMs?: number;
}

/**
 * Collects the notifications a node publishes during one turn of the event loop (every HTTP request and
 * in-process producer of that turn) and sends them in one script call: history appends, online-set
 * lookups and publishes of the whole batch cost one command on this node and one message per receiving
 * node and channel, instead of one each per notification. The batch leaves in the check phase
 * (`setImmediate`), after all the I/O callbacks of the turn, so a lone notification waits for nothing.
 * While a call is in flight, notifications gather and leave together when it is answered (a full batch
 * leaves at once): under load each call carries the notifications of several turns, which costs the
 * node ~120 µs of CPU per call (command, write, wake-up, reply) and the receiving nodes one message
 * per channel instead of one per turn; the wait is at most one Redis round trip.
 *
 * Under sustained load those batches stay small (4-5 notifications per call on a 3-node bench): the call
 * is answered within a fraction of a millisecond, and each call costs a write and a wake-up of Redis, a
 * reply, and a published message and a wake-up on every receiving node. So what gathered during a call
 * may linger (`lingerMs`, from the first of it) for more before it leaves, unless it is already
 * LINGER_ENOUGH: with 1 ms, 5.4-5.8 notifications per call and the cluster's CPU per targeted
 * notification 8-13 % lower (BENCHMARKS.md, nineteenth session), for at most 1 ms more of latency, and
 * only for notifications published while another call was in flight (that is, under load).
 */
export class BatchPublisher {
  private queue: Queued[] = [];
  private bytes = 0;
  /** When the first notification of the queue came (performance.now()). */
  private queuedAt = 0;
  private scheduled = false;
  private lingering: NodeJS.Timeout | undefined;
  /** Script calls sent and not yet answered. */
  private inFlight = 0;
  private readonly batchHead: string;
  /** Script calls made, and notifications they carried (for tests and metrics). */
  readonly stats = { calls: 0, notifications: 0 };

  constructor(private readonly opts: BatchPublisherOptions) {
    this.batchHead = `{"v":1,"t":"batch","node":${JSON.stringify(opts.nodeId)},"ms":[`;
  }

  publish(item: OutgoingNotification): Promise<PublishOutcome> {
    return new Promise((resolve, reject) => {
      if (this.queue.length === 0) this.queuedAt = performance.now();
      this.queue.push({ item, resolve, reject });
      this.bytes += item.head.length + item.entry.length + 64;
      if (this.queue.length >= MAX_BATCH || this.bytes >= MAX_BATCH_BYTES) {
        this.flush();
      } else if (this.inFlight === 0) {
        this.schedule();
      }
      // Else the answer to the call in flight sends what gathered meanwhile.
    });
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  /**
   * A call answered: what gathered while it was in flight leaves together, after this turn's I/O, or
   * when it has lingered `lingerMs` since the first of it came (unless it is enough already).
   */
  private settled(): void {
    this.inFlight--;
    if (this.inFlight !== 0 || this.queue.length === 0 || this.scheduled) return;
    const wait = (this.opts.lingerMs ?? 0) - (performance.now() - this.queuedAt);
    if (wait < 0.5 || this.queue.length >= LINGER_ENOUGH) {
      this.schedule();
      return;
    }
    this.scheduled = true;
    this.lingering = setTimeout(() => {
      this.lingering = undefined;
      this.scheduled = false;
      this.flush();
    }, wait);
  }

  private flush(): void {
    const batch = this.queue;
    if (batch.length === 0) return;
    if (this.lingering !== undefined) {
      // Full before its time: the linger has nothing left to send.
      clearTimeout(this.lingering);
      this.lingering = undefined;
      this.scheduled = false;
    }
    this.queue = [];
    this.bytes = 0;
    this.inFlight++;
    const { opts } = this;
    const args: string[] = [
      opts.nodesKey,
      String(opts.presenceTtlMs),
      opts.nodeId,
      opts.nodePrefix,
      newEpoch(),
      String(Date.now()),
      this.batchHead,
      String(batch.length),
    ];
    for (const { item } of batch) {
      args.push(
        item.mode,
        item.channel,
        item.onlinePrefix,
        item.head,
        item.base,
        item.entry,
        String(item.triples.length / 3),
      );
      for (const t of item.triples) args.push(String(t));
      if (item.mode === 'route') {
        args.push(String(item.users.length));
        for (const u of item.users) args.push(u);
      } else args.push('0');
    }
    this.stats.calls++;
    this.stats.notifications += batch.length;
    // One command written at once: no other command needs an order with it (history reads see what a
    // call appended once it is answered, as before).
    PUBLISH_BATCH_SCRIPT.call(opts.redis, 0, args).then(
      (res) => {
        this.settled();
        const flat = res as unknown[];
        let at = 0;
        for (const q of batch) {
          const n = (q.item.triples.length / 3) * 2;
          const positions = flat.slice(at, at + n);
          at += n;
          q.resolve({ positions, routedNodes: Number(flat[at++]) });
        }
      },
      (err: Error) => {
        this.settled();
        for (const q of batch) q.reject(err);
      },
    );
  }
}
