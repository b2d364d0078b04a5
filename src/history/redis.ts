import type { Redis } from 'ioredis';
import { Script } from '../bus/script.js';
import { streamsOf } from '../router/index.js';
import { type Notification, setPosition } from '../router/types.js';
import {
  type History,
  type HistoryPolicy,
  newEpoch,
  type RecoveryResult,
  type StreamPosition,
} from './index.js';

/**
 * Lua `append_streams(base, entry, epoch, now, first, count, with_pos)`: appends one notification to
 * `count` streams whose (stream, size, ttlMs) triples start at ARGV[first]. Per stream: the next offset and
 * the epoch (kept in a small hash, created with the candidate `epoch` when missing, e.g. after Redis lost
 * its data), then an entry in a Redis Stream whose id is the offset, trimmed to the stream's size. Returns
 * the flat (offset, epoch) list and, with `with_pos`, the `"stream":[offset,"epoch"]` JSON members.
 * Shared by APPEND_SCRIPT (ARGV: keyPrefix, entry JSON, epoch candidate, now, triples) and the cluster
 * bus, which appends and publishes in one script.
 */
export const APPEND_STREAMS_LUA = `
local function append_streams(base, entry, epoch, now, first, count, with_pos)
  local out, pos = {}, {}
  for k = 0, count - 1 do
    local i = first + k * 3
    local s, size, ttl = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    local meta = base .. s .. '|m'
    local off = redis.call('HINCRBY', meta, 'o', 1)
    local ep = redis.call('HGET', meta, 'e')
    if not ep then
      ep = epoch
      redis.call('HSET', meta, 'e', ep)
    end
    redis.call('PEXPIRE', meta, math.max(ttl * 12, 3600000))
    local sk = base .. s .. '|s'
    redis.call('XADD', sk, 'MAXLEN', size, off .. '-1', 't', now, 'n', entry)
    redis.call('PEXPIRE', sk, ttl)
    out[#out + 1] = off
    out[#out + 1] = ep
    if with_pos then pos[#pos + 1] = cjson.encode(s) .. ':[' .. off .. ',' .. cjson.encode(ep) .. ']' end
  end
  return out, pos
end
`;

const APPEND_SCRIPT = new Script(`${APPEND_STREAMS_LUA}
return (append_streams(ARGV[1], ARGV[2], ARGV[3], ARGV[4], 5, (#ARGV - 4) / 3, false))
`);

/** Cluster history in Redis, so a client recovers on whichever node it reconnects to. */
export class RedisHistory implements History {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly policy: HistoryPolicy,
  ) {}

  private base(appId: string): string {
    return `${this.prefix}h:${appId}|`;
  }

  /**
   * What appending `n` takes: the key base, the entry, and (stream, size, ttlMs) triples of the streams
   * that keep history; `undefined` when none does. Used by `append` and by the cluster bus, which appends
   * and publishes in one script.
   */
  plan(n: Notification): { base: string; entry: string; triples: (string | number)[] } | undefined {
    const triples: (string | number)[] = [];
    for (const key of streamsOf(n)) {
      const { size, ttlMs } = this.policy.for(n.appId, key);
      if (size > 0) triples.push(key, size, ttlMs);
    }
    if (triples.length === 0) return undefined;
    const entry = JSON.stringify({ id: n.id, ts: n.ts, data: n.data, ack: n.ack === true });
    return { base: this.base(n.appId), entry, triples };
  }

  /** Sets `n.pos` from a script's flat (offset, epoch) answer for the planned triples. */
  static applyPositions(
    n: Notification,
    triples: readonly (string | number)[],
    res: readonly unknown[],
  ): void {
    for (let i = 0, k = 0; k < triples.length; i += 2, k += 3) {
      setPosition(n, triples[k] as string, [Number(res[i]), String(res[i + 1])]);
    }
  }

  async append(n: Notification): Promise<void> {
    const plan = this.plan(n);
    if (!plan) return;
    const res = (await APPEND_SCRIPT.run(
      this.redis,
      0,
      plan.base,
      plan.entry,
      newEpoch(),
      Date.now(),
      ...plan.triples,
    )) as (number | string)[];
    RedisHistory.applyPositions(n, plan.triples, res);
  }

  async since(appId: string, key: string, from: StreamPosition): Promise<RecoveryResult> {
    const base = this.base(appId);
    const { ttlMs, size } = this.policy.for(appId, key);
    const meta = await this.redis.hmget(`${base}${key}|m`, 'o', 'e');
    let offset = Number(meta[0] ?? 0);
    let epoch = meta[1] ?? '';
    if (!meta[1]) {
      if (size <= 0) return { recovered: false, offset: 0, epoch: '', entries: [] };
      // Never written (or lost): start the epoch now so the client can follow it from here.
      epoch = newEpoch();
      const created = await this.startEpoch(`${base}${key}|m`, epoch, ttlMs);
      if (!created) epoch = (await this.redis.hget(`${base}${key}|m`, 'e')) ?? epoch;
      offset = 0;
      return { recovered: from.offset === 0, offset, epoch, entries: [] };
    }
    const sameEpoch = from.epoch === epoch || (from.offset === 0 && from.epoch === '');
    if (!sameEpoch) return { recovered: false, offset, epoch, entries: [] };
    if (from.offset >= offset) return { recovered: true, offset, epoch, entries: [] };
    const rows = (await this.redis.xrange(`${base}${key}|s`, `${from.offset + 1}-0`, '+')) as [
      string,
      string[],
    ][];
    const cutoff = Date.now() - ttlMs;
    const entries: { offset: number; n: Notification }[] = [];
    for (const [id, fields] of rows) {
      const f: Record<string, string> = {};
      for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i] as string] = fields[i + 1] as string;
      if (Number(f.t) < cutoff || !f.n) continue;
      const e = JSON.parse(f.n) as { id: string; ts: number; data: string; ack: boolean };
      const n: Notification = { v: 1, id: e.id, appId, ts: e.ts, data: e.data };
      if (e.ack) n.ack = true;
      const off = Number(id.split('-')[0]);
      setPosition(n, key, [off, epoch]);
      entries.push({ offset: off, n });
    }
    const first = entries[0];
    const recovered = first !== undefined && first.offset === from.offset + 1;
    return { recovered, offset, epoch, entries: entries.map((e) => e.n) };
  }

  async position(appId: string, key: string): Promise<StreamPosition | undefined> {
    const { size, ttlMs } = this.policy.for(appId, key);
    if (size <= 0) return undefined;
    const metaKey = `${this.base(appId)}${key}|m`;
    await this.startEpoch(metaKey, newEpoch(), ttlMs);
    const [o, e] = await this.redis.hmget(metaKey, 'o', 'e');
    return { offset: Number(o ?? 0), epoch: e ?? '' };
  }

  /**
   * Starts a stream's epoch if it has none, and gives its meta key the lifetime an append gives it
   * (APPEND_STREAMS_LUA): a stream only ever recovered or asked for its position (every connect and
   * subscribe, any topic name a client sends) would otherwise keep a key in Redis for good.
   * Resolves with whether the epoch was started here.
   */
  private async startEpoch(metaKey: string, epoch: string, ttlMs: number): Promise<boolean> {
    const res = await this.redis
      .multi()
      .hsetnx(metaKey, 'e', epoch)
      .pexpire(metaKey, Math.max(ttlMs * 12, 3_600_000))
      .exec();
    const [err, created] = res?.[0] ?? [new Error('the transaction was discarded'), 0];
    if (err) throw err;
    return Number(created) === 1;
  }

  async close(): Promise<void> {}
}
