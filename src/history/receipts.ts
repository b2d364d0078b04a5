import type { Redis } from 'ioredis';
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

export class MemoryReceipts implements Receipts {
  private readonly items = new Map<string, ReceiptReport & { expires: number; seen: Set<string> }>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly ttlMs: number) {
    this.sweeper = setInterval(() => {
      const now = Date.now();
      for (const [id, it] of this.items) if (it.expires < now) this.items.delete(id);
    }, 60_000);
    this.sweeper.unref();
  }

  async expect(n: Notification): Promise<void> {
    this.items.set(n.id, {
      id: n.id,
      appId: n.appId,
      ts: n.ts,
      receipts: [],
      expires: Date.now() + this.ttlMs,
      seen: new Set(),
    });
  }

  async record(appId: string, id: string, r: Receipt): Promise<boolean> {
    const it = this.items.get(id);
    if (!it || it.appId !== appId || it.expires < Date.now()) return false;
    const k = deviceKey(r);
    if (!it.seen.has(k)) {
      it.seen.add(k);
      it.receipts.push(r);
    }
    return true;
  }

  async get(id: string): Promise<ReceiptReport | undefined> {
    const it = this.items.get(id);
    if (!it || it.expires < Date.now()) return undefined;
    return { id: it.id, appId: it.appId, ts: it.ts, receipts: [...it.receipts] };
  }

  close(): void {
    clearInterval(this.sweeper);
  }
}

/** Receipts in Redis: a client may acknowledge on any node and the report is read on any other. */
export class RedisReceipts implements Receipts {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly ttlMs: number,
  ) {}

  private key(id: string): string {
    return `${this.prefix}rc:${id}`;
  }

  async expect(n: Notification): Promise<void> {
    await this.redis
      .multi()
      .hset(this.key(n.id), '_', JSON.stringify({ appId: n.appId, ts: n.ts }))
      .pexpire(this.key(n.id), this.ttlMs)
      .exec();
  }

  async record(appId: string, id: string, r: Receipt): Promise<boolean> {
    const head = await this.redis.hget(this.key(id), '_');
    if (!head || (JSON.parse(head) as { appId: string }).appId !== appId) return false;
    await this.redis.hsetnx(this.key(id), deviceKey(r), JSON.stringify(r));
    return true;
  }

  async get(id: string): Promise<ReceiptReport | undefined> {
    const all = await this.redis.hgetall(this.key(id));
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
