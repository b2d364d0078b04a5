import { encodeEvent, type Frame } from './frame.js';
import { type Conn, type Meta, type Notification, positionIn, type TopicCount } from './types.js';

export { encodeEvent, type Frame } from './frame.js';
export type { Conn, Meta, Notification, TopicCount } from './types.js';

/**
 * The sockets of one user, device or topic on this node: the socket itself while there is one, a Set
 * from the second on. Most users, devices and per-order or per-user topics have one socket here; an
 * empty Set and its hash table cost ~150 bytes, which was 1.4 % of a connection's memory each.
 */
type Group = Conn | Set<Conn>;

function groupAdd(g: Group | undefined, conn: Conn): Group {
  if (g === undefined || g === conn) return conn;
  if (g instanceof Set) return g.add(conn);
  return new Set([g, conn]);
}

/** The group without `conn`: undefined when empty, the last socket itself when one is left. */
function groupDelete(g: Group, conn: Conn): Group | undefined {
  if (!(g instanceof Set)) return g === conn ? undefined : g;
  g.delete(conn);
  if (g.size > 1) return g;
  return g.size === 1 ? (g.values().next().value as Conn) : undefined;
}

function groupSize(g: Group | undefined): number {
  return g === undefined ? 0 : g instanceof Set ? g.size : 1;
}

function groupList(g: Group | undefined): Conn[] {
  return g === undefined ? [] : g instanceof Set ? [...g] : [g];
}

function groupHas(g: Group | undefined, conn: Conn): boolean {
  return g instanceof Set ? g.has(conn) : g === conn;
}

function mapAdd<K>(map: Map<K, Group>, key: K, conn: Conn): void {
  const g = map.get(key);
  const next = groupAdd(g, conn);
  if (next !== g) map.set(key, next);
}

function mapDelete<K>(map: Map<K, Group>, key: K, conn: Conn): void {
  const g = map.get(key);
  if (g === undefined) return;
  const next = groupDelete(g, conn);
  if (next === undefined) map.delete(key);
  else if (next !== g) map.set(key, next);
}

interface TopicEntry {
  conns: Group;
  /**
   * clientId -> number of that client's sockets subscribed; made when a second socket subscribes (with
   * one socket, its client is the one client).
   */
  clients: Map<string, number> | undefined;
}

/** Distinct clients subscribed to a topic. */
function clientCount(e: TopicEntry): number {
  return e.clients ? e.clients.size : 1;
}

function clientTally(e: TopicEntry): Map<string, number> {
  return e.clients ?? new Map([[(e.conns as Conn).clientId, 1]]);
}

/** Sockets a fan-out writes in one go; above, it is written in slices across turns (see `runSweeps`). */
const SWEEP_SLICE = 2048;
/** Time budget of one slice (after the first SWEEP_SLICE sockets), checked every SWEEP_CHECK sockets. */
const SWEEP_TURN_MS = 3;
const SWEEP_CHECK = 64;
/** Pending sockets above which a turn writes at least 1/SWEEP_FLOOD_SHARE of them. */
const SWEEP_FLOOD = 65_536;
const SWEEP_FLOOD_SHARE = 8;

/** Everything one node knows about one app's sockets. */
class AppIndex {
  readonly conns = new Set<Conn>();
  readonly users = new Map<string, Group>();
  readonly devices = new Map<string, Group>();
  readonly topics = new Map<string, TopicEntry>();
  readonly watchers = new Map<string, Set<Conn>>();
  subscriptions = 0;
}

/**
 * A pseudo-topic whose subscribers are every connected client of an app: presence uses it to answer
 * "is this user connected anywhere" (offline fallback). Clients cannot name it (control character).
 */
export const ONLINE_TOPIC = '\u0000online';

/** The streams a notification belongs to, for history: `b`, or `t:<topic>`, `u:<user>`, `d:<device>`. */
export function streamsOf(n: Pick<Notification, 'broadcast' | 'topics' | 'users' | 'devices'>): string[] {
  if (n.broadcast) return ['b'];
  const out: string[] = [];
  for (const t of n.topics ?? []) out.push(`t:${t}`);
  for (const u of n.users ?? []) out.push(`u:${u}`);
  for (const d of n.devices ?? []) out.push(`d:${d}`);
  return out;
}

