/**
 * Herald client SDK for browsers and Node, over socket.io-client.
 *
 * ```ts
 * import { connect } from 'herald/sdk';
 * const herald = connect({ url: 'http://localhost:3000', appId: 'chat-app', clientId: 'alice', deviceId: 'web-1' });
 * await herald.subscribe(['chat:room-general']);
 * await herald.subscribeCount('chat:room-general');
 * herald.on('chat:room-general', (data) => console.log(data));
 * ```
 *
 * Socket.IO forgets subscriptions when a connection drops; the SDK keeps the set of topics and count
 * watches and subscribes again after every reconnect.
 */
import { io, type ManagerOptions, type Socket, type SocketOptions } from 'socket.io-client';

export interface Meta {
  /** Notification id (absent on count updates). */
  id?: string;
  /** Milliseconds since the epoch when the notification was accepted. */
  ts: number;
  /** The topic through which this socket was reached, if any. */
  topic?: string;
  [key: string]: unknown;
}

export interface CountUpdate {
  type: 'count';
  topic: string;
  count: number;
  connections: number;
}

export interface TopicCount {
  count: number;
  connections: number;
}

export type DataHandler = (data: unknown, meta: Meta) => void;

/** Where the client stands in one stream (`t:<topic>`, `u:<clientId>`, `d:<deviceId>`, `b`). */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** Outcome of recovery for one stream after a reconnect. */
export interface RecoveryResult {
  stream: string;
  /** False when notifications may have been missed (too old, history lost): reload the app state. */
  recovered: boolean;
  /** Notifications replayed (already delivered to the handlers, in order, before new ones). */
  replayed: number;
}
export type Status = 'connecting' | 'connected' | 'disconnected' | 'closed';

export interface ConnectOptions {
  /** Server base URL, e.g. `http://localhost:3000`. */
  url: string;
  /** Application id (namespace). */
  appId: string;
  /** The user. */
  clientId?: string;
  /** This device of the user. */
  deviceId?: string;
  /** JWT for apps mode; a function is called again before every reconnect (token refresh). */
  token?: string | (() => string | Promise<string>);
  /** Reconnect back-off. @default { initialDelayMs: 500, maxDelayMs: 10000, jitter: 0.5 } */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number; jitter?: number; attempts?: number };
  /**
   * Declare the connection dead and reconnect when no server heartbeat arrives for this long.
   * @default pingInterval + pingTimeout of the server (Socket.IO's own rule)
   */
  heartbeatTimeoutMs?: number;
  /** How long subscribe/unsubscribe wait for the server's ack. @default 10000 */
  ackTimeoutMs?: number;
  /**
   * Recover missed notifications after a reconnect (server history, offsets and epochs).
   * @default true
   */
  recover?: boolean;
  /**
   * Acknowledge notifications published with `ack: true` (delivery receipts).
   * @default true
   */
  receipts?: boolean;
  /** Extra socket.io-client options (transports, path, ...). */
  socketOptions?: Partial<ManagerOptions & SocketOptions>;
}

/** An error answered by the server, with its stable code (and its details, e.g. `retryAfterMs`). */
export class HeraldClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'HeraldClientError';
  }
}

type Ack =
  | {
      ok: true;
      topics: string[];
      counts?: Record<string, TopicCount>;
      streams?: Record<string, StreamPosition & { recovered: boolean; replayed: number; error?: string }>;
    }
  | { ok: false; error: { code: string; message: string; details?: Record<string, unknown> } };

export interface HeraldClient {
  /** The underlying socket.io-client socket. */
  readonly socket: Socket;
  readonly status: Status;
  /** Topics the SDK keeps subscribed. */
  readonly topics: ReadonlySet<string>;
  /** Topics whose counts the SDK keeps watching. */
  readonly countTopics: ReadonlySet<string>;
  subscribe(topics: string | string[]): Promise<string[]>;
  unsubscribe(topics: string | string[]): Promise<string[]>;
  /** Watches counts; resolves with the current values (also delivered as `dataUpdate` count events). */
  subscribeCount(topics: string | string[]): Promise<Record<string, TopicCount>>;
  unsubscribeCount(topics: string | string[]): Promise<string[]>;
  /** Every `dataUpdate` (notifications and count updates). Returns an unsubscribe function. */
  on(handler: DataHandler): () => void;
  /** `dataUpdate`s of one topic: notifications reached through it and its count updates. */
  on(topic: string, handler: DataHandler): () => void;
  /** Count updates only, optionally of one topic. */
  onCount(handler: (update: CountUpdate) => void, topic?: string): () => void;
  /** Connection status changes. */
  onStatus(handler: (status: Status, reason?: string) => void): () => void;
  /** Recovery results after each reconnect (one entry per stream the client was following). */
  onRecover(handler: (results: RecoveryResult[]) => void): () => void;
  /** The last position seen in each stream. */
  readonly positions: ReadonlyMap<string, StreamPosition>;
  close(): void;
}

