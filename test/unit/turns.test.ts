/**
 * The shared queue of batch slices: a turn of the event loop runs slices for its time budget at most
 * (however many requests are in flight), in arrival order, and concurrent batches take turns.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TurnQueue } from '../../src/http/turns.js';

const busy = (ms: number) => {
  const end = performance.now() + ms;
  while (performance.now() < end) {}
};

/** Logs 'tick' once per turn of the event loop until stopped. */
function ticker(log: string[]): () => void {
  let on = true;
  const tick = () => {
    if (!on) return;
    log.push('tick');
    setImmediate(tick);
  };
  setImmediate(tick);
  return () => {
    on = false;
  };
}

describe('TurnQueue', () => {
  it('runs no more slices in a turn than fit its budget, and runs them all, in order', async () => {
    const q = new TurnQueue(4);
    const log: string[] = [];
    const stop = ticker(log);
    const results = await Promise.all(
      [0, 1, 2, 3, 4, 5].map((i) =>
        q.run(() => {
          log.push(`s${i}`);
          busy(3);
          return i * 10;
        }),
      ),
    );
    stop();
    assert.deepEqual(results, [0, 10, 20, 30, 40, 50]);
    const slices = log.filter((e) => e !== 'tick');
    assert.deepEqual(slices, ['s0', 's1', 's2', 's3', 's4', 's5']);
    // 3 ms each against a 4 ms budget: two per turn at most, the loop turns in between.
    let run = 0;
    let longest = 0;
    for (const e of log) {
      run = e === 'tick' ? 0 : run + 1;
      longest = Math.max(longest, run);
    }
    assert.equal(longest, 2, log.join(' '));
    assert.equal(q.waiting, 0);
  });

  it('runs at least one slice per turn, even one longer than the budget', async () => {
    const q = new TurnQueue(1);
    const log: string[] = [];
    const stop = ticker(log);
    const slice = (i: number) => () => {
      log.push(`s${i}`);
      busy(2);
    };
    await Promise.all([0, 1, 2].map((i) => q.run(slice(i))));
    stop();
    const i0 = log.indexOf('s0');
    const i1 = log.indexOf('s1');
    const i2 = log.indexOf('s2');
    assert.ok(i0 >= 0 && i1 > i0 && i2 > i1);
    assert.ok(log.slice(i0, i1).includes('tick'), log.join(' '));
    assert.ok(log.slice(i1, i2).includes('tick'), log.join(' '));
  });

  it('lets concurrent batches take turns slice by slice', async () => {
    const q = new TurnQueue(100);
    const order: string[] = [];
    const batch = async (name: string, slices: number) => {
      for (let i = 0; i < slices; i++) {
        const items = await q.run(() => {
          order.push(`${name}${i}`);
          return [Promise.resolve(i)];
        });
        await Promise.all(items);
      }
    };
    await Promise.all([batch('a', 3), batch('b', 3)]);
    assert.deepEqual(order, ['a0', 'b0', 'a1', 'b1', 'a2', 'b2']);
  });

  it('rejects the promise of a slice that throws and goes on with the others', async () => {
    const q = new TurnQueue(4);
    const a = q.run(() => {
      throw new Error('boom');
    });
    const b = q.run(() => 'b');
    await assert.rejects(a, /boom/);
    assert.equal(await b, 'b');
  });
});