/** The `meta` a socket reached through `stream` receives. */
export function metaFor(
  n: Notification,
  stream: string,
  topic: string | undefined,
  replay = false,
  also?: readonly string[],
): Meta {
  const meta: Meta = { id: n.id, ts: n.ts };
  if (topic !== undefined) meta.topic = topic;
  const pos = positionIn(n, stream);
  if (pos) {
    meta.stream = stream;
    meta.offset = pos[0];
    meta.epoch = pos[1];
  }
  if (n.ack) meta.ack = true;
  if (replay) meta.replay = true;
  if (also && pos) {
    const more: Record<string, [number, string]> = {};
    let any = false;
    for (const s of also) {
      const p = positionIn(n, s);
      if (!p) continue;
      more[s] = [p[0], p[1]];
      any = true;
    }
    if (any) meta.also = more;
  }
  return meta;
}

function addTo<K, V>(map: Map<K, Set<V>>, key: K, value: V): void {
  let set = map.get(key);
  if (!set) {
    set = new Set();
    map.set(key, set);
  }
  set.add(value);
}

function removeFrom<K, V>(map: Map<K, Set<V>>, key: K, value: V): void {
  const set = map.get(key);
  if (!set) return;
  set.delete(value);
  if (set.size === 0) map.delete(key);
}

/** A change of this node's subscribers of one topic. */
export interface TopicChange {
  appId: string;
  topic: string;
  clientId: string;
  /** +1: the client's first local socket joined; -1: its last local socket left; 0: another socket of it. */
  clientDelta: 1 | -1 | 0;
  /** Local sockets subscribed to the topic after the change. */
  connections: number;
}

export interface RouterEvents {
  /** The local subscribers of a topic changed. */
  onTopicChange?: (change: TopicChange) => void;
  /** The first local socket of an app connected. */
  onAppAdded?: (appId: string) => void;
  /** The last local socket of an app left. */
  onAppRemoved?: (appId: string) => void;
}

/**
 * The local router: indexes this node's sockets by app, user, device and topic, and delivers a
 * notification to each matching socket exactly once, encoding it once per distinct `meta`.
 */
export class Router {
  private readonly apps = new Map<string, AppIndex>();
  private readonly events: RouterEvents;

  constructor(events: RouterEvents = {}) {
    this.events = events;
  }

  private app(appId: string): AppIndex {
    let a = this.apps.get(appId);
    if (!a) {
      a = new AppIndex();
      this.apps.set(appId, a);
      this.events.onAppAdded?.(appId);
    }
    return a;
  }

  add(conn: Conn): void {
    const a = this.app(conn.appId);
    a.conns.add(conn);
    const first = !a.users.has(conn.clientId);
    mapAdd(a.users, conn.clientId, conn);
    if (conn.deviceId !== undefined) mapAdd(a.devices, conn.deviceId, conn);
    this.events.onTopicChange?.({
      appId: conn.appId,
      topic: ONLINE_TOPIC,
      clientId: conn.clientId,
      clientDelta: first ? 1 : 0,
      connections: a.conns.size,
    });
  }

  /** Removes a socket and all its subscriptions and watches. */
  remove(conn: Conn): void {
    const a = this.apps.get(conn.appId);
    if (!a?.conns.has(conn)) return;
    this.unsubscribe(conn, [...conn.topics]);
    this.unwatch(conn, [...conn.watches]);
    a.conns.delete(conn);
    mapDelete(a.users, conn.clientId, conn);
    if (conn.deviceId !== undefined) mapDelete(a.devices, conn.deviceId, conn);
    this.events.onTopicChange?.({
      appId: conn.appId,
      topic: ONLINE_TOPIC,
      clientId: conn.clientId,
      clientDelta: a.users.has(conn.clientId) ? 0 : -1,
      connections: a.conns.size,
    });
    if (a.conns.size === 0 && a.topics.size === 0 && a.watchers.size === 0) {
      this.apps.delete(conn.appId);
      this.events.onAppRemoved?.(conn.appId);
    }
  }

