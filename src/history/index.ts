import { randomUUID } from 'node:crypto';
import { HeraldError } from '../errors.js';
import { streamsOf } from '../router/index.js';
import { type Notification, setPosition } from '../router/types.js';
import { EntryArena } from './arena.js';

export interface StreamPosition {
  offset: number;
  epoch: string;
}

export interface RecoveryResult {
  /** True when every notification after the given position was still held, in the same epoch. */
  recovered: boolean;
  /** The stream's current position (for the client to continue from). */
  offset: number;
  epoch: string;
  /** Missed notifications, oldest first (as many as are still held, also when not recovered). */
  entries: Notification[];
}

/** How much history one stream keeps. `size: 0` keeps none (no offsets either). */
export interface HistoryRule {
  appId?: string;
  /** Stream prefix, e.g. `t:chat:` (topics starting with chat:), `u:` (all users), `d:`, `b`. */
  prefix?: string;
  size: number;
  ttlMs: number;
}

/**
 * Per-stream history for recovery after a reconnect: every notification appended to a stream gets the
 * next offset; the stream's epoch changes when its history is lost (restart of a single node, Redis
 * data loss), so a client can tell "nothing missed" from "cannot know".
 */
export interface History {
  /** Assigns offsets in each stream of `n` (sets `n.pos`) and stores it. */
  append(n: Notification): Promise<void>;
  /** `append`, done before it returns, by a history that can (in memory). */
  appendNow?(n: Notification): void;
  /** What a client at `from` missed in a stream. */
  since(appId: string, stream: string, from: StreamPosition): Promise<RecoveryResult>;
  /** The stream's current position (a client that starts following it now starts here). */
  position(appId: string, stream: string): Promise<StreamPosition | undefined>;
  close(): Promise<void>;
}

/**
 * A new random epoch (8 hex digits). Taken from `randomUUID`, which draws from a cached entropy pool:
 * the cluster passes a candidate with every append, and `randomBytes` costs a call into OpenSSL each time.
 */
export const newEpoch = (): string => randomUUID().slice(0, 8);

/** Picks the first matching rule, else the defaults. */
export class HistoryPolicy {
  /** What each rule and the defaults answer, made once (`for` runs for every stream of every notification). */
  private readonly answers: readonly { readonly size: number; readonly ttlMs: number }[];
  private readonly defaults: { readonly size: number; readonly ttlMs: number };

  constructor(
    private readonly rules: readonly HistoryRule[],
    private readonly size: number,
    private readonly ttlMs: number,
  ) {
    this.answers = rules.map((r) => Object.freeze({ size: r.size, ttlMs: r.ttlMs }));
    this.defaults = Object.freeze({ size, ttlMs });
  }

  for(appId: string, stream: string): { readonly size: number; readonly ttlMs: number } {
    const rules = this.rules;
    for (let i = 0; i < rules.length; i++) {
      const r = rules[i] as HistoryRule;
      if (r.appId !== undefined && r.appId !== appId) continue;
      if (r.prefix !== undefined && !stream.startsWith(r.prefix)) continue;
      return this.answers[i] as { size: number; ttlMs: number };
    }
    return this.defaults;
  }

  enabled(): boolean {
    return this.size > 0 || this.rules.some((r) => r.size > 0);
  }
}

/**
 * A stream: its epoch, the offset of its last notification, and the notifications it holds, oldest first,
 * as positions in the EntryArena. What the arena keeps of a notification is what a replay sends (`id`,
 * `ts`, `data`, `ack`), one record shared by its entries in every stream; not its targets nor its
 * positions, of no use to a replay, whose stream and offset the entry knows. Offsets in a stream are
 * consecutive and entries leave only from the front, so `kept[i]` has the offset
 * `offset - kept.length + 1 + i`: no object per entry (a node holds up to HISTORY_MAX_ENTRIES of them, and
 * as many dropped ones waiting in the global order, which the GC would walk at every major collection).
 * An entry's age is its notification's `ts`.
 */
