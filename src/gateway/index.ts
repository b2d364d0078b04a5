import type { Server as HttpServer, IncomingMessage } from 'node:http';
import { type Namespace, Server, Socket } from 'socket.io';
import type { AccessControl, ClientIdentity } from '../auth/index.js';
import type { Config } from '../config/index.js';
import { type ErrorBody, HeraldError, isHeraldError } from '../errors.js';
import { ConnectGcPacer } from '../gc.js';
import { OPEN_FILES_RESERVED, type OpenFilesLimit, openFilesLimit } from '../limits.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics/index.js';
import type { CountNotifier } from '../router/counts.js';
import { encodeAck, type Frame } from '../router/frame.js';
import type { Router } from '../router/index.js';
import type { Conn } from '../router/types.js';
import { compactConnection, compactTransport } from './compact.js';
import { EventRateLimiter, type RateState } from './rate.js';
import { parseTopics, readIdentity } from './validate.js';

export const APP_NAMESPACE_RE = /^\/[A-Za-z0-9_.-]{1,64}$/;

/** How long shutdown waits for clients to complete the close of their connection before cutting it. */
/** Sockets told to `resync` per turn of the event loop (see Gateway.hintResync). */
const RESYNC_SLICE = 2000;
const DRAIN_GRACE_MS = 1000;
/** `WebSocket.CLOSED` of the ws package. */
const WS_CLOSED = 3;

/** The parts of `ws` a WebSocket transport exposes that the direct write path needs. */
interface RawWebSocket {
  readyState: number;
  bufferedAmount: number;
  _socket: { write(data: Buffer): boolean } | null;
  _sender: { _bufferedBytes: number };
  terminate?: () => void;
}
interface EngineTransport {
  name: string;
  /** The `ws` WebSocket (absent for long-polling). */
  socket?: RawWebSocket;
}
interface EngineSocket {
  readyState: string;
  writeBuffer: unknown[];
  transport: EngineTransport;
  write(data: string, options: Record<string, unknown>): unknown;
  sendPacket(...args: unknown[]): unknown;
  close(): void;
  /** Frames waiting for the end of this turn of the event loop (see `queueFrame`). */
  [OUT]?: Frame[] | undefined;
  /** Bytes of the queued frames plus what the socket held when the first was queued. */
  [OUT_BYTES]: number;
}

const OUT = Symbol('herald.out');
const OUT_BYTES = Symbol('herald.outBytes');
const WS_OPEN = 1;

/**
 * Connections with frames queued in this turn of the event loop. Frames for one connection are
 * coalesced into one socket write when the turn ends (setImmediate: after every request read in this
 * poll phase), so several notifications to the same socket cost one system call, which is what a
 * write costs on loopback and most of what it costs on a network.
 */
let queued: EngineSocket[] = [];
let flushScheduled = false;
/** The list being written, a time slice per turn, and how far it got. */
let flushing: EngineSocket[] | undefined;
let flushPos = 0;

/**
 * A flush turn writes queued connections for FLUSH_TURN_MS at most (checked every FLUSH_CHECK
 * sockets, at least FLUSH_MIN of them), then yields to the event loop. A fan-out to 10,000 sockets is
 * 10,000 system calls (100-300 ms here); in slices, HTTP requests, heartbeats and timers are served in
 * between, so the loop's delay stays low, and notifications that arrive meanwhile join the frames
 * still queued for the sockets not yet written (one write carries them all). Above FLOOD_BACKLOG
 * waiting connections (notifications to distinct sockets arriving faster than they can be written), a
 * turn writes at least an eighth of the backlog: the flush then takes more of the loop, which slows
 * intake instead of queueing without end.
 */
const FLUSH_TURN_MS = 4;
const FLUSH_CHECK = 16;
const FLUSH_MIN = 64;
const FLOOD_BACKLOG = 16_384;
const FLOOD_SHARE = 8;

/**
 * Up to DIRECT_PER_TURN connections per turn with nothing queued and an empty send buffer are written
 * at once rather than at the end of the turn (a targeted notification leaves with its request); the
 * rest of a larger fan-out is queued and sliced as above.
 */
const DIRECT_PER_TURN = 64;
let directLeft = DIRECT_PER_TURN;
let directReset = false;
const resetDirect = (): void => {
  directLeft = DIRECT_PER_TURN;
  directReset = false;
};

/**
 * Frames written in the rest of this turn of the event loop are all queued, none written at once, so
 * that what one connection gets in this turn leaves in one write: a payment batch's commit sends each
 * reporting machine its `dataUpdate` and, a few microtasks later, the ack of its report.
 */
export function coalesceThisTurn(): void {
  directLeft = 0;
  if (!directReset) {
    directReset = true;
    setImmediate(resetDirect);
  }
}

