import type { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { Script } from '../bus/script.js';
import { HeraldError } from '../errors.js';
import type { Notification } from '../router/types.js';

export interface Receipt {
  clientId: string;
  deviceId: string | null;
  /** When the client acknowledged, ms since the epoch. */
  at: number;
}

export interface ReceiptReport {
  id: string;
  appId: string;
  ts: number;
  receipts: Receipt[];
  /** Client+device keys of `receipts`, built once there are more than a few (a broadcast's). */
  seen?: Set<string>;
}

/**
 * Delivery receipts of notifications sent with `ack: true`: each receiving client acknowledges once
 * per device (`receipt` event); `GET /notify/:id` lists who received it and when.
 */
export interface Receipts {
  /** Remembers a notification that asks for receipts. */
  expect(n: Notification): Promise<void>;
  /** Records one client's receipt; false when the id is unknown, expired or of another app. */
  record(appId: string, id: string, r: Receipt): Promise<boolean>;
  get(id: string): Promise<ReceiptReport | undefined>;
}

const deviceKey = (r: Receipt) => `${r.clientId}\u0000${r.deviceId ?? ''}`;

/**
 * A notification waiting for receipts. A node holds up to RECEIPT_MAX of them for RECEIPT_TTL, so each
 * is kept small: it expires `ttlMs` after its `ts` (no time of its own: one heap number less), and its
 * list of receipts is made by the first receipt.
 */
interface Held {
  appId: string;
  ts: number;
  receipts?: Receipt[];
  /** Client+device keys of `receipts`, built once there are more than a few (a broadcast's). */
  seen?: Set<string>;
}

/**
 * Receipts on one node, in memory, bounded twice: each expires after `ttlMs`, and at most `max`
 * notifications are held (the oldest go first). Every entry lives as long (same TTL) from its `ts`, taken
 * just before it is expected, and lookups do not reorder (`peek`), so insertion order is also expiry
 * order: eviction and the sweep only ever look at the oldest end.
 *
 * An LRU list, not a Map's insertion order: taking a Map's first key skips the slots of every key
 * deleted before it until V8 rehashes the table, so a full Map that drops its oldest at each insert
 * spent ~40 µs per notification at 200,000 held (`npm run bench -- payments --seconds 150`: 40 % of
 * the node's main thread after two minutes, p99 254 ms).
 */
export class MemoryReceipts implements Receipts {
  private readonly items: LRUCache<string, Held>;
  private readonly sweeper: NodeJS.Timeout;
  /** Notifications forgotten before their TTL because `max` was reached. */
  evicted = 0;

  constructor(
    private readonly ttlMs: number,
    max = 200_000,
  ) {
    this.items = new LRUCache<string, Held>({
      max,
      dispose: (_value, _key, reason) => {
        if (reason === 'evict') this.evicted++;
      },
    });
    this.sweeper = setInterval(() => this.sweep(), Math.min(60_000, Math.max(1000, ttlMs)));
    this.sweeper.unref();
  }

  get size(): number {
    return this.items.size;
  }

  sweep(now = Date.now()): void {
    const expired: string[] = [];
    for (const id of this.items.rkeys()) {
      const it = this.items.peek(id);
      if (it && it.ts + this.ttlMs >= now) break;
      expired.push(id);
    }
    for (const id of expired) this.items.delete(id);
  }

  async expect(n: Notification): Promise<void> {
    // A re-published notification (same id) starts again at the newest end.
    this.items.delete(n.id);
    this.items.set(n.id, { appId: n.appId, ts: n.ts });
  }

  async record(appId: string, id: string, r: Receipt): Promise<boolean> {
    const it = this.items.peek(id);
    if (!it || it.appId !== appId || it.ts + this.ttlMs < Date.now()) return false;
    // One receipt per client and device. Most notifications get a handful: a scan, and no Set per entry.
    const k = deviceKey(r);
    if (!it.receipts) it.receipts = [];
    const list = it.receipts;
    if (it.seen === undefined && list.length >= 8) it.seen = new Set(list.map(deviceKey));
    if (it.seen ? it.seen.has(k) : list.some((x) => deviceKey(x) === k)) return true;
    list.push(r);
    it.seen?.add(k);
    return true;
  }

  async get(id: string): Promise<ReceiptReport | undefined> {
    const it = this.items.peek(id);
    if (!it || it.ts + this.ttlMs < Date.now()) return undefined;
    return { id, appId: it.appId, ts: it.ts, receipts: it.receipts ? [...it.receipts] : [] };
  }

  close(): void {
    clearInterval(this.sweeper);
  }
}

/**
 * Records a receipt only while the notification's head (`_`, JSON with its appId) is there, in one
 * step: read-then-write as two commands let a key that expired in between be created again, without
 * its head and without a TTL, and stay in Redis for good.
 */
const RECORD_SCRIPT = new Script(`
local head = redis.call('HGET', KEYS[1], '_')
if not head then return 0 end
local ok, h = pcall(cjson.decode, head)
if not ok or type(h) ~= 'table' or h.appId ~= ARGV[1] then return 0 end
redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
return 1
`);

/**
 * Receipts in Redis: a client may acknowledge on any node and the report is read on any other.
 *
 * While Redis is away a notification that asks for receipts is still sent (a receipt is about a
 * delivery, and the delivery to this node's sockets goes on without Redis): `expect` then resolves
 * without remembering it, so its receipts cannot be recorded and `GET /notify/:id` does not know it.
 */
export class RedisReceipts implements Receipts {
  /** Notifications sent with `ack: true` that could not be remembered because Redis was away. */
  unrecorded = 0;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly ttlMs: number,
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {}

  private key(id: string): string {
    return `${this.prefix}rc:${id}`;
  }

  async expect(n: Notification): Promise<void> {
    try {
      await this.redis
        .multi()
        .hset(this.key(n.id), '_', JSON.stringify({ appId: n.appId, ts: n.ts }))
        .pexpire(this.key(n.id), this.ttlMs)
        .exec();
    } catch (err) {
      this.unrecorded++;
      this.onError(err);
    }
  }

  async record(appId: string, id: string, r: Receipt): Promise<boolean> {
    const done = await RECORD_SCRIPT.run(this.redis, 1, this.key(id), appId, deviceKey(r), JSON.stringify(r));
    return done === 1;
  }

  async get(id: string): Promise<ReceiptReport | undefined> {
    let all: Record<string, string>;
    try {
      all = await this.redis.hgetall(this.key(id));
    } catch {
      // Retryable, and not the server's fault: 503 rather than an internal error.
      throw new HeraldError(
        'store_unavailable',
        'Receipts are kept in Redis, which cannot be reached; retry later.',
      );
    }
    const head = all._;
    if (!head) return undefined;
    const { appId, ts } = JSON.parse(head) as { appId: string; ts: number };
    const receipts = Object.entries(all)
      .filter(([k]) => k !== '_')
      .map(([, v]) => JSON.parse(v) as Receipt)
      .sort((a, b) => a.at - b.at);
    return { id, appId, ts, receipts };
  }
}