interface Stream {
  /**
   * The stream's name, kept to name it in `Notification.pos`: a name made anew for each notification
   * (`u:<user>`) would be looked up in V8's string table every time it is used as a key; this one once.
   */
  readonly key: string;
  epoch: string;
  offset: number;
  /** Positions in the EntryArena. */
  kept: number[];
  touched: number;
}

/** The offset of a stream's oldest held entry (its next offset when it holds none). */
const firstOffset = (s: Stream): number => s.offset - s.kept.length + 1;

/** A kept notification as a replay through `stream` sends it. */
function replayOf(
  e: { id: string; ts: number; data: string; ack: boolean },
  appId: string,
  offset: number,
  stream: string,
  epoch: string,
): Notification {
  const n: Notification = { v: 1, id: e.id, appId, ts: e.ts, data: e.data };
  setPosition(n, stream, [offset, epoch]);
  if (e.ack) n.ack = true;
  return n;
}

/** Longest slice of an arena compaction in one turn of the event loop. */
const COMPACT_SLICE_MS = 2;

/** How long an idle stream keeps its offset and epoch after its entries expired. */
const META_TTL_MS = 3_600_000;

export interface MemoryHistoryLimits {
  /** Entries kept over all streams; past it the globally oldest go first. */
  maxEntries: number;
  /** Bytes of entries kept over all streams (EntryArena records); past it the globally oldest go first. */
  maxBytes: number;
  /** Streams (offset and epoch) kept; past it the oldest-created are forgotten by the sweep. */
  maxStreams: number;
  /**
   * Whether a socket of this node follows a stream now (the router: a topic's subscribers, a user's or
   * a device's sockets, any socket of the app for `b`). A notification starts a new stream only when it
   * has a follower; by default every stream is followed.
   */
  follows: (appId: string, stream: string) => boolean;
}

/**
 * Single-node history, in memory. A restart starts new epochs, so clients learn they cannot recover.
 * Memory is bounded whatever the traffic: per stream by the policy (size, TTL), over all streams by
 * `maxEntries` and `maxBytes` (a global append order; the oldest entry of all is its stream's oldest, so
 * eviction drops from the front of one stream) and `maxStreams` (per-order or per-user topics create streams
 * without end; an idle stream is forgotten after an hour, or sooner when there are too many).
 *
 * Only streams someone can recover are kept. A client holds a position in a stream only if the stream
 * existed when it got it: from `recover` (which creates the stream) or from a live notification that
 * reached it through the stream (so the stream had a follower when the notification came, and the
 * notification created it). A notification whose stream does not exist and has no follower (an order's
 * status topic nobody watches, a user never connected) is therefore not kept in it and carries no
 * position for it: nobody could ever ask for it. Without this, every order of the payments pipeline left
 * a stream and its entries (125,000 streams, a third of the entries, after 150 s at 3,000 events/s).
 */
export class MemoryHistory implements History {
  private readonly apps = new Map<string, Map<string, Stream>>();
  private readonly sweeper: NodeJS.Timeout;
  /**
   * Every entry in append order, from `head`, as (stream, offset) in two parallel arrays; an entry is
   * dead once its stream no longer holds that offset (size, TTL, eviction, stream forgotten). Dead ones
   * are skipped and compacted away.
   */
  private order: Stream[] = [];
  private orderOffsets: number[] = [];
  private head = 0;
  private live = 0;
  private streams = 0;
  /** The entries' bytes, outside the V8 heap. */
  private readonly arena = new EntryArena();
  /** The arena compaction under way: the segments it empties and how far it got in the global order. */
  private compaction: { sparse: Set<number>; at: number } | undefined;
  private compactionScheduled = false;
  private closed = false;
  /** Arena compactions completed. */
  compactions = 0;
  private readonly limits: MemoryHistoryLimits;
  /** Entries and streams dropped because a global limit was reached (not by size or TTL). */
  readonly evicted = { entries: 0, streams: 0 };