function scheduleFlush(): void {
  if (flushScheduled) return;
  flushScheduled = true;
  setImmediate(flushQueued);
}

function flushQueued(): void {
  flushScheduled = false;
  if (!flushing) {
    flushing = queued;
    queued = [];
    flushPos = 0;
  }
  const list = flushing;
  const backlog = list.length - flushPos + queued.length;
  const floor =
    flushPos + (backlog > FLOOD_BACKLOG ? Math.ceil(backlog / FLOOD_SHARE) : FLUSH_MIN) - FLUSH_CHECK;
  const deadline = performance.now() + FLUSH_TURN_MS;
  // A connection met again here (its frames were written early by sendPacket) has nothing queued.
  while (flushPos < list.length) {
    const end = Math.min(list.length, flushPos + FLUSH_CHECK);
    for (; flushPos < end; flushPos++) flushEngine(list[flushPos] as EngineSocket);
    if (flushPos >= floor && performance.now() >= deadline) break;
  }
  if (flushPos < list.length) {
    scheduleFlush();
    return;
  }
  flushing = undefined;
  lastOut = undefined;
  lastWire = undefined;
  if (queued.length > 0) scheduleFlush();
}

/**
 * The frames of the previous multi-frame write and their concatenation: in a fan-out every socket
 * has the same frames queued, so the buffer is built once per sweep and written to each of them.
 */
let lastOut: Frame[] | undefined;
let lastWire: Buffer | undefined;

function wireOf(out: Frame[]): Buffer {
  const prev = lastOut;
  if (prev && lastWire && prev.length === out.length) {
    let same = true;
    for (let i = 0; i < out.length; i++) {
      if (prev[i] !== out[i]) {
        same = false;
        break;
      }
    }
    if (same) return lastWire;
  }
  const parts = new Array<Buffer>(out.length);
  for (let i = 0; i < out.length; i++) parts[i] = (out[i] as Frame).ws[0];
  lastOut = out;
  lastWire = Buffer.concat(parts);
  return lastWire;
}

/** Writes the frames queued for one connection: one write on the WebSocket's TCP socket. */
function flushEngine(engine: EngineSocket): void {
  const out = engine[OUT];
  if (!out) return;
  engine[OUT] = undefined;
  engine[OUT_BYTES] = 0;
  if (engine.readyState !== 'open') return; // closed meanwhile: dropped like any unsent data
  const ws = engine.transport.socket;
  const raw = ws?._socket;
  if (
    engine.transport.name === 'websocket' &&
    ws &&
    raw &&
    ws.readyState === WS_OPEN &&
    engine.writeBuffer.length === 0
  ) {
    raw.write(out.length === 1 ? (out[0] as Frame).ws[0] : wireOf(out));
    return;
  }
  // The transport changed under us: hand the frames to engine.io, in order.
  for (const f of out) engine.write(f.packet, { wsPreEncodedFrame: f.ws });
}

/**
 * engine.io's sendPacket, preceded by a flush of the frames this connection has queued, so that
 * a packet engine.io sends (an ack, a ping, an error, a server event) never overtakes them.
 */
function sendPacketAfterQueued(this: EngineSocket, ...args: unknown[]): unknown {
  if (this[OUT]) flushEngine(this);
  return (Object.getPrototypeOf(this) as EngineSocket).sendPacket.apply(this, args);
}

/** The source of the listener engine.io's WebSocketResponse adds to the TCP socket (engine.io 6.6). */
const WS_RESPONSE_CLOSE = '() => this.emit("close")';

/** The parts of the upgrade request that Socket.IO reads when a namespace connects (its handshake). */
interface SlimRequest {
  headers: IncomingMessage['headers'];
  url: string | undefined;
  _query: unknown;
  connection: { encrypted: boolean };
}

/** Headers of the WebSocket upgrade itself, of no use once the connection is open. */
const UPGRADE_HEADERS = new Set([
  'connection',
  'upgrade',
  'sec-websocket-key',
  'sec-websocket-version',
  'sec-websocket-extensions',
]);

/**
 * The request headers a connection keeps for Socket.IO's handshake (identity, `x-merchant-id`,
 * `origin`, ...): all but those of the WebSocket upgrade, in a plain object of their own rather than
 * the request's (which the request's other parts would keep alive).
 */
function handshakeHeaders(headers: IncomingMessage['headers']): IncomingMessage['headers'] {
  const out: IncomingMessage['headers'] = {};
  for (const name in headers) if (!UPGRADE_HEADERS.has(name)) out[name] = headers[name];
  return out;
}

