import assert from 'node:assert/strict';
import { after, afterEach, describe, it } from 'node:test';
import type { TestHerald } from '../helpers.js';
import { delayed, dropSchemas, Merchant, ok, orderNo, STORES, sleep, startNode, waitFor } from './helpers.js';

after(dropSchemas);

/**
 * More slow merchants than the slow lane holds: once they are known to be slow, their requests wait for a
 * slot of the slow lane instead of spilling into the normal lane, so a fast merchant is never queued
 * behind them.
 */
for (const store of STORES) {
  describe(`slow lane bound (${store} store)`, () => {
    let herald: TestHerald | undefined;
    const merchants: Merchant[] = [];
    afterEach(async () => {
      await herald?.cleanup();
      for (const m of merchants.splice(0)) await m.close();
      herald = undefined;
    });

    it('merchants known to be slow never take the normal lane, however many they are', async () => {
      const slow = await Promise.all(Array.from({ length: 10 }, () => Merchant.start(delayed(1500, ok))));
      const fast = await Merchant.start(ok);
      merchants.push(...slow, fast);
      herald = await startNode(store, {
        webhookConcurrency: 4,
        webhookMerchantConcurrency: 2,
        webhookSlowConcurrency: 2,
        webhookSlowThreshold: 300,
        webhookSlowLaneAfter: 300,
        webhookSlowMinSamples: 1,
        webhookSlowStart: 0,
        webhookTimeout: 3000,
        webhookBreakerThreshold: 100,
      });
      const h = herald;
      for (const m of slow) {
        for (let i = 0; i < 8; i++) {
          await h.webhooks.enqueue({ orderNo: orderNo('S'), notifyUrl: m.url(), payload: { i } });
        }
      }
      // Every slow merchant has been called, and has answered (slowly) by the sleep below: known to be slow.
      await waitFor(() => slow.every((m) => m.received.length >= 1), 15_000, 'every slow merchant to answer');
      await sleep(1600);
      const started = Date.now();
      await Promise.all(
        Array.from({ length: 30 }, (_, i) =>
          h.webhooks.enqueue({ orderNo: orderNo('F'), notifyUrl: fast.url(), payload: { i } }),
        ),
      );
      await waitFor(() => fast.ids().size >= 30, 15_000, 'the fast merchant to get its webhooks');
      const ms = Date.now() - started;
      assert.ok(
        slow.some((m) => m.received.length < 8),
        'the slow merchants still had a backlog when the fast one was done',
      );
      // Behind the slow merchants, the fast one waits for their answers (1.5 s each) for its slots, round
      // after round: ~5 s before the slow lane was bounded, ~0.2 s since. The bound leaves room for a
      // loaded CI machine (1.2 s was seen once) and still tells the two apart.
      assert.ok(ms < 3000, `the fast merchant's 30 webhooks took ${ms} ms behind the slow merchants`);
    });
  });
}
