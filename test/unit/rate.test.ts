import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EventRateLimiter, type RateState } from '../../src/gateway/rate.js';

const fresh = (): RateState => ({ eventTat: 0, eventsRefused: 0, refusedNoticeAt: 0 });

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

  it('forgives refusals once the bucket is full again, and closes a flooder exactly once', () => {
    const limiter = new EventRateLimiter(10, 3);
    const s = fresh();
    const t0 = 5_000;
    for (let i = 0; i < 3; i++) limiter.take(s, t0);
    assert.equal(limiter.take(s, t0).ok, false);
    assert.equal(s.eventsRefused, 1);
    // Quiet long enough for the whole burst to come back: the count starts again.
    assert.equal(limiter.take(s, t0 + 1_000).ok, true);
    assert.equal(s.eventsRefused, 0);

    // A flooder: every refusal past the burst (3) closes once, at the 4th.
    const f = fresh();
    for (let i = 0; i < 3; i++) limiter.take(f, t0);
    const closes: number[] = [];
    for (let i = 1; i <= 10; i++) {
      const v = limiter.take(f, t0 + i); // 1 ms apart: never a whole interval
      if (!v.ok && v.close) closes.push(i);
    }
    assert.deepEqual(closes, [4]);
    // An event that passes while the bucket is not full does not forgive the flood.
    assert.equal(limiter.take(f, t0 + 100).ok, true);
    assert.equal(f.eventsRefused, 10);
  });

  it('tells refused events at most once a second', () => {
    const limiter = new EventRateLimiter(1, 1);
    const s = fresh();
    assert.equal(limiter.notice(s, 10), true);
    assert.equal(limiter.notice(s, 500), false);
    assert.equal(limiter.notice(s, 1_009), false);
    assert.equal(limiter.notice(s, 1_010), true);
  });

  it('refuses settings that cannot limit anything', () => {
    assert.throws(() => new EventRateLimiter(0, 10), RangeError);
    assert.throws(() => new EventRateLimiter(10, 0), RangeError);
    assert.throws(() => new EventRateLimiter(10, 1.5), RangeError);
  });
});
