/**
 * The per-connection limit on client -> server events (`subscribe`, `recover`, `payment:report`, ...):
 * a client that floods a node with events (a bug in a loop, or on purpose) would otherwise take the
 * node's one thread from every other client. A generic cell rate algorithm (GCRA, the token bucket
 * written as one number per connection): `rate` events per second on average, `burst` at once.
 *
 * An event over the limit is not handled: it is answered `rate_limited` (its ack, or an `error` event,
 * at most one per second per connection so the answers do not become a flood of their own). A connection
 * that goes on sending after `burst` of its events were refused, without once letting its bucket fill
 * again, is closed (a client library reconnects; a flooder has to connect again).
 */

/** The state the limiter keeps on each connection (two numbers, no object of its own). */
export interface RateState {
  /** The theoretical arrival time (ms, `performance.now()` clock) of the next event; 0 when unused. */
  eventTat: number;
  /** Events refused since the bucket was last full. */
  eventsRefused: number;
  /** When the last `error` event about refused events was sent (ms, same clock). */
  refusedNoticeAt: number;
}

export type RateVerdict =
  /** Handle the event. */
  | { ok: true }
  /** Refuse it; `retryAfterMs` until the next event would pass; `close`: close the connection now. */
  | { ok: false; retryAfterMs: number; close: boolean };

const OK: RateVerdict = { ok: true };

export class EventRateLimiter {
  /** Milliseconds between two events at the average rate. */
  private readonly interval: number;
  /** How far ahead of now the theoretical arrival time may run (burst − 1 intervals). */
  private readonly tolerance: number;

  constructor(
    readonly rate: number,
    readonly burst: number,
  ) {
    if (!(rate > 0) || !Number.isInteger(burst) || burst < 1) {
      throw new RangeError('EventRateLimiter needs rate > 0 and an integer burst >= 1');
    }
    this.interval = 1000 / rate;
    this.tolerance = this.interval * (burst - 1);
  }

  /** Takes one event of the connection at `now` (ms). */
  take(s: RateState, now: number): RateVerdict {
    const tat = Math.max(s.eventTat, now);
    if (tat - now <= this.tolerance) {
      // The bucket was full (nothing pending): whatever was refused before is forgiven.
      if (s.eventTat <= now) s.eventsRefused = 0;
      s.eventTat = tat + this.interval;
      return OK;
    }
    s.eventsRefused++;
    return {
      ok: false,
      retryAfterMs: Math.ceil(tat - now - this.tolerance),
      // Once, at the first refusal past `burst` (the connection is closed then).
      close: s.eventsRefused === this.burst + 1,
    };
  }

  /** Whether a refused event should be told with an `error` event now (at most one per second). */
  notice(s: RateState, now: number): boolean {
    if (s.refusedNoticeAt !== 0 && now - s.refusedNoticeAt < 1000) return false;
    s.refusedNoticeAt = now;
    return true;
  }
}
