import { randomUUID } from 'node:crypto';
import type { Bus, PublishOptions } from '../bus/types.js';
import { clusterUnavailable, HeraldError } from '../errors.js';
import type { History } from '../history/index.js';
import type { Receipts } from '../history/receipts.js';
import { jsonProblem } from '../input.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics/index.js';
import type { Notification } from './types.js';

/** A notification as a producer gives it (the body of POST /notify, already schema-checked). */
export interface NotifyInput {
  appId: string;
  users?: string[];
  devices?: string[];
  eventTopics?: string[];
  broadcast?: boolean;
  data: unknown;
  /** Ask receivers for delivery receipts (GET /notify/:id). */
  ack?: boolean;
  /** In-process producers only: a stable id, so a notification published again is de-duplicated by clients. */
  id?: string;
}

export interface NotifyResult {
  id: string;
  ts: number;
  delivered?: number;
}

const NON_ASCII = /[\u0080-\uffff]/g;
const escapeChar = (c: string): string => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;

/**
 * The same JSON with every character above U+007F written as a `\uXXXX` escape (each UTF-16 unit, so
 * a surrogate pair becomes two escapes, as JSON allows); such characters only occur inside JSON
 * strings, and every JSON reader parses the escapes back to the same text. Why: V8 stores a string
 * that has any character above U+00FF at two bytes per character, and a notification's data is held
 * for minutes (history, receipts) and written to every recipient. A payment notification with its
 * announcement "收款 4.00 元" is 333 characters: 680 bytes of heap as it was, 360 escaped, and pure ASCII
 * is also the cheapest string to write to a socket (no UTF-8 encoding).
 */
export function asciiJson(json: string): string {
  // replace() of a two-byte string gives a two-byte string even when every character is ASCII now;
  // a copy through latin1 makes it a one-byte string (705 bytes of heap against 379 for this example).
  return Buffer.from(json.replace(NON_ASCII, escapeChar), 'latin1').toString('latin1');
}

function unique(list: string[] | undefined): string[] | undefined {
  if (!list || list.length === 0) return undefined;
  return list.length === 1 ? list : [...new Set(list)];
}

/**
 * Turns an accepted notification into a bus message: checks the rules a schema cannot express,
 * serialises `data` once, and publishes. Used by the HTTP API and by in-process producers.
 */
export interface NotifyDeps {
  bus: Bus;
  metrics: Metrics;
  maxPayloadBytes: number;
  /** Assigns stream offsets and keeps the notification for recovery. */
  history?: History;
  /** Remembers notifications sent with `ack: true`. */
  receipts?: Receipts;
  /** Called after publishing, e.g. for the offline fallback. Must not throw. */
  afterPublish?: (n: Notification) => void;
  logger?: Logger;
}

export class NotifyService {
  private readonly bus: Bus;
  private readonly metrics: Metrics;
  private readonly maxPayloadBytes: number;
  private lastHistoryError = 0;

  constructor(private readonly deps: NotifyDeps) {
    this.bus = deps.bus;
    this.metrics = deps.metrics;
    this.maxPayloadBytes = deps.maxPayloadBytes;
  }

  /** History is for recovery; a notification without offsets is still delivered live. */
  private historyFailed(err: unknown): void {
    const now = Date.now();
    if (now - this.lastHistoryError > 5000) {
      this.lastHistoryError = now;
      this.deps.logger?.warn(
        { err: (err as Error).message },
        'history unavailable: delivering without offsets',
      );
    }
  }

