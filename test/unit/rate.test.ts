import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EventRateLimiter, type RateState } from '../../src/gateway/rate.js';

const fresh = (): RateState => ({ eventTat: 0, eventsRefused: 0, refusedSince: 0, retryTat: 0 });

describe('EventRateLimiter (client events per connection)', () => {
  it('lets a burst through at once, then refuses with the wait until the next event passes', () => {
    const limiter = new EventRateLimiter(10, 5); // one event per 100 ms, 5 at once
    const s = fresh();
    const t0 = 1_000;
    for (let i = 0; i < 5; i++) assert.deepEqual(limiter.take(s, t0), { ok: true }, `event ${i}`);
    const refused = limiter.take(s, t0 + 40);
    assert.equal(refused.ok, false);
    // 40 ms after the burst: 60 ms to go.
    assert.ok(!refused.ok && refused.retryAfterMs === 60 && !refused.close);
    // After the wait one event passes, and the next is refused again.
    assert.deepEqual(limiter.take(s, t0 + 100), { ok: true });
    const again = limiter.take(s, t0 + 100);
    assert.ok(!again.ok && again.retryAfterMs === 100);
    assert.equal(s.eventsRefused, 2);
  });

  it('gives refused events successive slots, so each passes when sent again after its retryAfterMs', () => {
    const limiter = new EventRateLimiter(10, 5);
    const s = fresh();
    const t0 = 1_000;
    for (let i = 0; i < 5; i++) limiter.take(s, t0);
    const waits = [0, 1, 2].map(() => {
      const v = limiter.take(s, t0);
      return v.ok ? -1 : v.retryAfterMs;
    });
    assert.deepEqual(waits, [100, 200, 300]);
    for (const w of waits) assert.deepEqual(limiter.take(s, t0 + w), { ok: true }, `after ${w} ms`);
    // The queue of slots is used up: the next refusal waits one interval from the last event.
    const next = limiter.take(s, t0 + 300);
    assert.ok(!next.ok && next.retryAfterMs === 100);
  });

  it('holds the average rate over a long run of events sent as fast as possible', () => {
    const limiter = new EventRateLimiter(50, 10);
    const s = fresh();
    let passed = 0;
    // One event every millisecond for 10 s: 10 at once, then 50 per second.
    for (let t = 1; t <= 10_000; t++) if (limiter.take(s, t).ok) passed++;
    assert.ok(passed >= 10 + 499 && passed <= 10 + 501, `passed ${passed}`);
  });

  it('closes a connection with more than `burst` refusals in one second, once', () => {
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

    assert.equal(f.eventsRefused, 10);
  });

  it('never closes a client that sends each refused event again after its retryAfterMs, with heartbeats competing', () => {
    // Burst 10: a client sends 15 events at once (5 refused), and a heartbeat every 200 ms that competes
    // for the slots. Before refused events got slots of their own, all five came back together, four
    // were refused again, and so on: 5 + 4 + 4 ... refusals within a second, and the client was closed.
    const limiter = new EventRateLimiter(10, 10);
    const s = fresh();
    const t0 = 10_000;
    type Pending = { at: number; seq: number };
    const queue: Pending[] = [];
    let seq = 0;
    for (let i = 0; i < 15; i++) queue.push({ at: t0, seq: seq++ });
    for (let t = t0 + 200; t < t0 + 5_000; t += 200) queue.push({ at: t, seq: seq++ });
    let passed = 0;
    let refusals = 0;
    let closed = false;
    while (queue.length > 0) {
      queue.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const e = queue.shift() as Pending;
      const v = limiter.take(s, e.at);
      if (v.ok) passed++;
      else {
        refusals++;
        closed ||= v.close;
        assert.ok(v.retryAfterMs > 0);
        queue.push({ at: e.at + v.retryAfterMs, seq: e.seq });
      }
    }
    assert.equal(passed, seq);
    assert.equal(closed, false);
    // Each event over the burst is refused about once, not once per round.
    assert.ok(refusals <= 5 + 24, `refusals ${refusals}`);
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
