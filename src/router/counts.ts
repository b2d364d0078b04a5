import { encodeEvent } from './frame.js';
import type { Conn, TopicCount } from './types.js';

/** Where counts come from: this node alone, or the whole cluster. */
export interface CountSource {
  get(appId: string, topic: string): TopicCount | Promise<TopicCount>;
}

export interface CountUpdate {
  type: 'count';
  topic: string;
  count: number;
  connections: number;
}

/** Encodes the `dataUpdate` a watcher receives for a count. */
export function encodeCount(appId: string, topic: string, c: TopicCount) {
  const data: CountUpdate = { type: 'count', topic, count: c.count, connections: c.connections };
  return encodeEvent(appId, 'dataUpdate', [JSON.stringify(data), JSON.stringify({ ts: Date.now(), topic })]);
}

interface Pending {
  timer: NodeJS.Timeout | undefined;
  lastSent: number;
  dirty: boolean;
}

/**
 * Sends count changes to watchers, coalesced to at most one update per topic per `interval`. The
 * update always carries the value read when it is sent, so the last value a watcher gets is the
 * true one. Changes within one tick are always merged.
 */
export class CountNotifier {
  private readonly pending = new Map<string, Pending>();
  private closed = false;

  constructor(
    private readonly source: CountSource,
    private readonly watchersOf: (appId: string, topic: string) => ReadonlySet<Conn>,
    private readonly interval: number,
    private readonly onError: (err: unknown) => void,
    private readonly onSent: (n: number) => void = () => undefined,
  ) {}

  /** A topic's subscribers changed (here or on another node). */
  changed(appId: string, topic: string): void {
    if (this.closed || this.watchersOf(appId, topic).size === 0) return;
    const key = `${appId}\u0000${topic}`;
    let p = this.pending.get(key);
    if (!p) {
      p = { timer: undefined, lastSent: 0, dirty: false };
      this.pending.set(key, p);
    }
    p.dirty = true;
    if (p.timer) return;
    const wait = Math.max(0, p.lastSent + this.interval - Date.now());
    const entry = p;
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      void this.flush(appId, topic, key, entry);
    }, wait);
  }

  private async flush(appId: string, topic: string, key: string, p: Pending): Promise<void> {
    if (!p.dirty || this.closed) return;
    p.dirty = false;
    p.lastSent = Date.now();
    try {
      const value = await this.source.get(appId, topic);
      const watchers = this.watchersOf(appId, topic);
      if (watchers.size > 0) {
        const frame = encodeCount(appId, topic, value);
        for (const w of watchers) w.write(frame);
        this.onSent(watchers.size);
      }
    } catch (err) {
      this.onError(err);
      p.dirty = true;
    }
    if (p.dirty && !p.timer) {
      // Changed again while reading: schedule the trailing update.
      p.timer = setTimeout(() => {
        p.timer = undefined;
        void this.flush(appId, topic, key, p);
      }, this.interval);
    } else if (!p.timer) {
      // Forget idle topics after one quiet interval so the map does not grow without bound.
      p.timer = setTimeout(() => {
        p.timer = undefined;
        if (p.dirty) void this.flush(appId, topic, key, p);
        else this.pending.delete(key);
      }, this.interval);
    }
  }

  /** Sends the current value to one new watcher at once. */
  async sendCurrent(conn: Conn, topics: readonly string[]): Promise<Record<string, TopicCount>> {
    // No prototype: a topic named `__proto__` is a key like any other.
    const out = Object.create(null) as Record<string, TopicCount>;
    for (const topic of topics) {
      const value = await this.source.get(conn.appId, topic);
      out[topic] = value;
      conn.write(encodeCount(conn.appId, topic, value));
    }
    return out;
  }

  close(): void {
    this.closed = true;
    for (const p of this.pending.values()) if (p.timer) clearTimeout(p.timer);
    this.pending.clear();
  }
}