  prepare(input: NotifyInput): Notification {
    const users = unique(input.users);
    const devices = unique(input.devices);
    const topics = unique(input.eventTopics);
    if (!users && !devices && !topics && input.broadcast !== true) throw new HeraldError('no_target');
    if (input.data === undefined) {
      throw new HeraldError('validation_failed', 'data is required.', [
        { path: '/data', message: 'Required' },
      ]);
    }
    for (const [field, list] of [
      ['users', input.users],
      ['devices', input.devices],
      ['eventTopics', input.eventTopics],
    ] as const) {
      const at = list ? list.findIndex((x) => !x.isWellFormed()) : -1;
      if (at >= 0) {
        throw new HeraldError('validation_failed', `${field}[${at}] contains an unpaired UTF-16 surrogate.`, [
          { path: `/${field}/${at}`, message: 'contains an unpaired UTF-16 surrogate' },
        ]);
      }
    }
    const bad = jsonProblem(input.data, false);
    if (bad) {
      throw new HeraldError('validation_failed', `data ${bad.message}.`, [
        { path: `/data${bad.path}`, message: bad.message },
      ]);
    }
    let data = JSON.stringify(input.data);
    const bytes = Buffer.byteLength(data);
    if (bytes > this.maxPayloadBytes) {
      throw new HeraldError(
        'payload_too_large',
        `data is larger than ${this.maxPayloadBytes} bytes as JSON.`,
      );
    }
    if (bytes !== data.length) data = asciiJson(data);
    const n: Notification = { v: 1, id: input.id ?? randomUUID(), appId: input.appId, ts: Date.now(), data };
    if (input.broadcast === true) n.broadcast = true;
    if (users) n.users = users;
    if (devices) n.devices = devices;
    if (topics) n.topics = topics;
    if (input.ack === true) n.ack = true;
    return n;
  }

  /**
   * `publish`, done before it returns, when every step can be (one node: history in memory, the local
   * bus, no delivery receipts to record): no promise and no turn of the microtask queue per
   * notification, which a batch of 1,000 otherwise pays 1,000 times. Undefined, having done nothing,
   * when a step is asynchronous (the caller then uses `publish`). Throws what `publish` rejects with.
   */
  publishNow(input: NotifyInput): NotifyResult | undefined {
    const history = this.deps.history;
    const publishNow = this.bus.publishNow;
    if (publishNow === undefined || (history && history.appendNow === undefined)) return undefined;
    if (input.ack === true && this.deps.receipts) return undefined;
    const n = this.prepare(input);
    if (history) {
      try {
        history.appendNow?.(n);
      } catch (err) {
        this.historyFailed(err);
      }
    }
    const delivered = publishNow.call(this.bus, n);
    this.deps.afterPublish?.(n);
    this.metrics.published.inc({ app: n.appId });
    return { id: n.id, ts: n.ts, delivered };
  }

  /**
   * Validates and publishes a notification. With `requireCluster` (see PublishOptions) a cluster node
   * that cannot reach Redis rejects with `cluster_unavailable` having delivered it nowhere, instead of
   * delivering it to its own sockets only.
   */
  async publish(input: NotifyInput, opts?: PublishOptions): Promise<NotifyResult> {
    const n = this.prepare(input);
    const strict = opts?.requireCluster === true;
    // Refused before anything is remembered (receipts) or sent.
    if (strict && !this.bus.reachable()) throw clusterUnavailable();
    if (n.ack && this.deps.receipts) await this.deps.receipts.expect(n);
    const history = this.deps.history;
    // A cluster bus appends to the history and publishes in one Redis call.
    const recorded = history ? this.bus.publishRecorded?.(n, history) : undefined;
    let delivered: number | undefined;
    if (recorded) {
      try {
        delivered = await recorded;
      } catch (err) {
        // Nothing was appended, sent or delivered (see Bus.publishRecorded).
        if (strict) throw clusterUnavailable(err);
        this.historyFailed(err);
        delivered = await this.bus.publish(n);
      }
    } else {
      if (history) {
        try {
          await history.append(n);
        } catch (err) {
          this.historyFailed(err);
        }
      }
      delivered = await this.bus.publish(n, opts);
    }
    this.deps.afterPublish?.(n);
    this.metrics.published.inc({ app: n.appId });
    const result: NotifyResult = { id: n.id, ts: n.ts };
    if (delivered !== undefined) result.delivered = delivered;
    return result;
  }
}