  constructor(
    private readonly policy: HistoryPolicy,
    limits: Partial<MemoryHistoryLimits> = {},
  ) {
    this.limits = {
      maxEntries: 200_000,
      maxBytes: 256 * 1024 * 1024,
      maxStreams: 200_000,
      follows: () => true,
      ...limits,
    };
    this.sweeper = setInterval(() => this.sweep(), 30_000);
    this.sweeper.unref();
  }

  /** Entries and streams held now. */
  get size(): { entries: number; streams: number } {
    return { entries: this.live, streams: this.streams };
  }

  /** Bytes of the entries held (`live`) and of the memory holding them (`held`, whole segments). */
  get bytes(): { live: number; held: number } {
    return { live: this.arena.liveBytes, held: this.arena.heldBytes };
  }

  private stream(appId: string, key: string, create: boolean): Stream | undefined {
    let app = this.apps.get(appId);
    if (!app) {
      if (!create) return undefined;
      app = new Map();
      this.apps.set(appId, app);
    }
    let s = app.get(key);
    if (!s && create) {
      // A flood of new streams does not wait for the sweep (amortized: at most once per max/2 new).
      if (this.streams >= this.limits.maxStreams * 1.5) this.sweep();
      s = { key, epoch: newEpoch(), offset: 0, kept: [], touched: Date.now() };
      if (!this.apps.has(appId)) this.apps.set(appId, app);
      app.set(key, s);
      this.streams++;
    }
    return s;
  }

  /** Removes the first `count` entries of a stream. */
  private drop(s: Stream, count: number): void {
    for (let i = 0; i < count; i++) this.arena.free(s.kept[i] as number);
    s.kept.splice(0, count);
    this.live -= count;
  }

  /** Whether the entry at `i` of the global order is still held by its stream. */
  private held(i: number): boolean {
    const s = this.order[i] as Stream;
    return s.kept.length > 0 && (this.orderOffsets[i] as number) >= firstOffset(s);
  }

  async append(n: Notification): Promise<void> {
    this.appendNow(n);
  }

  appendNow(n: Notification): void {
    const now = Date.now();
    let kept: number | undefined;
    for (const key of streamsOf(n)) {
      const { size, ttlMs } = this.policy.for(n.appId, key);
      if (size <= 0) continue;
      const s =
        this.stream(n.appId, key, false) ??
        (this.limits.follows(n.appId, key) ? (this.stream(n.appId, key, true) as Stream) : undefined);
      if (!s) continue;
      s.offset++;
      s.touched = now;
      // The record is stored once, held by this loop until its end (see below) and by each stream.
      kept ??= this.arena.append(n.id, n.ts, n.data, n.ack === true);
      this.arena.retain(kept);
      s.kept.push(kept);
      this.order.push(s);
      this.orderOffsets.push(s.offset);
      this.live++;
      const cutoff = now - ttlMs;
      let drop = Math.max(0, s.kept.length - size);
      while (drop < s.kept.length && this.arena.ts(s.kept[drop] as number) < cutoff) drop++;
      if (drop > 0) this.drop(s, drop);
      setPosition(n, s.key, [s.offset, s.epoch]);
    }
    // The loop's own hold: a notification older than a stream's TTL (an outbox publishing it again) is
    // dropped by that stream at once, and must stay stored for the next stream all the same.
    if (kept !== undefined) this.arena.free(kept);
    const arena = this.arena;
    const { maxEntries, maxBytes } = this.limits;
    while ((this.live > maxEntries || arena.liveBytes > maxBytes) && this.head < this.order.length) {
      const i = this.head++;
      if (!this.held(i)) continue;
      // The oldest live entry of all is the oldest of its stream.
      this.drop(this.order[i] as Stream, 1);
      this.evicted.entries++;
    }
    this.compact();
  }

