import assert from 'node:assert/strict';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { describe, it } from 'node:test';
import { LOOP_RESOLUTION_MS, loopDelayMs, MAX_APP_SERIES, Metrics } from '../../src/metrics/index.js';

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

describe('per-app counters', () => {
  it('name at most MAX_APP_SERIES apps and count the others under app="_other"', async () => {
    const metrics = new Metrics({ stats: () => [] });
    try {
      for (let i = 0; i < MAX_APP_SERIES + 50; i++) {
        metrics.published.inc({ app: `app-${i}` });
        metrics.deliveries.inc({ app: `app-${i}` }, 2);
      }
      metrics.published.inc({ app: 'app-0' }); // an app already named keeps its series
      const text = await metrics.registry.metrics();
      const series = (name: string) => text.split('\n').filter((l) => l.startsWith(`${name}{`));
      assert.equal(series('herald_notifications_published_total').length, MAX_APP_SERIES + 1);
      assert.equal(series('herald_deliveries_total').length, MAX_APP_SERIES + 1);
      assert.match(text, /^herald_notifications_published_total\{app="_other"\} 50$/m);
      assert.match(text, /^herald_deliveries_total\{app="_other"\} 100$/m);
      assert.match(text, /^herald_notifications_published_total\{app="app-0"\} 2$/m);
      assert.doesNotMatch(text, new RegExp(`app="app-${MAX_APP_SERIES}"`));
    } finally {
      metrics.close();
    }
  });
});
