import { HeraldError } from '../errors.js';
import type { History, StreamPosition } from '../history/index.js';
import type { Receipts } from '../history/receipts.js';
import { encodeEvent, metaFor, type Notification } from '../router/index.js';
import type { Gateway, SocketConn } from './index.js';
import { isId, isTopic, parseTopics } from './validate.js';

export interface RecoveryDeps {
  gateway: Gateway;
  history: History;
  receipts: Receipts;
  maxTopicsPerCall: number;
  maxTopicsPerConnection: number;
  /** Subscribes a connection (the same checks as the `subscribe` event). */
  subscribe: (conn: SocketConn, topics: string[]) => void;
}

/** A replay waits at most this long in all for a socket to take it; then the send-buffer limit applies. */
const REPLAY_PACE_MS = 10_000;

interface StreamResult {
  recovered: boolean;
  offset: number;
  epoch: string;
  replayed: number;
  error?: string;
}

/** The streams a connection belongs to by itself: its user, its device, the app broadcast. */
function ownStreams(conn: SocketConn): string[] {
  const out = [`u:${conn.clientId}`, 'b'];
  if (conn.deviceId !== undefined) out.push(`d:${conn.deviceId}`);
  return out;
}

function member(conn: SocketConn, stream: string): boolean {
  if (stream === 'b') return true;
  if (stream.startsWith('u:')) return stream.slice(2) === conn.clientId;
  if (stream.startsWith('d:')) return stream.slice(2) === conn.deviceId;
  if (stream.startsWith('t:')) return conn.topics.has(stream.slice(2));
  return false;
}

function parsePositions(raw: unknown, max: number): Map<string, StreamPosition> {
  const out = new Map<string, StreamPosition>();
  if (raw === undefined || raw === null) return out;
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw new HeraldError(
      'invalid_arguments',
      'streams must be an object: { "<stream>": { offset, epoch } }.',
    );
  }
  const entries = Object.entries(raw as Record<string, unknown>);
  if (entries.length > max)
    throw new HeraldError('too_many_topics', `At most ${max} streams per recover call.`);
  for (const [stream, pos] of entries) {
    const p = pos as { offset?: unknown; epoch?: unknown };
    const validName =
      stream === 'b' ||
      (stream.startsWith('t:') && isTopic(stream.slice(2))) ||
      ((stream.startsWith('u:') || stream.startsWith('d:')) && isId(stream.slice(2)));
    if (
      !validName ||
      typeof p !== 'object' ||
      p === null ||
      typeof p.offset !== 'number' ||
      !Number.isSafeInteger(p.offset) ||
      p.offset < 0 ||
      typeof p.epoch !== 'string' ||
      p.epoch.length > 64
    ) {
      throw new HeraldError(
        'invalid_arguments',
        `Bad stream position for ${JSON.stringify(stream.slice(0, 60))}: expected { offset: integer >= 0, epoch: string }.`,
      );
    }
    out.set(stream, { offset: p.offset, epoch: p.epoch });
  }
  return out;
}

/**
 * Recovery after a reconnect and delivery receipts.
 *
 * `recover({ topics?, streams? })` subscribes `topics`, then, for each stream position given, replays
 * what the client missed, in order, before any new notification of that connection, and reports per
 * stream whether recovery was complete. Streams it did not give (its user, device and broadcast streams,
 * and the `topics` of this call) are answered with their current position, so the client can follow
 * them from now.
 *
 * `receipt(id | ids)` acknowledges notifications sent with `ack: true`.
 */
export function registerRecovery(deps: RecoveryDeps): void {
  const { gateway, history, receipts } = deps;

  gateway.handle('recover', async ({ conn }, args) => {
    const arg = (args[0] ?? {}) as { topics?: unknown; streams?: unknown };
    if (typeof arg !== 'object' || arg === null)
      throw new HeraldError('invalid_arguments', 'Pass { topics?, streams? }.');
    const topics = arg.topics === undefined ? [] : parseTopics(arg.topics, deps.maxTopicsPerConnection);
    const positions = parsePositions(arg.streams, deps.maxTopicsPerConnection + 3);
    // How long the replay may wait for the socket to take it (see SocketConn.roomFor).
    const paceUntil = Date.now() + REPLAY_PACE_MS;
    conn.hold();
    try {
      if (topics.length) deps.subscribe(conn, topics);
      const results: Record<string, StreamResult> = {};
      const replays: { stream: string; entries: Notification[] }[] = [];
      for (const [stream, from] of positions) {
        if (!member(conn, stream)) {
          results[stream] = { recovered: false, offset: 0, epoch: '', replayed: 0, error: 'not_subscribed' };
          continue;
        }
        let r: Awaited<ReturnType<History['since']>>;
        try {
          r = await history.since(conn.appId, stream, from);
        } catch {
          // History unreachable (Redis away): the subscription still stands; the client must reload.
          results[stream] = {
            recovered: false,
            offset: from.offset,
            epoch: from.epoch,
            replayed: 0,
            error: 'history_unavailable',
          };
          continue;
        }
        if (r.entries.length) replays.push({ stream, entries: r.entries });
        results[stream] = {
          recovered: r.recovered,
          offset: r.offset,
          epoch: r.epoch,
          replayed: r.entries.length,
        };
      }
      // Every stream is read before anything is replayed: the replay may wait for the socket (below),
      // and a notification delivered meanwhile is held, so a stream read after it would hold it too and
      // the connection would get it twice.
      for (const { stream, entries } of replays) {
        const topic = stream.startsWith('t:') ? stream.slice(2) : undefined;
        for (const n of entries) {
          const frame = encodeEvent(conn.appId, 'dataUpdate', [
            n.data,
            JSON.stringify(metaFor(n, stream, topic, true)),
          ]);
          // Paced by what the socket takes (see roomFor): a large replay is not a slow client.
          if (!conn.hasRoomFor(frame)) await conn.roomFor(frame, paceUntil);
          conn.sendNow(frame);
        }
      }
      const others = [...ownStreams(conn), ...topics.map((t) => `t:${t}`)].filter((s) => !positions.has(s));
      for (const stream of others) {
        const p = await history.position(conn.appId, stream).catch(() => undefined);
        if (p) results[stream] = { recovered: true, offset: p.offset, epoch: p.epoch, replayed: 0 };
      }
      return { topics, streams: results };
    } finally {
      conn.release();
    }
  });

  gateway.handle('receipt', async ({ conn }, args) => {
    const raw = args[0];
    const ids = typeof raw === 'string' ? [raw] : raw;
    if (
      !Array.isArray(ids) ||
      ids.length === 0 ||
      ids.length > 100 ||
      !ids.every((x) => typeof x === 'string' && x.length <= 64)
    ) {
      throw new HeraldError('invalid_arguments', 'Pass a notification id or an array of up to 100 ids.');
    }
    const at = Date.now();
    let recorded = 0;
    for (const id of ids as string[]) {
      if (
        await receipts.record(conn.appId, id, {
          clientId: conn.clientId,
          deviceId: conn.deviceId ?? null,
          at,
        })
      )
        recorded++;
    }
    return { recorded };
  });
}