  /** Keeps the global order from holding more dead entries than live ones. */
  private compact(): void {
    const held = this.order.length - this.head;
    if (this.head > 4096 && this.head * 2 > this.order.length) {
      this.order = this.order.slice(this.head);
      this.orderOffsets = this.orderOffsets.slice(this.head);
      if (this.compaction) this.compaction.at = Math.max(0, this.compaction.at - this.head);
      this.head = 0;
    }
    if (held > 2 * this.live + 4096) {
      // An arena compaction under way starts its walk again (the indexes change); what it moved stays moved.
      if (this.compaction) this.compaction.at = 0;
      const order: Stream[] = [];
      const offsets: number[] = [];
      for (let i = this.head; i < this.order.length; i++) {
        if (!this.held(i)) continue;
        order.push(this.order[i] as Stream);
        offsets.push(this.orderOffsets[i] as number);
      }
      this.order = order;
      this.orderOffsets = offsets;
      this.head = 0;
    }
    if (this.compaction === undefined && this.arena.fragmented()) this.startCompaction();
  }

  /**
   * Moves the live entries of the arena's sparse segments (a few long-lived entries amid dropped ones) to
   * its current segment, so that those segments are given back. Found through the global order, where
   * each live entry is once per stream holding it; walked COMPACT_SLICE_MS at a time in turns of the
   * event loop of their own (a walk of 200,000 entries that moves tens of MB took 170 ms in one go).
   */
  private startCompaction(): void {
    const sparse = this.arena.sparse();
    if (sparse.size === 0) return;
    this.compaction = { sparse, at: this.head };
    this.scheduleCompaction();
  }

  private scheduleCompaction(): void {
    if (this.compactionScheduled || this.closed) return;
    this.compactionScheduled = true;
    setImmediate(() => {
      this.compactionScheduled = false;
      this.compactStep();
    });
  }

  /** One slice of the compaction under way; true once it is done (or there is none). */
  compactStep(budgetMs = COMPACT_SLICE_MS): boolean {
    const c = this.compaction;
    if (!c || this.closed) return true;
    const deadline = performance.now() + budgetMs;
    // Copies made in this slice, so that a record held by several streams is copied once. Not kept
    // across slices: a copy may be dropped in between and its place written again.
    const moved = new Map<number, number>();
    let i = Math.max(c.at, this.head);
    while (i < this.order.length) {
      const end = Math.min(this.order.length, i + 128);
      for (; i < end; i++) {
        if (!this.held(i)) continue;
        const s = this.order[i] as Stream;
        const k = (this.orderOffsets[i] as number) - firstOffset(s);
        const pos = s.kept[k] as number;
        if (c.sparse.has(this.arena.segmentOf(pos))) s.kept[k] = this.arena.move(pos, moved);
      }
      if (performance.now() >= deadline) break;
    }
    c.at = i;
    if (i < this.order.length) {
      this.scheduleCompaction();
      return false;
    }
    this.compaction = undefined;
    this.compactions++;
    // Still fragmented (entries dropped meanwhile): another pass over the segments sparse now.
    if (this.arena.fragmented()) this.startCompaction();
    return this.compaction === undefined;
  }

  /** Whether an arena compaction is under way. */
  get compacting(): boolean {
    return this.compaction !== undefined;
  }

  async since(appId: string, key: string, from: StreamPosition): Promise<RecoveryResult> {
    const s = this.stream(appId, key, false);
    if (!s) {
      // Never seen (or forgotten): a client that saw nothing has missed nothing.
      const fresh = this.stream(appId, key, this.policy.for(appId, key).size > 0);
      const epoch = fresh?.epoch ?? '';
      return { recovered: from.offset === 0, offset: 0, epoch, entries: [] };
    }
    const { ttlMs } = this.policy.for(appId, key);
    const cutoff = Date.now() - ttlMs;
    const base = firstOffset(s);
    // Entries after `from` that are not past their TTL (the sweep may not have dropped them yet).
    let at = Math.max(0, from.offset + 1 - base);
    while (at < s.kept.length && this.arena.ts(s.kept[at] as number) < cutoff) at++;
    const live = s.kept.slice(at);
    const sameEpoch = from.epoch === s.epoch || (from.offset === 0 && from.epoch === '');
    const contiguous = from.offset >= s.offset || (live.length > 0 && base + at === from.offset + 1);
    return {
      recovered: sameEpoch && contiguous,
      offset: s.offset,
      epoch: s.epoch,
      // Each replayed notification with its position in this stream (what its live delivery carried).
      entries: sameEpoch
        ? live.map((p, i) => replayOf(this.arena.read(p), appId, base + at + i, key, s.epoch))
        : [],
    };
  }

