/**
 * Memory of an idle connection: Socket.IO, engine.io and ws leave, per connection, a few objects in
 * shapes that V8 stores loosely. Once a connection is set up its listeners rarely change, so they are
 * copied into compact shapes here. Nothing observable changes: the same listeners, in the same order,
 * on the same objects; if a library adds or removes one later it works on the copy as on the original.
 *
 * - An EventEmitter's `_events` is made with `{ __proto__: null }`, which V8 keeps as a dictionary
 *   (hash table): with the 5-9 events these emitters listen to, 160-304 bytes of properties. A plain
 *   object with the same keys, then given a null prototype, has fast properties (a hidden class shared
 *   by every connection, since the keys come in the same order), ~80-110 bytes.
 * - An array that grew by `push` from `[]` has room for 17 elements (152 bytes) even when it holds 1;
 *   `slice()` makes one of its exact length.
 *
 * Measured with `npx tsx bench/tools/heap-conns.ts 3000` (BENCHMARKS.md, fifth session).
 */

type Listeners = Record<string | symbol, unknown>;

interface WithEvents {
  _events?: Listeners;
}

/** Gives an EventEmitter's listener table a compact shape (same keys, same order, null prototype). */
export function compactEvents(emitter: unknown): void {
  if (emitter === null || typeof emitter !== 'object') return;
  const e = emitter as WithEvents;
  const events = e._events;
  if (events === undefined || events === null || typeof events !== 'object') return;
  if (Object.getPrototypeOf(events) !== null) return;
  const copy: Listeners = {};
  for (const key of Reflect.ownKeys(events)) copy[key] = events[key];
  Object.setPrototypeOf(copy, null);
  e._events = copy;
}

/** Replaces `owner[key]` by an exact-length copy when it is an array (same elements, same order). */
export function compactArray(owner: unknown, key: string): void {
  if (owner === null || typeof owner !== 'object') return;
  const o = owner as Record<string, unknown>;
  const a = o[key];
  if (Array.isArray(a) && a.length > 0) o[key] = a.slice();
}

/** The per-connection objects of a Socket.IO connection over its current transport. */
interface ConnectionParts {
  conn?: {
    transport?: { socket?: unknown };
    cleanupFn?: unknown;
  };
  client?: { decoder?: { _callbacks?: unknown } };
}

/**
 * Compacts what a connected Socket.IO socket holds: its own listeners, the engine.io socket's, the
 * transport's and (WebSocket transport) the ws socket's. Call it once the connection's listeners are
 * set, and again after an upgrade to WebSocket (the new transport's listeners).
 */
export function compactConnection(socket: unknown): void {
  const s = socket as ConnectionParts;
  compactEvents(s);
  compactArray(s, '_anyListeners');
  const conn = s.conn;
  if (conn) {
    compactEvents(conn);
    compactArray(conn, 'cleanupFn');
    compactTransport(conn);
  }
  const callbacks = s.client?.decoder?._callbacks;
  if (callbacks && typeof callbacks === 'object') {
    // component-emitter (socket.io-parser's Decoder): event name prefixed with `$`, array of listeners.
    for (const key of Object.keys(callbacks)) compactArray(callbacks, key);
  }
}

/** The engine.io socket's current transport and its ws socket. */
export function compactTransport(conn: unknown): void {
  const c = conn as ConnectionParts['conn'];
  const transport = c?.transport;
  if (!transport) return;
  compactEvents(transport);
  if (transport.socket) compactEvents(transport.socket);
}
