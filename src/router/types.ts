import type { Frame } from './frame.js';

/**
 * A notification as it travels from the HTTP API over the bus to every node. `data` is carried as
 * JSON text, serialised once at intake, so that no node parses or serialises it again.
 */
export interface Notification {
  v: 1;
  id: string;
  appId: string;
  /** Milliseconds since the epoch when the notification was accepted. */
  ts: number;
  users?: string[];
  devices?: string[];
  topics?: string[];
  broadcast?: boolean;
  /** The `data` object exactly as published, as JSON text. */
  data: string;
  /** Receivers acknowledge it (delivery receipts, GET /notify/:id). */
  ack?: boolean;
  /**
   * Position of this notification in each stream it was appended to: stream -> [offset, epoch]. Made with
   * `newPositions()`: stream names such as `t:order:<id>:status` are new for every order, and a plain
   * object given a new key gets a new V8 hidden class each time.
   */
  pos?: Record<string, [number, string]>;
  /**
   * The stream of the first entry of `pos` and its position, set with it by this node's history (never
   * sent: JSON leaves symbol keys out). A socket reached through that stream, the only one of a
   * notification to one user, device or topic, reads its position here: looking a stream name the
   * router has just made up in `pos` makes V8 find it in its string table first (0.6 µs per
   * notification in the batch benchmark, BENCHMARKS.md, twentieth session).
   */
  [FIRST_STREAM]?: string;
  [FIRST_POS]?: [number, string];
}

/** See `Notification[FIRST_STREAM]`. */
export const FIRST_STREAM: unique symbol = Symbol('herald.firstStream');
/** See `Notification[FIRST_STREAM]`. */
export const FIRST_POS: unique symbol = Symbol('herald.firstPos');

/** Sets the position of `n` in `stream` (with the first one's shortcut, see `Notification[FIRST_STREAM]`). */
export function setPosition(n: Notification, stream: string, pos: [number, string]): void {
  n.pos ??= newPositions();
  n.pos[stream] = pos;
  if (n[FIRST_STREAM] === undefined || n[FIRST_STREAM] === stream) {
    n[FIRST_STREAM] = stream;
    n[FIRST_POS] = pos;
  }
}

/** The position of `n` in `stream`, if it has one. */
export function positionIn(n: Notification, stream: string): [number, string] | undefined {
  return n[FIRST_STREAM] === stream ? n[FIRST_POS] : n.pos?.[stream];
}

/** What a socket of the gateway looks like to the router. */
export interface Conn {
  readonly id: string;
  readonly appId: string;
  readonly clientId: string;
  readonly deviceId: string | undefined;
  /** Topics this connection is subscribed to. */
  readonly topics: Set<string>;
  /** Topics whose counts this connection watches. */
  readonly watches: Set<string>;
  /** Writes an encoded frame; returns false when the connection is gone or was dropped as too slow. */
  write(frame: Frame): boolean;
}

export interface TopicCount {
  /** Distinct client ids subscribed to the topic. */
  count: number;
  /** Sockets subscribed to the topic. */
  connections: number;
}

/** Meta data sent as the second argument of `dataUpdate`. */
export interface Meta {
  id?: string;
  ts: number;
  topic?: string;
  /** The stream through which this socket was reached: `t:<topic>`, `u:<clientId>`, `d:<deviceId>` or `b`. */
  stream?: string;
  /** Offset of the notification in that stream (recovery). */
  offset?: number;
  /** Epoch of that stream; it changes when the stream's history is lost. */
  epoch?: string;
  /** The receiver should send a receipt (`receipt` event with the id). */
  ack?: boolean;
  /** Sent again by a recovery after a reconnect. */
  replay?: boolean;
  /**
   * The notification's positions in the other streams of this socket it belongs to (`{ stream: [offset,
   * epoch] }`): a socket reached once through `stream` also follows these, and without them it would
   * take the next offset of each for a gap.
   */
  also?: Record<string, [number, string]>;
}

/**
 * An empty `Notification.pos`. A null-prototype object is a dictionary in V8: adding a stream name
 * never seen before makes no hidden class. With `{}`, every per-order topic made one (a map, its
 * descriptors and a transition from the empty object), 32,000 in 14 s of the payments bench, and the
 * old generation they filled made GC pauses the longest stalls of that bench.
 */
export function newPositions(): Record<string, [number, string]> {
  return Object.create(null) as Record<string, [number, string]>;
}