  /**
   * Subscribes; returns the topics that were newly subscribed. A socket the router does not hold (it
   * left) subscribes to nothing: Socket.IO runs an event's listeners on the tick after decoding it, so
   * an event that came with its connection's close runs after the removal, and would otherwise leave a
   * subscriber nobody removes (counted forever, and its app's index kept).
   */
  subscribe(conn: Conn, topics: readonly string[]): string[] {
    const a = this.apps.get(conn.appId);
    if (!a?.conns.has(conn)) return [];
    const added: string[] = [];
    const changes: TopicChange[] = [];
    for (const topic of topics) {
      if (conn.topics.has(topic)) continue;
      conn.topics.add(topic);
      let before = 0;
      let e = a.topics.get(topic);
      if (!e) {
        e = { conns: conn, clients: undefined };
        a.topics.set(topic, e);
      } else {
        if (!e.clients) e.clients = new Map([[(e.conns as Conn).clientId, 1]]);
        e.conns = groupAdd(e.conns, conn);
        before = e.clients.get(conn.clientId) ?? 0;
        e.clients.set(conn.clientId, before + 1);
      }
      a.subscriptions++;
      added.push(topic);
      changes.push({
        appId: conn.appId,
        topic,
        clientId: conn.clientId,
        clientDelta: before === 0 ? 1 : 0,
        connections: groupSize(e.conns),
      });
    }
    for (const c of changes) this.events.onTopicChange?.(c);
    return added;
  }

  /** Unsubscribes; returns the topics that were subscribed before. */
  unsubscribe(conn: Conn, topics: readonly string[]): string[] {
    const a = this.apps.get(conn.appId);
    if (!a) return [];
    const removed: string[] = [];
    const changes: TopicChange[] = [];
    for (const topic of topics) {
      if (!conn.topics.delete(topic)) continue;
      const e = a.topics.get(topic);
      let clientDelta: -1 | 0 = 0;
      let connections = 0;
      if (e && groupHas(e.conns, conn)) {
        const left = groupDelete(e.conns, conn);
        if (left === undefined) {
          a.topics.delete(topic);
          clientDelta = -1;
        } else {
          e.conns = left;
          const clients = e.clients as Map<string, number>;
          const n = (clients.get(conn.clientId) ?? 1) - 1;
          if (n <= 0) {
            clients.delete(conn.clientId);
            clientDelta = -1;
          } else clients.set(conn.clientId, n);
          // Back to one socket: its client is the one client, no tally needed.
          if (!(left instanceof Set)) e.clients = undefined;
          connections = groupSize(left);
        }
      }
      a.subscriptions--;
      removed.push(topic);
      changes.push({ appId: conn.appId, topic, clientId: conn.clientId, clientDelta, connections });
    }
    for (const c of changes) this.events.onTopicChange?.(c);
    return removed;
  }

  /** Watches counts; returns the topics newly watched. Nothing for a socket that left (see `subscribe`). */
  watch(conn: Conn, topics: readonly string[]): string[] {
    const a = this.apps.get(conn.appId);
    if (!a?.conns.has(conn)) return [];
    const added: string[] = [];
    for (const topic of topics) {
      if (conn.watches.has(topic)) continue;
      conn.watches.add(topic);
      addTo(a.watchers, topic, conn);
      added.push(topic);
    }
    return added;
  }

  unwatch(conn: Conn, topics: readonly string[]): string[] {
    const a = this.apps.get(conn.appId);
    if (!a) return [];
    const removed: string[] = [];
    for (const topic of topics) {
      if (!conn.watches.delete(topic)) continue;
      removeFrom(a.watchers, topic, conn);
      removed.push(topic);
    }
    return removed;
  }

  /** This node's subscribers of a topic. */
  localCount(appId: string, topic: string): TopicCount {
    const e = this.apps.get(appId)?.topics.get(topic);
    return e ? { count: clientCount(e), connections: groupSize(e.conns) } : { count: 0, connections: 0 };
  }

  /** Client ids with at least one local socket subscribed to the topic. */
  localClients(appId: string, topic: string): ReadonlyMap<string, number> {
    const e = this.apps.get(appId)?.topics.get(topic);
    return e ? clientTally(e) : new Map();
  }

  /** Local sockets watching counts of a topic. */
  watchersOf(appId: string, topic: string): ReadonlySet<Conn> {
    return this.apps.get(appId)?.watchers.get(topic) ?? new Set();
  }

