import assert from 'node:assert/strict';
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { describe, it } from 'node:test';
import { ConnectGcPacer, exposedGc, type GcFunction } from '../../src/gc.js';

describe('ConnectGcPacer', () => {
  it('asks for one young-generation collection per `every` connections', () => {
    const calls: Parameters<GcFunction>[0][] = [];
    const pacer = new ConnectGcPacer(3, (o) => {
      calls.push(o);
    });
    const ran = Array.from({ length: 7 }, () => pacer.connected());
    assert.deepEqual(ran, [false, false, true, false, false, true, false]);
    assert.deepEqual(calls, [{ type: 'minor' }, { type: 'minor' }]);
    assert.equal(pacer.runs, 2);
  });

  it('does nothing when turned off (0) or when V8 gives no gc function', () => {
    let called = 0;
    const off = new ConnectGcPacer(0, () => {
      called++;
    });
    const none = new ConnectGcPacer(1, null);
    for (let i = 0; i < 10; i++) {
      assert.equal(off.connected(), false);
      assert.equal(none.connected(), false);
    }
    assert.equal(called, 0);
  });
});

describe('exposedGc', () => {
  it("returns V8's gc function, the same every time, and a minor one is a scavenge", async () => {
    const gc = exposedGc();
    assert.equal(typeof gc, 'function');
    assert.equal(exposedGc(), gc);
    const kinds: number[] = [];
    const seen = new Promise<void>((resolve) => {
      const obs = new PerformanceObserver((list) => {
        for (const e of list.getEntries())
          kinds.push((e as unknown as { detail: { kind: number } }).detail.kind);
        if (kinds.includes(constants.NODE_PERFORMANCE_GC_MINOR)) {
          obs.disconnect();
          resolve();
        }
      });
      obs.observe({ entryTypes: ['gc'] });
    });
    (gc as GcFunction)({ type: 'minor' });
    await seen;
    assert.ok(kinds.includes(constants.NODE_PERFORMANCE_GC_MINOR));
  });
});