const MAX_PER_CALL = 100;
/**
 * Refusals of the connect after which the same connect may pass later (a node at its connection cap or
 * stopping, a client at its cap until one of its connections closes): tried again with the back-off.
 * Others (`unknown_app`, `invalid_client_id`, a fixed token refused, ...) would be refused again.
 */
const RETRIED_REFUSALS = new Set([
  'too_many_connections',
  'shutting_down',
  'not_ready',
  'internal_error',
  'store_unavailable',
  'cluster_unavailable',
]);
/**
 * An event the server refused as over its per-connection limit (`rate_limited`, CLIENT_EVENT_RATE) is
 * sent again after the server's `retryAfterMs` (each refused event is told a slot of its own), up to this
 * many times; then the error reaches the caller.
 */
const RATE_LIMIT_RETRIES = 5;
/** The longest wait the SDK accepts from `retryAfterMs` before giving the error to the caller. */
const RATE_LIMIT_MAX_WAIT_MS = 10_000;
/** How long received notifications' receipts are gathered before they are sent (ms). */
const RECEIPT_DELAY_MS = 20;
/**
 * How long a gap in a stream waits before the client asks for what it missed: notifications that two
 * nodes publish to one stream at the same moment can arrive out of order, and a gap they fill in the
 * meantime needs no request. Other gaps found meanwhile join the same request.
 */
const GAP_DELAY_MS = 250;
/** Offsets kept per stream while waiting for the ones before them. */
const MAX_AHEAD = 1000;
/** A `resync` request from the server is answered within this long, at random (unless it says). */
const RESYNC_SPREAD_MS = 1000;
const RESYNC_SPREAD_MAX_MS = 60_000;

function toList(topics: string | string[]): string[] {
  return typeof topics === 'string' ? [topics] : [...topics];
}

function chunks<T>(list: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < list.length; i += size) out.push(list.slice(i, i + size));
  return out;
}

function isCount(data: unknown): data is CountUpdate {
  return typeof data === 'object' && data !== null && (data as { type?: unknown }).type === 'count';
}

