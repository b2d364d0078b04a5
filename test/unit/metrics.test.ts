import assert from 'node:assert/strict';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { describe, it } from 'node:test';
import { LOOP_RESOLUTION_MS, loopDelayMs } from '../../src/metrics/index.js';

describe('event-loop delay', () => {
  it('takes the sampling interval off histogram values', () => {
    assert.equal(loopDelayMs(LOOP_RESOLUTION_MS * 1e6), 0);
    assert.equal(loopDelayMs((LOOP_RESOLUTION_MS + 2.5) * 1e6), 2.5);
    // A histogram value below the interval (the timer fired early) is no delay, not a negative one.
    assert.equal(loopDelayMs(1e6), 0);
  });

  it('a histogram of a loop that is not blocked reads each sample as at least the interval', async () => {
    // This is why the interval is taken off: an idle process would otherwise report a 10 ms p99.
    const h = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    h.enable();
    await new Promise((r) => setTimeout(r, 300));
    h.disable();
    assert.ok(h.count > 0, 'samples were taken');
    assert.ok(h.min >= (LOOP_RESOLUTION_MS - 1) * 1e6, `min ${h.min / 1e6} ms includes the interval`);
  });
});