/**
 * Per-connection set-up of an engine.io socket, once, when it opens:
 * - the upgrade request (an IncomingMessage with its stream state, raw headers and socket links,
 *   about 1 KB) is replaced by the few fields Socket.IO's handshake reads, so that an idle connection
 *   does not keep it (Socket.IO's own advice for memory, without losing the headers that identify a
 *   client when it connects to a namespace later);
 * - the direct write path's fields are set at once, so every engine socket has the same shape.
 */
function prepareEngineSocket(engine: EngineSocket & { request: IncomingMessage | SlimRequest }): void {
  const req = engine.request as IncomingMessage & { _query?: unknown };
  // engine.io's WebSocketResponse (kept for middlewares that wait for a response 'close') holds the
  // request through a 'close' listener on the TCP socket for the socket's whole life. No middleware of
  // Herald's needs it; when the listener is recognised it is removed, otherwise left as it is.
  const raw = req.socket;
  if (engine.transport.name === 'websocket' && raw) {
    for (const fn of raw.listeners('close')) {
      if (fn.toString() === WS_RESPONSE_CLOSE) raw.removeListener('close', fn as () => void);
    }
  }
  const slim: SlimRequest = {
    headers: handshakeHeaders(req.headers),
    url: req.url,
    _query: req._query,
    connection: { encrypted: Boolean((req.socket as { encrypted?: boolean } | null)?.encrypted) },
  };
  engine.request = slim;
  engine[OUT] = undefined;
  engine[OUT_BYTES] = 0;
  engine.sendPacket = sendPacketAfterQueued;
  // A long-polling connection compacts its WebSocket transport's listeners when it upgrades.
  if (engine.transport.name !== 'websocket')
    (engine as unknown as { on(event: string, fn: () => void): void }).on('upgrade', onEngineUpgrade);
}

function onEngineUpgrade(this: EngineSocket): void {
  compactTransport(this);
}

/**
 * Writes a pre-encoded frame to a connection: straight to the WebSocket's TCP socket, at once (a few
 * per turn, when nothing waits for it) or at the end of this turn, coalesced with the other frames
 * queued for it; through engine.io when the transport is long-polling, mid-upgrade, or engine.io
 * itself has packets waiting (keeps them in order). `buffered` is what the socket already holds.
 */
function queueFrame(engine: EngineSocket, frame: Frame, buffered: number): void {
  let out = engine[OUT];
  if (!out) {
    const ws = engine.transport.socket;
    const raw = ws?._socket;
    if (
      engine.writeBuffer.length > 0 ||
      engine.transport.name !== 'websocket' ||
      !raw ||
      (ws as RawWebSocket).readyState !== WS_OPEN ||
      (ws as RawWebSocket)._sender._bufferedBytes !== 0
    ) {
      engine.write(frame.packet, { wsPreEncodedFrame: frame.ws });
      return;
    }
    if (engine.sendPacket !== sendPacketAfterQueued) engine.sendPacket = sendPacketAfterQueued;
    if (buffered === 0 && directLeft > 0) {
      directLeft--;
      if (!directReset) {
        directReset = true;
        setImmediate(resetDirect);
      }
      raw.write(frame.ws[0]);
      return;
    }
    out = [];
    engine[OUT] = out;
    engine[OUT_BYTES] = buffered;
    queued.push(engine);
    scheduleFlush();
  }
  engine[OUT_BYTES] += frame.ws[0].length;
  out.push(frame);
}

/** The parts of socket.io-adapter's in-memory Adapter that `withoutOwnRooms` changes. */
interface RoomAdapter {
  readonly nsp: { name: string };
  readonly sids: Map<string, Set<string>>;
  addAll(id: string, rooms: Set<string>): void;
}
type RoomAdapterClass = new (nsp: Namespace) => RoomAdapter;

/** A socket's rooms when it has none but its own: shared, so `add` is a no-op (nothing adds to it). */
class NoRooms extends Set<string> {
  override add(): this {
    return this;
  }
}
const NO_ROOMS: Set<string> = new NoRooms();

/**
 * The adapter of app namespaces: Socket.IO makes every socket join a room named after its own id (two
 * Sets and two map entries per connection, about 250 bytes) for `io.to(socketId)`, which Herald never
 * uses: it addresses sockets through its router. In app namespaces that room is not kept; the socket
 * is still listed (namespace-wide emits reach it) and any other room works as usual. Other namespaces
 * (the console's) use the adapter unchanged.
 */
function withoutOwnRooms(Base: RoomAdapterClass): RoomAdapterClass {
  return class AppAdapter extends Base {
    override addAll(id: string, rooms: Set<string>): void {
      if (!APP_NAMESPACE_RE.test(this.nsp.name)) {
        super.addAll(id, rooms);
        return;
      }
      const others = new Set<string>();
      for (const room of rooms) if (room !== id) others.add(room);
      if (others.size === 0) {
        if (!this.sids.has(id)) this.sids.set(id, NO_ROOMS);
        return;
      }
      if (this.sids.get(id) === NO_ROOMS) this.sids.delete(id);
      super.addAll(id, others);
    }
  };
}