/** Connects to `<url>/<appId>` and returns a client that keeps its subscriptions across reconnects. */
export function connect(options: ConnectOptions): HeraldClient {
  const base = options.url.replace(/\/+$/, '');
  const backoff = options.reconnect ?? {};
  const ackTimeout = options.ackTimeoutMs ?? 10_000;
  const topics = new Set<string>();
  const countTopics = new Set<string>();
  const handlers = new Set<DataHandler>();
  const topicHandlers = new Map<string, Set<DataHandler>>();
  const statusHandlers = new Set<(s: Status, reason?: string) => void>();
  const recoverHandlers = new Set<(r: RecoveryResult[]) => void>();
  const positions = new Map<string, StreamPosition>();
  const useRecovery = options.recover !== false;
  const sendReceipts = options.receipts !== false;
  // Ids of recent notifications: a notification reached through two streams, or replayed after it
  // was already received, is handed to the app once.
  const recent = new Set<string>();
  const recentOrder: string[] = [];
  let pendingReceipts: string[] = [];
  let receiptTimer: ReturnType<typeof setTimeout> | undefined;
  // Receipts gathered for RECEIPT_DELAY_MS leave in one `receipt` event (100 ids each): a client that
  // receives notifications with `ack: true` fast sends at most ~50 receipt events a second, well under
  // the server's CLIENT_EVENT_RATE.
  const flushReceipts = () => {
    receiptTimer = undefined;
    const ids = pendingReceipts;
    pendingReceipts = [];
    for (const part of chunks(ids, 100)) socket.emit('receipt', part);
  };
  let status: Status = 'connecting';
  let heartbeatTimer: ReturnType<typeof setTimeout> | undefined;

  const socket = io(`${base}/${options.appId}`, {
    reconnection: true,
    reconnectionDelay: backoff.initialDelayMs ?? 500,
    reconnectionDelayMax: backoff.maxDelayMs ?? 10_000,
    randomizationFactor: backoff.jitter ?? 0.5,
    reconnectionAttempts: backoff.attempts ?? Number.POSITIVE_INFINITY,
    ...options.socketOptions,
    auth: (cb: (data: object) => void) => {
      const auth: Record<string, string> = {};
      if (options.clientId) auth.clientId = options.clientId;
      if (options.deviceId) auth.deviceId = options.deviceId;
      const t = options.token;
      if (typeof t === 'function') {
        Promise.resolve(t()).then(
          (token) => cb({ ...auth, token }),
          () => cb(auth),
        );
      } else {
        if (t) auth.token = t;
        cb(auth);
      }
    },
  });

  const setStatus = (s: Status, reason?: string) => {
    if (status === s) return;
    status = s;
    for (const h of statusHandlers) h(s, reason);
  };

  const armHeartbeat = () => {
    if (heartbeatTimer) clearTimeout(heartbeatTimer);
    if (!options.heartbeatTimeoutMs || status === 'closed') return;
    heartbeatTimer = setTimeout(() => {
      // No ping from the server: the link is dead even if TCP has not noticed. Reconnect.
      socket.io.engine?.close();
    }, options.heartbeatTimeoutMs);
  };

  /** Emits with an ack; a `rate_limited` answer is sent again after its `retryAfterMs` (a few times). */
  const ask = async (event: string, payload: unknown): Promise<Ack> => {
    for (let attempt = 0; ; attempt++) {
      const ack = (await socket.timeout(ackTimeout).emitWithAck(event, payload)) as Ack;
      if (ack.ok || ack.error.code !== 'rate_limited' || attempt >= RATE_LIMIT_RETRIES) return ack;
      const after = ack.error.details?.retryAfterMs;
      const wait = typeof after === 'number' && Number.isFinite(after) && after >= 0 ? after : 1000;
      if (wait > RATE_LIMIT_MAX_WAIT_MS || status === 'closed') return ack;
      await new Promise((r) => setTimeout(r, wait + Math.random() * 10));
    }
  };
  const fail = (ack: Ack & { ok: false }) =>
    new HeraldClientError(ack.error.code, ack.error.message, ack.error.details);

  const request = async (event: string, list: string[]): Promise<Ack[]> => {
    const out: Ack[] = [];
    for (const part of chunks(list, MAX_PER_CALL)) {
      const ack = await ask(event, part);
      if (!ack.ok) throw fail(ack);
      out.push(ack);
    }
    return out;
  };

  // Streams where a notification was missed (see `advance`), waiting for `catchUp`. Their positions stay
  // where the gap starts until then: an ack's current position must not move them past it.
  const gaps = new Set<string>();
  // Offsets received beyond the next one, per stream in `gaps` (see `advance`).
  const ahead = new Map<string, Set<number>>();
  const learn = (ack: Ack, asked?: ReadonlySet<string>) => {
    if (!ack.ok || !ack.streams) return;
    for (const [stream, p] of Object.entries(ack.streams)) {
      if (p.error || (stream.startsWith('t:') && !topics.has(stream.slice(2)))) continue;
      if (gaps.has(stream) && !asked?.has(stream)) continue;
      const known = positions.get(stream);
      if (!known || known.epoch !== p.epoch || known.offset < p.offset)
        positions.set(stream, { offset: p.offset, epoch: p.epoch });
    }
  };

  /** Subscribes through `recover` so that the server also says where each topic's stream stands. */
  const subscribeTopics = async (list: string[]): Promise<Ack[]> => {
    if (!useRecovery) return request('subscribe', list);
    const out: Ack[] = [];
    for (const part of chunks(list, MAX_PER_CALL)) {
      const ack = await ask('recover', { topics: part });
      if (!ack.ok) throw fail(ack);
      learn(ack);
      out.push(ack);
    }
    return out;
  };

  const resync = (reconnect: boolean) => {
    // After a reconnect the server knows nothing of this socket: subscribe again and, with history,
    // ask for what was missed in every stream the client follows.
    const redo = async () => {
      if (useRecovery) {
        const streams: Record<string, StreamPosition> = {};
        for (const [stream, p] of positions) {
          if (!stream.startsWith('t:') || topics.has(stream.slice(2))) streams[stream] = p;
        }
        const ack = await ask('recover', { topics: [...topics], streams: reconnect ? streams : {} });
        if (!ack.ok) throw fail(ack);
        const given = new Set(Object.keys(reconnect ? streams : {}));
        // The gaps of the streams asked for are answered here (replays, then the current position).
        learn(ack, given);
        for (const s of given) {
          gaps.delete(s);
          ahead.delete(s);
        }
        if (reconnect && given.size) {
          const results: RecoveryResult[] = Object.entries(ack.streams ?? {})
            .filter(([stream]) => given.has(stream))
            .map(([stream, r]) => ({ stream, recovered: r.recovered, replayed: r.replayed }));
          for (const h of recoverHandlers) h(results);
        }
      } else if (topics.size) {
        await request('subscribe', [...topics]);
      }
      if (reconnect && countTopics.size) await request('subscribeCount', [...countTopics]);
    };
    redo().catch(() => {
      // The server refused (e.g. a limit changed): the app learns through its own calls and `error`.
    });
  };

  // Catching up on gaps: one `recover` at a time, for the streams in `gaps`; after a failure, later.
  let catchUpTimer: ReturnType<typeof setTimeout> | undefined;
  let catchingUp = false;
  let catchUpFailures = 0;
  const scheduleCatchUp = (delayMs: number) => {
    if (catchUpTimer || catchingUp || gaps.size === 0) return;
    catchUpTimer = setTimeout(() => {
      catchUpTimer = undefined;
      void catchUp();
    }, delayMs);
  };
  const catchUp = async () => {
    if (status !== 'connected') return; // the reconnect's recovery covers every stream
    const asked = [...gaps].filter(
      (s) => positions.has(s) && (!s.startsWith('t:') || topics.has(s.slice(2))),
    );
    for (const s of gaps) {
      if (asked.includes(s)) continue;
      gaps.delete(s);
      ahead.delete(s);
    }
    if (asked.length === 0) return;
    catchingUp = true;
    try {
      for (const part of chunks(asked, MAX_PER_CALL)) {
        const streams: Record<string, StreamPosition> = {};
        for (const s of part) streams[s] = positions.get(s) as StreamPosition;
        const ack = await ask('recover', { streams });
        if (!ack.ok) throw fail(ack);
        const given = new Set(part);
        learn(ack, given);
        for (const s of part) {
          gaps.delete(s);
          ahead.delete(s);
        }
        const results: RecoveryResult[] = Object.entries(ack.streams ?? {})
          .filter(([stream]) => given.has(stream))
          .map(([stream, r]) => ({ stream, recovered: r.recovered, replayed: r.replayed }));
        for (const h of recoverHandlers) h(results);
      }
      catchUpFailures = 0;
    } catch {
      catchUpFailures++;
    } finally {
      catchingUp = false;
      scheduleCatchUp(catchUpFailures ? Math.min(30_000, 500 * 2 ** catchUpFailures) : GAP_DELAY_MS);
    }
  };

  /**
   * Moves a stream's position on with a notification received through it (or listed in its `meta.also`).
   * Offsets of a stream are consecutive: one beyond the next means notifications this socket did not get
   * (its node lost the link to the other nodes for a moment, say), so the client asks for them from the
   * position it holds (`recover`); they follow as replays, and `onRecover` handlers hear the result.
   */
  const advance = (stream: string, offset: number, epoch: string) => {
    // A topic stream is followed only while subscribed: a notification still on its way when the app
    // unsubscribed does not bring the position (and the recovery of that topic) back.
    if (stream.startsWith('t:') && !topics.has(stream.slice(2))) return;
    const known = positions.get(stream);
    if (!known || known.epoch !== epoch) {
      // First position in this stream, or a new epoch (its history was lost): nothing to compare with.
      positions.set(stream, { offset, epoch });
      ahead.delete(stream);
      gaps.delete(stream);
      return;
    }
    if (offset <= known.offset) return;
    if (offset > known.offset + 1) {
      if (!useRecovery) {
        positions.set(stream, { offset, epoch });
        return;
      }
      // Ahead of the next: kept, in case the ones between arrive in a moment (two nodes publishing to one
      // stream can deliver out of order); if they have not when the catch-up runs, it asks for them.
      let later = ahead.get(stream);
      if (!later) {
        later = new Set();
        ahead.set(stream, later);
      }
      if (later.size < MAX_AHEAD) later.add(offset);
      gaps.add(stream);
      scheduleCatchUp(GAP_DELAY_MS);
      return;
    }
    // The next one: the position moves on, over any later ones already received.
    let at = offset;
    const later = ahead.get(stream);
    if (later) {
      while (later.delete(at + 1)) at++;
      if (later.size === 0) ahead.delete(stream);
    }
    positions.set(stream, { offset: at, epoch });
    // In step again: nothing was missed up to here (a resync's doubt about the stream is answered too).
    if (!ahead.has(stream)) gaps.delete(stream);
  };

  // A node whose link to the other nodes was interrupted asks its clients to catch up: what they may
  // have missed meanwhile is in the streams' history. At a random moment within the time the server
  // gives (a second by default, at most a minute), so that thousands of clients do not ask at once.
  socket.on('resync', (hint?: { spreadMs?: unknown }) => {
    if (!useRecovery) return;
    for (const [stream] of positions) gaps.add(stream);
    const given = hint?.spreadMs;
    const spread =
      typeof given === 'number' && Number.isFinite(given) && given >= 0
        ? Math.min(given, RESYNC_SPREAD_MAX_MS)
        : RESYNC_SPREAD_MS;
    scheduleCatchUp(Math.random() * spread);
  });

  let firstConnect = true;
  socket.on('connect', () => {
    setStatus('connected');
    armHeartbeat();
    if (!firstConnect || useRecovery) resync(!firstConnect);
    firstConnect = false;
  });
  socket.io.on('ping', armHeartbeat);
  socket.on('disconnect', (reason) => {
    if (heartbeatTimer) clearTimeout(heartbeatTimer);
    if (status !== 'closed') setStatus('disconnected', reason);
    // A server-side disconnect does not reconnect by itself in Socket.IO; the SDK always does.
    if (reason === 'io server disconnect' && status !== 'closed') socket.connect();
  });
  socket.io.on('reconnect_attempt', () => setStatus('connecting'));
  // A connect the server refused (its `connect_error` carries `data.code`) is not tried again by
  // socket.io-client, which would leave the client `connecting` for good: the refusal is reported
  // (`onStatus('disconnected', code)`), and one that may pass later is tried again with the back-off
  // (a token function is asked for a fresh token on every try).
  let refusals = 0;
  let refusalTimer: ReturnType<typeof setTimeout> | undefined;
  socket.on('connect_error', (err: Error & { data?: { code?: unknown } }) => {
    if (socket.active || status === 'closed') return; // a transport failure: Socket.IO retries by itself
    const code = typeof err.data?.code === 'string' ? err.data.code : 'connect_refused';
    setStatus('disconnected', code);
    const retry =
      RETRIED_REFUSALS.has(code) || (code === 'invalid_token' && typeof options.token === 'function');
    if (!retry || refusals >= (backoff.attempts ?? Number.POSITIVE_INFINITY)) return;
    const first = backoff.initialDelayMs ?? 500;
    const jitter = backoff.jitter ?? 0.5;
    const delay =
      Math.min(backoff.maxDelayMs ?? 10_000, first * 2 ** Math.min(refusals, 20)) *
      (1 + (Math.random() * 2 - 1) * jitter);
    refusals++;
    refusalTimer = setTimeout(() => {
      refusalTimer = undefined;
      if (status === 'closed' || socket.connected) return;
      setStatus('connecting');
      socket.connect();
    }, delay);
  });
  socket.on('connect', () => {
    refusals = 0;
  });
  socket.on('dataUpdate', (data: unknown, meta: Meta) => {
    if (
      meta &&
      typeof meta.stream === 'string' &&
      typeof meta.offset === 'number' &&
      typeof meta.epoch === 'string'
    ) {
      advance(meta.stream, meta.offset, meta.epoch);
      const also = meta.also;
      if (typeof also === 'object' && also !== null) {
        for (const [stream, p] of Object.entries(also as Record<string, unknown>)) {
          if (Array.isArray(p) && typeof p[0] === 'number' && typeof p[1] === 'string') {
            advance(stream, p[0], p[1]);
          }
        }
      }
    }
    if (meta && typeof meta.id === 'string') {
      if (recent.has(meta.id)) return;
      recent.add(meta.id);
      recentOrder.push(meta.id);
      if (recentOrder.length > 2000) recent.delete(recentOrder.shift() as string);
      if (meta.ack && sendReceipts) {
        pendingReceipts.push(meta.id);
        if (!receiptTimer) receiptTimer = setTimeout(flushReceipts, RECEIPT_DELAY_MS);
      }
    }
    for (const h of handlers) h(data, meta);
    const topic = isCount(data) ? data.topic : meta?.topic;
    if (topic !== undefined) {
      const set = topicHandlers.get(topic);
      if (set) for (const h of set) h(data, meta);
    }
  });

  const client: HeraldClient = {
    socket,
    get status() {
      return status;
    },
    topics,
    countTopics,
    async subscribe(t) {
      const list = toList(t);
      const fresh = list.filter((x) => !topics.has(x));
      for (const x of fresh) topics.add(x);
      try {
        const acks = await subscribeTopics(list);
        return acks.flatMap((a) => (a.ok ? a.topics : []));
      } catch (err) {
        for (const x of fresh) topics.delete(x);
        throw err;
      }
    },
    async unsubscribe(t) {
      const list = toList(t);
      for (const x of list) {
        topics.delete(x);
        // Positions of topics no longer followed are dropped: an app that goes through many topics
        // (one per order, per chat) would otherwise keep one entry per topic it ever followed.
        positions.delete(`t:${x}`);
        gaps.delete(`t:${x}`);
        ahead.delete(`t:${x}`);
      }
      const acks = await request('unsubscribe', list);
      return acks.flatMap((a) => (a.ok ? a.topics : []));
    },
    async subscribeCount(t) {
      const list = toList(t);
      const fresh = list.filter((x) => !countTopics.has(x));
      for (const x of fresh) countTopics.add(x);
      try {
        const acks = await request('subscribeCount', list);
        return Object.assign({}, ...acks.map((a) => (a.ok ? (a.counts ?? {}) : {}))) as Record<
          string,
          TopicCount
        >;
      } catch (err) {
        for (const x of fresh) countTopics.delete(x);
        throw err;
      }
    },
    async unsubscribeCount(t) {
      const list = toList(t);
      for (const x of list) countTopics.delete(x);
      const acks = await request('unsubscribeCount', list);
      return acks.flatMap((a) => (a.ok ? a.topics : []));
    },
    on(a: string | DataHandler, b?: DataHandler) {
      if (typeof a === 'function') {
        handlers.add(a);
        return () => handlers.delete(a);
      }
      if (!b) throw new TypeError('on(topic, handler) needs a handler');
      let set = topicHandlers.get(a);
      if (!set) {
        set = new Set();
        topicHandlers.set(a, set);
      }
      set.add(b);
      return () => {
        const removed = set.delete(b);
        if (set.size === 0 && topicHandlers.get(a) === set) topicHandlers.delete(a);
        return removed;
      };
    },
    onCount(handler, topic) {
      const h: DataHandler = (data) => {
        if (isCount(data) && (topic === undefined || data.topic === topic)) handler(data);
      };
      handlers.add(h);
      return () => handlers.delete(h);
    },
    onStatus(handler) {
      statusHandlers.add(handler);
      return () => statusHandlers.delete(handler);
    },
    onRecover(handler) {
      recoverHandlers.add(handler);
      return () => recoverHandlers.delete(handler);
    },
    positions,
    close() {
      setStatus('closed');
      if (heartbeatTimer) clearTimeout(heartbeatTimer);
      if (refusalTimer) clearTimeout(refusalTimer);
      if (catchUpTimer) clearTimeout(catchUpTimer);
      if (receiptTimer) {
        clearTimeout(receiptTimer);
        flushReceipts();
      }
      socket.close();
    },
  };
  return client;
}