  async position(appId: string, key: string): Promise<StreamPosition | undefined> {
    if (this.policy.for(appId, key).size <= 0) return undefined;
    const s = this.stream(appId, key, true) as Stream;
    return { offset: s.offset, epoch: s.epoch };
  }

  /** Drops expired entries and idle streams, then the oldest-created streams past maxStreams. */
  sweep(now = Date.now()): void {
    for (const [appId, app] of this.apps) {
      for (const [key, s] of app) {
        const cutoff = now - this.policy.for(appId, key).ttlMs;
        let drop = 0;
        while (drop < s.kept.length && this.arena.ts(s.kept[drop] as number) < cutoff) drop++;
        if (drop) this.drop(s, drop);
        if (s.kept.length === 0 && now - s.touched > META_TTL_MS) {
          app.delete(key);
          this.streams--;
        }
      }
      if (app.size === 0) this.apps.delete(appId);
    }
    // Too many streams: forget the oldest-created, idle (no entries) ones first, then any.
    for (const idleOnly of [true, false]) {
      for (const [appId, app] of this.apps) {
        if (this.streams <= this.limits.maxStreams) break;
        for (const [key, s] of app) {
          if (this.streams <= this.limits.maxStreams) break;
          if (idleOnly && s.kept.length > 0) continue;
          if (s.kept.length > 0) this.drop(s, s.kept.length);
          app.delete(key);
          this.streams--;
          this.evicted.streams++;
        }
        if (app.size === 0) this.apps.delete(appId);
      }
    }
    this.compact();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.compaction = undefined;
    clearInterval(this.sweeper);
  }
}

/** No history: notifications carry no offsets and recovery always reports `recovered: false`. */
export class NoHistory implements History {
  async append(): Promise<void> {}
  appendNow(): void {}
  async since(): Promise<RecoveryResult> {
    return { recovered: false, offset: 0, epoch: '', entries: [] };
  }
  async position(): Promise<StreamPosition | undefined> {
    return undefined;
  }
  async close(): Promise<void> {}
}

/** Parses HISTORY_RULES (JSON list of { appId?, prefix?, size, ttl }). */
export function parseHistoryRules(raw: unknown, parseTtl: (v: unknown) => number | undefined): HistoryRule[] {
  if (raw === undefined || raw === null || raw === '') return [];
  let list: unknown = raw;
  if (typeof raw === 'string') {
    try {
      list = JSON.parse(raw);
    } catch {
      throw new HeraldError(
        'validation_failed',
        'HISTORY_RULES must be JSON: [{"prefix":"t:chat:","size":100,"ttl":"2m"}]',
      );
    }
  }
  if (!Array.isArray(list)) throw new HeraldError('validation_failed', 'HISTORY_RULES must be a list');
  return list.map((r: unknown, i: number) => {
    const o = r as Record<string, unknown>;
    const size = o?.size;
    const ttlMs = parseTtl(o?.ttl);
    if (
      typeof size !== 'number' ||
      !Number.isInteger(size) ||
      size < 0 ||
      size > 100_000 ||
      ttlMs === undefined
    ) {
      throw new HeraldError(
        'validation_failed',
        `HISTORY_RULES[${i}] needs size (0-100000) and ttl (a duration)`,
      );
    }
    const rule: HistoryRule = { size, ttlMs };
    if (typeof o.appId === 'string') rule.appId = o.appId;
    if (typeof o.prefix === 'string') rule.prefix = o.prefix;
    return rule;
  });
}
