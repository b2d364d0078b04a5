import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EventRateLimiter, type RateState } from '../../src/gateway/rate.js';

const fresh = (): RateState => ({ eventTat: 0, eventsRefused: 0, refusedSince: 0 });

describe('EventRateLimiter (client events per connection)', () => {
  it('lets a burst through at once, then refuses with the wait until the next event passes', () => {
    const limiter = new EventRateLimiter(10, 5); // one event per 100 ms, 5 at once
    const s = fresh();
    const t0 = 1_000;
    for (let i = 0; i < 5; i++) assert.deepEqual(limiter.take(s, t0), { ok: true }, `event ${i}`);
    const refused = limiter.take(s, t0);
    assert.equal(refused.ok, false);
    assert.ok(!refused.ok && refused.retryAfterMs === 100 && !refused.close);
    // 40 ms later: 60 ms to go.
    const later = limiter.take(s, t0 + 40);
    assert.ok(!later.ok && later.retryAfterMs === 60);
    // After the wait one event passes, and the next is refused again.
    assert.deepEqual(limiter.take(s, t0 + 100), { ok: true });
    assert.equal(limiter.take(s, t0 + 100).ok, false);
    assert.equal(s.eventsRefused, 3);
  });

  it('holds the average rate over a long run of events sent as fast as possible', () => {
    const limiter = new EventRateLimiter(50, 10);
    const s = fresh();
    let passed = 0;
    // One event every millisecond for 10 s: 10 at once, then 50 per second.
    for (let t = 1; t <= 10_000; t++) if (limiter.take(s, t).ok) passed++;
    assert.ok(passed >= 10 + 499 && passed <= 10 + 501, `passed ${passed}`);
  });

  it('closes a connection with more than `burst` refusals in one second, once; a client that waits is not closed', () => {
    const limiter = new EventRateLimiter(10, 3);
    // A flooder: 3 pass, then every event 1 ms apart is refused; the 4th refusal closes, once.
    const f = fresh();
    const t0 = 5_000;
    for (let i = 0; i < 3; i++) limiter.take(f, t0);
    const closes: number[] = [];
    for (let i = 1; i <= 10; i++) {
      const v = limiter.take(f, t0 + i);
      if (!v.ok && v.close) closes.push(i);
    }
    assert.deepEqual(closes, [4]);

    // A client that sends its refused events again after retryAfterMs: its few pending events are
    // refused a few times each, fewer than `burst` in a second.
    const patient = new EventRateLimiter(10, 10);
    const w = fresh();
    let now = 10_000;
    for (let i = 0; i < 10; i++) patient.take(w, now);
    let pending = 3; // three more events to send
    let closed = false;
    for (let round = 0; round < 50 && pending > 0; round++) {
      let wait = 0;
      for (let k = 0; k < pending; k++) {
        const v = patient.take(w, now);
        if (v.ok) pending--;
        else {
          closed ||= v.close;
          wait = v.retryAfterMs;
        }
      }
      now += wait;
    }
    assert.equal(pending, 0);
    assert.equal(closed, false);
  });

  it('tells a client without acks once per one-second window of refusals', () => {
    const limiter = new EventRateLimiter(0.5, 1); // one event per 2 s
    const s = fresh();
    assert.equal(limiter.take(s, 10).ok, true);
    const notices = [20, 500, 1_019, 1_020, 1_500].map((t) => {
      const v = limiter.take(s, t);
      assert.equal(v.ok, false);
      return !v.ok && v.notice;
    });
    // All refused: a window opens at 20 and the next at 1,020.
    assert.deepEqual(notices, [true, false, false, true, false]);
  });

  it('refuses settings that cannot limit anything', () => {
    assert.throws(() => new EventRateLimiter(0, 10), RangeError);
    assert.throws(() => new EventRateLimiter(10, 0), RangeError);
    assert.throws(() => new EventRateLimiter(10, 1.5), RangeError);
  });
});
