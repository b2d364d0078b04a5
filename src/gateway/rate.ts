/**
 * The per-connection limit on client -> server events (`subscribe`, `recover`, `payment:report`, ...):
 * a client that floods a node with events (a bug in a loop, or on purpose) would otherwise take the
 * node's one thread from every other client. A generic cell rate algorithm (GCRA, the token bucket
 * written as one number per connection): `rate` events per second on average, `burst` at once.
 *
 * An event over the limit is not handled: it is answered `rate_limited` (its ack, or an `error` event at
 * most once per second, so the answers do not become a flood of their own) with `retryAfterMs`, the time
 * of a slot of its own: refused events get successive slots one interval apart, so a client with many
 * refused events that sends each again after its `retryAfterMs` has them pass one by one instead of all
 * competing for the next slot and being refused again round after round (that made a polite client with
 * a few pending events collect more than `burst` refusals within a second and be closed). A slot is a
 * hint, not a reservation: another event may take it, and the event is then refused again with a later
 * slot. A connection that has more than `burst` events refused within one second ignores the answers: it
 * is closed (a client library reconnects; a flooder has to connect again).
 */

/** The state the limiter keeps on each connection (four numbers, no object of its own). */
export interface RateState {
  /** The theoretical arrival time (ms, `performance.now()` clock) of the next event; 0 when unused. */
  eventTat: number;
  /** Events refused since `refusedSince`. */
  eventsRefused: number;
  /** Start of the current one-second window of refusals (ms, same clock); 0 before the first. */
  refusedSince: number;
  /** The slot the next refused event is told to come back at (ms, same clock); 0 when unused. */
  retryTat: number;
}

export type RateVerdict =
  /** Handle the event. */
  | { ok: true }
  /**
   * Refuse it; `retryAfterMs` until the next event would pass; `notice`: tell a client that gave no ack
   * (the first refusal of a one-second window); `close`: close the connection now (once).
   */
  | { ok: false; retryAfterMs: number; notice: boolean; close: boolean };

const OK: RateVerdict = { ok: true };
const WINDOW_MS = 1000;

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
      s.eventTat = tat + this.interval;
      return OK;
    }
    let notice = false;
    if (s.refusedSince === 0 || now - s.refusedSince >= WINDOW_MS) {
      s.refusedSince = now;
      s.eventsRefused = 0;
      notice = true;
    }
    s.eventsRefused++;
    // The first free slot is when the next event would pass; later refusals queue behind it.
    const slot = Math.max(s.retryTat, tat - this.tolerance);
    s.retryTat = slot + this.interval;
    return {
      ok: false,
      retryAfterMs: Math.ceil(slot - now),
      notice,
      // Once, at the first refusal past `burst` in the window (the connection is closed then).
      close: s.eventsRefused === this.burst + 1,
    };
  }
}