/** A connected socket as the router sees it. */
export class SocketConn implements Conn, RateState {
  readonly topics = new Set<string>();
  private watchSet: Set<string> | undefined;
  /** The client -> server event limit's state (see rate.ts). */
  eventTat = 0;
  eventsRefused = 0;
  refusedSince = 0;
  retryTat = 0;

  /** Topics whose counts this connection watches; made at first use (most connections watch none). */
  get watches(): Set<string> {
    this.watchSet ??= new Set();
    return this.watchSet;
  }

  /** Subscriptions plus count watches of this connection (without making the watch set). */
  get subscriptionCount(): number {
    return this.topics.size + (this.watchSet?.size ?? 0);
  }
  private dropped = false;

  constructor(
    readonly socket: Socket,
    readonly appId: string,
    readonly clientId: string,
    readonly deviceId: string | undefined,
    private readonly maxBuffer: number,
    private readonly onSlow: (conn: SocketConn) => void,
  ) {}

  get id(): string {
    return this.socket.id;
  }

  /**
   * Frames written while a recovery replays history; sent after the replay, in order. `depth` counts the
   * recoveries under way: two can overlap on one connection (the SDK's resync and an app's `subscribe`,
   * both `recover`), and the first to end must not let new frames overtake what the other replays.
   */
  private held: { frames: Frame[]; depth: number } | undefined;

  /** Holds live frames back (recovery: replayed history must come before anything new). */
  hold(): void {
    if (this.held) this.held.depth++;
    else this.held = { frames: [], depth: 1 };
  }

  /** Ends one `hold`; the last one sends the held frames and resumes normal writes. */
  release(): void {
    const held = this.held;
    if (!held || --held.depth > 0) return;
    this.held = undefined;
    for (const f of held.frames) this.sendNow(f);
  }

  write(frame: Frame): boolean {
    if (this.dropped) return false;
    if (this.held) {
      this.held.frames.push(frame);
      return true;
    }
    return this.sendNow(frame);
  }

  /**
   * Answers the client's event `id` (a Socket.IO ACK) through the same queue as notifications: never
   * held (an ack is not part of the replayed stream) and never ahead of frames queued before it. `args`
   * must be JSON (Herald's handlers answer plain objects): Socket.IO's binary acks are not made here.
   */
  sendAck(id: number, argsJson: string): void {
    this.sendNow(encodeAck(this.appId, id, argsJson));
  }

  /** Writes at once, also while held (the replay itself). */
  sendNow(frame: Frame): boolean {
    if (this.dropped) return false;
    const engine = this.socket.conn as unknown as EngineSocket;
    if (engine.readyState !== 'open') return false;
    // With frames queued in this turn the transport was looked at when the first was queued and only
    // the queue grew since (no need to walk to the TCP socket's state again for each notification).
    const buffered =
      engine[OUT] !== undefined
        ? engine[OUT_BYTES]
        : (engine.transport.socket?.bufferedAmount ?? 0) + engine.writeBuffer.length * frame.packet.length;
    if (buffered > this.maxBuffer) {
      this.dropped = true;
      this.onSlow(this);
      return false;
    }
    queueFrame(engine, frame, buffered);
    return true;
  }

  /**
   * Whether `frame` can be sent with what is pending for this connection at most half its limit (true
   * when the connection is gone: nothing to wait for). See `roomFor`.
   */
  hasRoomFor(frame: Frame): boolean {
    const engine = this.socket.conn as unknown as EngineSocket;
    if (this.dropped || engine.readyState !== 'open') return true;
    const pending =
      engine[OUT] !== undefined
        ? engine[OUT_BYTES]
        : (engine.transport.socket?.bufferedAmount ?? 0) + engine.writeBuffer.length * frame.packet.length;
    return pending === 0 || pending + frame.ws[0].length <= this.maxBuffer / 2;
  }