  /**
   * Delivers to every matching local socket once. Each socket is reached through one stream: the
   * first listed topic it is subscribed to, else its user, else its device (`meta.topic` and, when the
   * notification has history positions, `meta.stream`/`offset`/`epoch` say which). Returns the number
   * of sockets written.
   */
  deliver(n: Notification): number {
    const a = this.apps.get(n.appId);
    if (!a) return 0;
    const topics = n.topics ?? [];
    const users = n.users ?? [];
    const devices = n.devices ?? [];

    if (n.broadcast) return this.writeAll(a.conns, n, 'b', undefined);

    // Fast path: one topic and nothing else needs no de-duplication.
    if (topics.length === 1 && users.length === 0 && devices.length === 0) {
      const topic = topics[0] as string;
      const e = a.topics.get(topic);
      return e ? this.writeGroup(e.conns, n, `t:${topic}`, topic) : 0;
    }
    // Fast path: one user, or one device, alone.
    if (topics.length === 0 && users.length + devices.length === 1) {
      if (users.length === 1) {
        const g = a.users.get(users[0] as string);
        return g ? this.writeGroup(g, n, `u:${users[0]}`, undefined) : 0;
      }
      const g = a.devices.get(devices[0] as string);
      return g ? this.writeGroup(g, n, `d:${devices[0]}`, undefined) : 0;
    }

    // General case: the union, each socket once, grouped by the stream that matched it. A socket
    // matched by several streams with history positions is told its positions in the others
    // (`meta.also`): it follows them too, and would take their next offsets for a gap.
    const seen = new Set<Conn>();
    const groups = new Map<string, { topic: string | undefined; conns: Conn[] }>();
    let also: Map<Conn, string[]> | undefined;
    const take = (conn: Conn, stream: string, topic: string | undefined) => {
      if (seen.has(conn)) {
        if (positionIn(n, stream) === undefined) return;
        also ??= new Map();
        const list = also.get(conn);
        if (list) list.push(stream);
        else also.set(conn, [stream]);
        return;
      }
      seen.add(conn);
      let g = groups.get(stream);
      if (!g) {
        g = { topic, conns: [] };
        groups.set(stream, g);
      }
      g.conns.push(conn);
    };
    const takeAll = (g: Group | undefined, stream: string, topic: string | undefined) => {
      if (g === undefined) return;
      if (g instanceof Set) for (const c of g) take(c, stream, topic);
      else take(g, stream, topic);
    };
    for (const topic of topics) takeAll(a.topics.get(topic)?.conns, `t:${topic}`, topic);
    for (const user of users) takeAll(a.users.get(user), `u:${user}`, undefined);
    for (const device of devices) takeAll(a.devices.get(device), `d:${device}`, undefined);
    let written = 0;
    for (const [stream, g] of groups) {
      if (also === undefined) {
        written += this.writeAll(g.conns, n, stream, g.topic);
        continue;
      }
      const extra = also;
      written += this.writeAll(
        g.conns.filter((c) => !extra.has(c)),
        n,
        stream,
        g.topic,
      );
      for (const c of g.conns) {
        const more = extra.get(c);
        if (more) written += this.writeGroup(c, n, stream, g.topic, more);
      }
    }
    return written;
  }

  private writeGroup(
    g: Group,
    n: Notification,
    stream: string,
    topic: string | undefined,
    also?: readonly string[],
  ): number {
    if (g instanceof Set) return this.writeAll(g, n, stream, topic);
    const frame = encodeEvent(n.appId, 'dataUpdate', [
      n.data,
      JSON.stringify(metaFor(n, stream, topic, false, also)),
    ]);
    if (this.sweeps.length === 0) return g.write(frame) ? 1 : 0;
    // Behind a fan-out being written: queued after it, so that this socket keeps the publish order.
    this.sweeps.push({ conns: [g], pos: 0, frame });
    this.pendingSweep += 1;
    return 1;
  }

  private writeAll(
    conns: Iterable<Conn> & { readonly size?: number; readonly length?: number },
    n: Notification,
    stream: string,
    topic: string | undefined,
  ): number {
    const size = conns.size ?? conns.length ?? 0;
    if (size === 0) return 0;
    const frame = encodeEvent(n.appId, 'dataUpdate', [n.data, JSON.stringify(metaFor(n, stream, topic))]);
    if (this.sweeps.length === 0 && size <= SWEEP_SLICE) {
      let written = 0;
      for (const c of conns) if (c.write(frame)) written++;
      return written;
    }
    // A large fan-out, or anything behind one: the sockets subscribed now, written in slices.
    this.sweeps.push({ conns: Array.from(conns), pos: 0, frame });
    this.pendingSweep += size;
    if (this.sweeps.length === 1) this.runSweeps(false);
    return size;
  }

  /**
   * Fan-outs waiting to be written, oldest first. A notification to 10,000 sockets takes 10,000
   * writes into their queues (5-15 ms here); done in one go it holds the event loop, so above
   * SWEEP_SLICE sockets it is written SWEEP_TURN_MS at a time (the first slice at once), and every
   * notification published while one is pending queues behind it, so each socket still receives them
   * in publish order. The recipients are those subscribed at publish time; `deliver` then returns
   * how many sockets it addressed.
   */
  private readonly sweeps: { conns: Conn[]; pos: number; frame: Frame }[] = [];
  private pendingSweep = 0;
  private sweepScheduled = false;

