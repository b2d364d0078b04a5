import type { Presence } from '../bus/types.js';
import { isHeraldError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { MerchantNotifyInput } from '../webhooks/index.js';
import type { Notification } from './types.js';

/** The part of the webhook engine the offline fallback uses. */
export interface OfflineSink {
  enqueue(
    input: MerchantNotifyInput,
    options?: { wrapDepth?: number },
  ): Promise<{ id: string; duplicate: boolean }>;
}

/** A user's forward, or a whole notification whose users' presence could not be read yet. */
type Pending =
  | { kind: 'forward'; n: Notification; userId: string; since: number }
  | { kind: 'presence'; n: Notification; since: number };

export interface OfflineForwarderOptions {
  url: string;
  presence: Presence;
  sink: OfflineSink;
  logger: Logger;
  /**
   * Users of a notification whose forward was stored (`forwarded`), will not be (`failed`: the webhook
   * engine refused it, or its store stayed down past the retry time, or the retry queue was full), or
   * were not looked at because presence stayed unreadable (`unknown`: Redis away in a cluster).
   */
  onResult?: (result: 'forwarded' | 'failed' | 'unknown', users: number) => void;
  /** Forwards (users) and notifications waiting to be tried again, at most. @default 10000 */
  maxPending?: number;
  /** How long a forward is tried again before it counts as failed. @default 10 minutes */
  retryForMs?: number;
  /** First wait after a failure; doubled after each failure in a row, up to `maxDelayMs`. @default 1000 */
  initialDelayMs?: number;
  /** @default 30000 */
  maxDelayMs?: number;
}

/** Forwards taken from the retry queue per turn of the event loop. */
const RETRY_SLICE = 200;

/**
 * Offline fallback: a notification addressed to users, some of whom have no connected device anywhere,
 * is forwarded for each of them to OFFLINE_WEBHOOK_URL through the webhook engine (durable, retried,
 * signed), so the application can send its own mobile push. Payload:
 * `{ type: 'offline_notification', appId, userId, id, ts, data }`.
 *
 * A forward the webhook store cannot take now (`store_unavailable`, any 5xx-class or unexpected error),
 * and a notification whose users' presence cannot be read (Redis away), wait in a bounded queue in
 * memory and are tried again, oldest first, with a back-off while the failures go on, for `retryForMs`.
 * While the queue is not empty new forwards join it rather than try a store known to fail. Each forward
 * carries the idempotency key `offline:<id>:<userId>`, so one stored twice is sent once. A forward the
 * engine refuses (4xx-class: too large, bad URL) is not tried again.
 */
export class OfflineForwarder {
  private readonly queue: Pending[] = [];
  private timer: NodeJS.Timeout | undefined;
  private delay: number;
  private draining = false;
  private stopped = false;
  private readonly maxPending: number;
  private readonly retryForMs: number;
  private readonly initialDelayMs: number;
  private readonly maxDelayMs: number;
  private lastQueueFull = 0;

  constructor(private readonly deps: OfflineForwarderOptions) {
    this.maxPending = deps.maxPending ?? 10_000;
    this.retryForMs = deps.retryForMs ?? 600_000;
    this.initialDelayMs = deps.initialDelayMs ?? 1000;
    this.maxDelayMs = deps.maxDelayMs ?? 30_000;
    this.delay = this.initialDelayMs;
  }

  /** Forwards and notifications waiting to be tried again. */
  get pending(): number {
    return this.queue.length;
  }

  /** Called after each notification is published. Never throws. */
  forward(n: Notification): void {
    const users = n.users;
    if (this.stopped || !users || users.length === 0) return;
    if (this.queue.length > 0) {
      this.push({ kind: 'presence', n, since: Date.now() }, users.length);
      return;
    }
    void this.attempt({ kind: 'presence', n, since: Date.now() }).then((ok) => {
      if (!ok) this.schedule();
    });
  }

  /** Stops retrying; what still waits counts as failed (or unknown). */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const left = this.queue.splice(0);
    if (left.length === 0) return;
    this.count(left);
    this.deps.logger.warn({ pending: left.length }, 'offline fallback: stopping with forwards not stored');
  }

  private count(items: Pending[]): void {
    let failed = 0;
    let unknown = 0;
    for (const p of items) {
      if (p.kind === 'forward') failed++;
      else unknown += p.n.users?.length ?? 0;
    }
    if (failed) this.deps.onResult?.('failed', failed);
    if (unknown) this.deps.onResult?.('unknown', unknown);
  }

  private push(p: Pending, users: number): void {
    if (this.queue.length >= this.maxPending) {
      this.deps.onResult?.(p.kind === 'forward' ? 'failed' : 'unknown', p.kind === 'forward' ? 1 : users);
      const now = Date.now();
      if (now - this.lastQueueFull > 5000) {
        this.lastQueueFull = now;
        this.deps.logger.warn(
          { pending: this.queue.length, id: p.n.id },
          'offline fallback: retry queue full, forward dropped',
        );
      }
      return;
    }
    this.queue.push(p);
  }

  /**
   * Tries one item. Returns false when it must be tried again later (queued): the store or presence is
   * failing now. Outcomes are counted here.
   */
  private async attempt(p: Pending): Promise<boolean> {
    const { deps } = this;
    const n = p.n;
    if (p.kind === 'presence') {
      const users = n.users ?? [];
      let online: Set<string>;
      try {
        online = await deps.presence.online(n.appId, users);
      } catch (err) {
        if (Date.now() - p.since >= this.retryForMs || this.stopped) {
          deps.onResult?.('unknown', users.length);
          deps.logger.warn(
            { err: (err as Error).message, id: n.id, appId: n.appId, users: users.length },
            'offline fallback: presence unavailable, nothing forwarded',
          );
        } else this.push(p, users.length);
        return false;
      }
      let ok = true;
      // Each offline user on its own: one failed enqueue does not cost the others their forward.
      for (const userId of users) {
        if (online.has(userId)) continue;
        const f: Pending = { kind: 'forward', n, userId, since: p.since };
        if (!ok) this.push(f, 1);
        else ok = await this.attempt(f);
      }
      return ok;
    }
    try {
      await deps.sink.enqueue(
        {
          orderNo: n.id,
          notifyUrl: deps.url,
          merchantId: `offline:${n.appId}`,
          eventType: 'offline_notification',
          idempotencyKey: `offline:${n.id}:${p.userId}`,
          payload: {
            type: 'offline_notification',
            appId: n.appId,
            userId: p.userId,
            id: n.id,
            ts: n.ts,
            data: JSON.parse(n.data),
          },
        },
        // `data` was accepted at MAX_JSON_DEPTH; the payload wraps it once more.
        { wrapDepth: 1 },
      );
      deps.onResult?.('forwarded', 1);
      return true;
    } catch (err) {
      const permanent = isHeraldError(err) && err.status < 500;
      if (permanent || this.stopped || Date.now() - p.since >= this.retryForMs) {
        deps.onResult?.('failed', 1);
        deps.logger.warn(
          { err: (err as Error).message, id: n.id, appId: n.appId, userId: p.userId },
          permanent ? 'offline fallback: forward refused' : 'offline fallback: forward not stored, given up',
        );
        return true;
      }
      this.push(p, 1);
      return false;
    }
  }

  private schedule(): void {
    if (this.timer || this.draining || this.stopped || this.queue.length === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.drain();
    }, this.delay);
    this.timer.unref();
  }

  /** Tries the queue in order; stops at the first failure and waits longer before the next round. */
  private async drain(): Promise<void> {
    this.draining = true;
    let failed = false;
    try {
      let done = 0;
      while (this.queue.length > 0 && !this.stopped) {
        const p = this.queue.shift() as Pending;
        const before = this.queue.length;
        if (!(await this.attempt(p))) {
          // What it put back went to the end: first again, so the order stays.
          this.queue.unshift(...this.queue.splice(before));
          failed = true;
          break;
        }
        if (++done % RETRY_SLICE === 0) await new Promise((r) => setImmediate(r));
      }
    } finally {
      this.draining = false;
    }
    this.delay = failed ? Math.min(this.maxDelayMs, this.delay * 2) : this.initialDelayMs;
    this.schedule();
  }
}