  /**
   * Resolves when `hasRoomFor(frame)`, or at once from `deadline` (ms since the epoch) on. A recovery
   * replays a stream's missed notifications in one go, faster than any socket takes them: without a
   * pause, a replay larger than MAX_SOCKET_BUFFER dropped a client reading at full speed as "slow" (and
   * its `recover` never got an answer). A client that reads nothing is still dropped by the limit once
   * the deadline has passed.
   */
  async roomFor(frame: Frame, deadline: number): Promise<void> {
    while (!this.hasRoomFor(frame) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Acks of app sockets leave as pre-encoded frames through the connection's queue instead of Socket.IO's
 * encoder and engine.io's packet path: in the turn of a payment commit a machine's ack and its
 * `dataUpdate` then share one socket write, and an ack costs a string and a buffer, not a packet
 * object, a binary check, an engine.io packet and a ws frame of its own. Other sockets (the console's)
 * and arguments that are not JSON keep Socket.IO's own ack.
 */
type AckFactory = (this: Socket, id: number) => (...args: unknown[]) => void;
const socketProto = Socket.prototype as unknown as { ack: AckFactory };
const ioAck = socketProto.ack;
socketProto.ack = function (this: Socket, id: number) {
  const conn = (this.data as { conn?: unknown } | undefined)?.conn;
  if (!(conn instanceof SocketConn)) return ioAck.call(this, id);
  let sent = false;
  return (...args: unknown[]): void => {
    if (sent) return;
    sent = true;
    let json: string;
    try {
      json = JSON.stringify(args);
    } catch {
      ioAck.call(this, id)(...args);
      return;
    }
    conn.sendAck(id, json);
  };
};

/** What an event handler gets and returns. */
export interface EventContext {
  conn: SocketConn;
  socket: Socket;
}
export type EventHandler = (ctx: EventContext, args: unknown[]) => Promise<Record<string, unknown>>;

export interface GatewayDeps {
  config: Config;
  access: AccessControl;
  router: Router;
  counts: CountNotifier;
  metrics: Metrics;
  logger: Logger;
  /**
   * Runs after authentication and before the client's connect is answered (cluster mode: make the
   * socket reachable from every node first). Resolves with a function called once the socket is in
   * the router.
   */
  admit?: (appId: string, clientId: string) => Promise<() => void>;
}

type Ack = (response: { ok: true } & Record<string, unknown>) => void;
type ErrAck = (response: { ok: false; error: ErrorBody }) => void;

function clientKey(appId: string, clientId: string): string {
  return `${appId}\u0000${clientId}`;
}

/**
 * MAX_CONNECTIONS, or when 0 the open-files limit less what the node keeps open besides connections:
 * past that limit accept() fails (EMFILE) for everything, HTTP API and probes included.
 */
export function connectionCap(configured: number, files: OpenFilesLimit | undefined): number {
  if (configured > 0) return configured;
  if (files && Number.isFinite(files.soft)) return Math.max(1, files.soft - OPEN_FILES_RESERVED);
  return Number.POSITIVE_INFINITY;
}

function toErrorBody(err: unknown): ErrorBody {
  if (isHeraldError(err)) return err.toBody();
  return { code: 'internal_error', message: 'Internal error; it has been logged.' };
}

/**
 * The realtime gateway: Socket.IO with one namespace per app (`/<appId>`), identity at handshake,
 * the subscription protocol, and per-socket delivery through the router.
 */
export class Gateway {
  readonly io: Server;
  private readonly apps: Namespace;
  private readonly handlers = new Map<string, EventHandler>();
  private accepting = true;
  private readonly gcPacer: ConnectGcPacer;
  /** CLIENT_EVENT_RATE / CLIENT_EVENT_BURST; undefined when the rate is 0 (no limit). */
  private readonly limiter: EventRateLimiter | undefined;
  /** Engine.IO connections this node accepts at once (MAX_CONNECTIONS, or from the open-files limit). */
  readonly maxConnections: number;
  /** Connections per app and client id held or being admitted (MAX_CONNECTIONS_PER_CLIENT; not anonymous). */
  private readonly perClient = new Map<string, number>();
  private lastFullWarning = 0;

  constructor(
    httpServer: HttpServer,
    private readonly deps: GatewayDeps,
  ) {
    const { config } = deps;
    this.gcPacer = new ConnectGcPacer(config.connectGcEvery);
    this.limiter =
      config.clientEventRate > 0
        ? new EventRateLimiter(config.clientEventRate, config.clientEventBurst)
        : undefined;
    this.maxConnections = connectionCap(config.maxConnections, openFilesLimit());
    const origins = config.corsOrigins;
    this.io = new Server(httpServer, {
      cors: { origin: origins.includes('*') ? true : origins, credentials: true },
      pingInterval: config.pingInterval,
      pingTimeout: config.pingTimeout,
      maxHttpBufferSize: config.maxClientMessageBytes,
      cleanupEmptyChildNamespaces: true,
      serveClient: false,
      perMessageDeflate: false,
      httpCompression: false,
      // Called for new connections only (a handshake), not for the requests of connected ones.
      allowRequest: (_req, callback) => {
        if (!this.accepting) callback('shutting_down', false);
        else if (this.io.engine.clientsCount >= this.maxConnections) {
          this.refusedFull();
          callback('too_many_connections', false);
        } else callback(null, true);
      },
    });
    this.io.engine.on('connection', prepareEngineSocket);
    this.io.adapter(
      withoutOwnRooms(Object.getPrototypeOf(this.io.of('/').adapter).constructor) as unknown as Parameters<
        Server['adapter']
      >[0],
    );
    // The main namespace is not an app: tell clients where to go.
    this.io.of('/').use((_socket, next) => {
      next(
        this.connectError(
          new HeraldError('invalid_app_id', 'Connect to /<appId>, e.g. io("http://host:3000/my-app").'),
        ),
      );
    });
    this.apps = this.io.of(APP_NAMESPACE_RE);
    this.apps.use((socket, next) => {
      this.authenticate(socket).then(
        async (identity) => {
          socket.data.identity = identity;
          const counted = this.admitClient(socket.nsp.name.slice(1), identity.clientId);
          if (counted === false) {
            next(
              this.connectError(
                new HeraldError(
                  'too_many_connections',
                  `Client ${JSON.stringify(identity.clientId)} holds ${config.maxConnectionsPerClient} connections to this node, as many as one client may (MAX_CONNECTIONS_PER_CLIENT); close one first.`,
                ),
              ),
            );
            return;
          }
          if (counted !== undefined) {
            // Counted from now; given back at disconnect, or here if the socket never connects (its
            // client left meanwhile: Socket.IO connects it in the next tick or not at all).
            setImmediate(() => {
              if (socket.data.conn === undefined) this.releaseClient(counted);
            });
          }
          if (deps.admit) {
            socket.data.admitted = await deps
              .admit(socket.nsp.name.slice(1), identity.clientId)
              .catch(() => undefined);
          }
          next();
        },
        (err: unknown) => {
          if (!isHeraldError(err)) deps.logger.error({ err }, 'handshake failed');
          next(this.connectError(err));
        },
      );
    });
    this.apps.on('connection', (socket) => this.onConnection(socket));

    this.handle('subscribe', async ({ conn }, args) => {
      const topics = parseTopics(args[0], config.maxTopicsPerCall);
      this.subscribe(conn, topics);
      return { topics: [...topics] };
    });
    this.handle('unsubscribe', async ({ conn }, args) => {
      const topics = parseTopics(args[0], config.maxTopicsPerCall);
      deps.router.unsubscribe(conn, topics);
      return { topics };
    });
    this.handle('subscribeCount', async ({ conn }, args) => {
      const topics = parseTopics(args[0], config.maxTopicsPerCall);
      this.checkCap(conn, topics.filter((t) => !conn.watches.has(t)).length);
      deps.router.watch(conn, topics);
      const counts = await deps.counts.sendCurrent(conn, topics);
      return { topics, counts };
    });
    this.handle('unsubscribeCount', async ({ conn }, args) => {
      const topics = parseTopics(args[0], config.maxTopicsPerCall);
      deps.router.unwatch(conn, topics);
      return { topics };
    });
  }

  /** Registers a client -> server event. The handler's result is sent as `{ ok: true, ...result }`. */
  handle(event: string, handler: EventHandler): void {
    this.handlers.set(event, handler);
  }

  /** Subscribes a connection to validated topics, all or none (the per-connection cap applies). */
  subscribe(conn: SocketConn, topics: readonly string[]): void {
    this.checkCap(conn, topics.filter((t) => !conn.topics.has(t)).length);
    this.deps.router.subscribe(conn, topics);
  }

  private checkCap(conn: SocketConn, adding: number): void {
    const max = this.deps.config.maxTopicsPerConnection;
    const held = conn.subscriptionCount;
    if (held + adding > max) {
      throw new HeraldError(
        'subscription_limit',
        `This connection holds ${held} subscriptions and count watches; the limit is ${max}. Unsubscribe first.`,
      );
    }
  }

  private connectError(err: unknown): Error & { data: ErrorBody } {
    const body = toErrorBody(err);
    const e = new Error(body.message) as Error & { data: ErrorBody };
    e.data = body;
    return e;
  }

  private async authenticate(socket: Socket): Promise<ClientIdentity> {
    const appId = socket.nsp.name.slice(1);
    const { access } = this.deps;
    if (!this.accepting) throw new HeraldError('shutting_down');
    if (!access.knows(appId))
      throw new HeraldError('unknown_app', `No app ${JSON.stringify(appId)} is configured.`);
    const raw = readIdentity({
      headers: socket.handshake.headers,
      auth: (socket.handshake.auth ?? {}) as Record<string, unknown>,
      query: socket.handshake.query as Record<string, unknown>,
    });
    const granted = await access.verifyClient(appId, raw.token);
    if (granted) {
      if (raw.deviceId !== undefined && granted.deviceId !== undefined && raw.deviceId !== granted.deviceId) {
        throw new HeraldError('invalid_token', 'The deviceId does not match the one in the token.');
      }
      if (raw.clientId !== undefined && raw.clientId !== granted.clientId) {
        throw new HeraldError('invalid_token', 'The clientId does not match the token subject.');
      }
      const identity: ClientIdentity = {
        clientId: granted.clientId,
        deviceId: granted.deviceId ?? raw.deviceId,
      };
      if (granted.merchantId !== undefined) identity.merchantId = granted.merchantId;
      return identity;
    }
    // Open mode: a client without an id is anonymous; it can subscribe and watch counts.
    if (raw.clientId?.startsWith('anon:')) {
      throw new HeraldError(
        'invalid_client_id',
        'Client ids starting with "anon:" are reserved for anonymous clients.',
      );
    }
    return { clientId: raw.clientId ?? `anon:${socket.id}`, deviceId: raw.deviceId };
  }

  private onConnection(socket: Socket): void {
    const { router, config } = this.deps;
    const identity = socket.data.identity as ClientIdentity;
    const conn = new SocketConn(
      socket,
      socket.nsp.name.slice(1),
      identity.clientId,
      identity.deviceId,
      config.maxSocketBuffer,
      this.onSlow,
    );
    socket.data.conn = conn;
    router.add(conn);
    const admitted = socket.data.admitted as (() => void) | undefined;
    if (admitted) {
      socket.data.admitted = undefined;
      admitted();
    }
    // Shared listeners (`this` is the socket), not closures made for each connection.
    socket.on('disconnect', this.onDisconnect);
    socket.onAny(this.onEvent);
    // Its listeners are set: compact shapes for what an idle connection keeps (see compact.ts).
    compactConnection(socket);
    if (this.gcPacer.connected()) this.deps.metrics.connectGc.inc();
  }

  /** A connection whose send buffer is full: counted, logged, disconnected. */
  private readonly onSlow = (c: SocketConn): void => {
    this.deps.metrics.slowClients.inc();
    this.deps.logger.warn(
      { appId: c.appId, clientId: c.clientId, socketId: c.id },
      'closing a connection whose send buffer is full',
    );
    setImmediate(() => c.socket.disconnect(true));
  };

  private readonly onDisconnect = ((gateway: Gateway) =>
    function (this: Socket): void {
      const conn = this.data.conn as SocketConn | undefined;
      if (conn) {
        gateway.deps.router.remove(conn);
        if (gateway.countsClient(conn.clientId)) gateway.releaseClient(clientKey(conn.appId, conn.clientId));
      }
    })(this);

  private countsClient(clientId: string): boolean {
    return this.deps.config.maxConnectionsPerClient > 0 && !clientId.startsWith('anon:');
  }

  /**
   * Counts a connection of a client id: its key when counted, undefined when not counted (anonymous, or
   * no cap), false when the client already holds MAX_CONNECTIONS_PER_CLIENT connections here.
   */
  private admitClient(appId: string, clientId: string): string | undefined | false {
    if (!this.countsClient(clientId)) return undefined;
    const key = clientKey(appId, clientId);
    const held = this.perClient.get(key) ?? 0;
    if (held >= this.deps.config.maxConnectionsPerClient) {
      this.deps.metrics.connectionsRefused.inc({ reason: 'client' });
      return false;
    }
    this.perClient.set(key, held + 1);
    return key;
  }

  private releaseClient(key: string): void {
    const held = this.perClient.get(key) ?? 0;
    if (held <= 1) this.perClient.delete(key);
    else this.perClient.set(key, held - 1);
  }

  /** Connections a client id holds here (counted ones only); for tests and the console. */
  clientConnections(appId: string, clientId: string): number {
    return this.perClient.get(clientKey(appId, clientId)) ?? 0;
  }

  /** A handshake refused at MAX_CONNECTIONS: counted, and logged once a minute at most. */
  private refusedFull(): void {
    this.deps.metrics.connectionsRefused.inc({ reason: 'node' });
    const now = Date.now();
    if (now - this.lastFullWarning < 60_000) return;
    this.lastFullWarning = now;
    this.deps.logger.warn(
      { connections: this.io.engine.clientsCount, max: this.maxConnections },
      'this node holds MAX_CONNECTIONS connections: new ones are refused (too_many_connections) until some close',
    );
  }

  private readonly onEvent = ((gateway: Gateway) =>
    function (this: Socket, event: string, ...args: unknown[]): void {
      gateway.dispatch(this, event, args);
    })(this);

  /** A client -> server event: its handler's result or error goes to the ack (or an `error` event). */
  private dispatch(socket: Socket, event: string, args: unknown[]): void {
    const conn = socket.data.conn as SocketConn;
    const last = args[args.length - 1];
    const ack = typeof last === 'function' ? (args.pop() as Ack & ErrAck) : undefined;
    if (this.limiter) {
      const verdict = this.limiter.take(conn, performance.now());
      if (!verdict.ok) {
        this.refuse(socket, conn, event, ack, verdict);
        return;
      }
    }
    const handler = this.handlers.get(event);
    if (!handler) {
      this.reply(
        socket,
        event,
        ack,
        new HeraldError('unknown_event', `Unknown event ${JSON.stringify(event)}.`),
      );
      return;
    }
    handler({ conn, socket }, args).then(
      (result) => ack?.({ ok: true, ...result }),
      (err: unknown) => {
        if (!isHeraldError(err))
          this.deps.logger.error(
            { err, appId: conn.appId, clientId: conn.clientId, event },
            'event handler failed',
          );
        this.reply(socket, event, ack, err);
      },
    );
  }

  /**
   * An event over the connection's limit: not handled; its ack answers `rate_limited`, or (no ack) an
   * `error` event at most once a second; a connection that floods past the answers is closed.
   */
  private refuse(
    socket: Socket,
    conn: SocketConn,
    event: string,
    ack: ErrAck | undefined,
    verdict: { retryAfterMs: number; notice: boolean; close: boolean },
  ): void {
    const { metrics, logger, config } = this.deps;
    const { retryAfterMs, close } = verdict;
    metrics.clientEventsRefused.inc();
    if (ack || verdict.notice) {
      const err = new HeraldError(
        'rate_limited',
        `This connection sends more than ${config.clientEventRate} events per second (CLIENT_EVENT_RATE, ` +
          `bursts of ${config.clientEventBurst}): the event was not handled. Send it again after retryAfterMs.`,
        { retryAfterMs },
      );
      this.reply(socket, event, ack, err);
    }
    if (close) {
      metrics.floodingClients.inc();
      logger.warn(
        { appId: conn.appId, clientId: conn.clientId, socketId: conn.id, refused: conn.eventsRefused },
        'closing a connection that keeps sending events over CLIENT_EVENT_RATE',
      );
      // After the packets being dispatched now, as for a slow client.
      setImmediate(() => socket.disconnect(true));
    }
  }

  private reply(socket: Socket, event: string, ack: ErrAck | undefined, err: unknown): void {
    const body = toErrorBody(err);
    this.deps.metrics.clientErrors.inc({ code: body.code });
    if (ack) ack({ ok: false, error: body });
    else socket.emit('error', { ...body, event });
  }

  /**
   * Asks every client of this node to catch up on its streams (`resync`; the SDK then recovers from the
   * positions it holds): notifications may have passed it by (cluster: the node's subscription to the
   * other nodes was interrupted). Sent in slices, a turn of the event loop each.
   */
  hintResync(reason: string): void {
    const conns = [...this.deps.router.allConns()] as SocketConn[];
    // The clients answer at a random moment within `spreadMs`: a second, one more per 1,000 sockets of
    // this node (every other node may be asking its own clients at the same moment).
    const spreadMs = Math.min(60_000, 1000 + conns.length);
    const slice = (from: number) => {
      const to = Math.min(conns.length, from + RESYNC_SLICE);
      for (let i = from; i < to; i++) {
        const s = (conns[i] as SocketConn).socket;
        if (s.connected) s.emit('resync', { reason, spreadMs });
      }
      if (to < conns.length) setImmediate(slice, to);
    };
    if (conns.length > 0) slice(0);
  }

  /** Stops accepting connections, asks every client to reconnect elsewhere, and closes them. */
  async drain(): Promise<void> {
    this.accepting = false;
    for (const conn of this.deps.router.allConns()) {
      const s = (conn as SocketConn).socket;
      // A transport close (not a server disconnect) makes socket.io-client reconnect by itself.
      s.emit('serverShutdown', { reconnect: true });
    }
    // Let the shutdown notices reach the sockets before their transports close.
    await new Promise((r) => setTimeout(r, 50));
    // Every Engine.IO connection, not only app sockets: other namespaces (the console) and clients that
    // joined none yet would otherwise keep the HTTP server from closing.
    const engine = this.io.engine as unknown as { clients: Record<string, EngineSocket> };
    const clients = Object.values(engine.clients);
    const websockets = clients.flatMap((c) => (c.transport.socket?.terminate ? [c.transport.socket] : []));
    for (const client of clients) client.close();
    // A client that does not answer the WebSocket close handshake (gone without a FIN) would hold the
    // shutdown up for the ws close timeout (30 s): after a grace period its connection is cut.
    const open = () => websockets.filter((ws) => ws.readyState !== WS_CLOSED);
    const deadline = Date.now() + DRAIN_GRACE_MS;
    while (open().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    for (const ws of open()) ws.terminate?.();
  }

  async close(): Promise<void> {
    this.accepting = false;
    await new Promise<void>((resolve) => {
      this.io.close(() => resolve());
    });
  }
}