  private runSweeps(scheduled: boolean): void {
    if (scheduled) this.sweepScheduled = false;
    const deadline = performance.now() + SWEEP_TURN_MS;
    // At least SWEEP_SLICE sockets per turn; under a flood (more sockets pending than a few large
    // sweeps) a share of the backlog, so that it slows intake instead of growing without end.
    const floor =
      this.pendingSweep > SWEEP_FLOOD ? Math.ceil(this.pendingSweep / SWEEP_FLOOD_SHARE) : SWEEP_SLICE;
    let done = 0;
    while (this.sweeps.length > 0) {
      const job = this.sweeps[0] as { conns: Conn[]; pos: number; frame: Frame };
      const end = Math.min(job.conns.length, job.pos + SWEEP_CHECK);
      done += end - job.pos;
      for (; job.pos < end; job.pos++) (job.conns[job.pos] as Conn).write(job.frame);
      if (job.pos >= job.conns.length) {
        this.sweeps.shift();
        this.pendingSweep -= job.conns.length;
      }
      if (done >= floor && performance.now() >= deadline) break;
    }
    if (this.sweeps.length > 0 && !this.sweepScheduled) {
      this.sweepScheduled = true;
      setImmediate(() => this.runSweeps(true));
    }
  }

  /** Connections per app, for metrics and the console. */
  stats(): { appId: string; connections: number; subscriptions: number; topics: number }[] {
    return [...this.apps].map(([appId, a]) => ({
      appId,
      connections: a.conns.size,
      subscriptions: a.subscriptions,
      topics: a.topics.size,
    }));
  }

  connectionCount(): number {
    let n = 0;
    for (const a of this.apps.values()) n += a.conns.size;
    return n;
  }

  /** Every topic with local subscribers, with its local client tallies (for re-publishing presence). */
  *allTopics(): IterableIterator<{
    appId: string;
    topic: string;
    clients: ReadonlyMap<string, number>;
    connections: number;
  }> {
    for (const [appId, a] of this.apps) {
      for (const [topic, e] of a.topics)
        yield { appId, topic, clients: clientTally(e), connections: groupSize(e.conns) };
      if (a.conns.size > 0) {
        const users = new Map<string, number>();
        for (const [user, g] of a.users) users.set(user, groupSize(g));
        yield { appId, topic: ONLINE_TOPIC, clients: users, connections: a.conns.size };
      }
    }
  }

  /** Whether a socket of this node follows a history stream (`t:<topic>`, `u:<user>`, `d:<device>`, `b`). */
  follows(appId: string, stream: string): boolean {
    const a = this.apps.get(appId);
    if (!a) return false;
    const id = stream.slice(2);
    if (stream.startsWith('t:')) return a.topics.has(id);
    if (stream.startsWith('u:')) return a.users.has(id);
    if (stream.startsWith('d:')) return a.devices.has(id);
    return stream === 'b';
  }

  /** Whether a user has a socket on this node. */
  hasUser(appId: string, clientId: string): boolean {
    return this.apps.get(appId)?.users.has(clientId) ?? false;
  }

  /** Apps with at least one local socket. */
  appIds(): string[] {
    return [...this.apps.keys()];
  }

  /** Every local socket, for shutdown. */
  *allConns(): IterableIterator<Conn> {
    for (const a of this.apps.values()) yield* a.conns;
  }

  /** This node's sockets of a device in an app, the most recently connected last (commands to machines). */
  connsOfDevice(appId: string, deviceId: string): Conn[] {
    return groupList(this.apps.get(appId)?.devices.get(deviceId));
  }

  /**
   * Read-only search for the console: this node's sockets whose client id or device id contains
   * `query` (exact matches first), optionally in one app, at most `limit` sockets.
   */
  findConns(query: string, appId?: string, limit = 50): Conn[] {
    const exact: Conn[] = [];
    const partial: Conn[] = [];
    const apps = appId === undefined ? [...this.apps.values()] : [this.apps.get(appId)].filter((a) => !!a);
    for (const a of apps) {
      for (const c of a.conns) {
        if (c.clientId === query || c.deviceId === query) exact.push(c);
        else if (partial.length < limit && (c.clientId.includes(query) || c.deviceId?.includes(query)))
          partial.push(c);
      }
    }
    return [...exact, ...partial].slice(0, limit);
  }
}
