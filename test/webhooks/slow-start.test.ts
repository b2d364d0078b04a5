import assert from 'node:assert/strict';
import { after, afterEach, describe, it } from 'node:test';
import type { TestHerald } from '../helpers.js';
import { delayed, dropSchemas, Merchant, ok, orderNo, STORES, sleep, startNode, waitFor } from './helpers.js';

after(dropSchemas);

for (const store of STORES) {
  describe(`dispatcher slow start (${store} store)`, () => {
    let herald: TestHerald | undefined;
    const merchants: Merchant[] = [];
    afterEach(async () => {
      await herald?.cleanup();
      for (const m of merchants.splice(0)) await m.close();
      herald = undefined;
    });

    it('grows the concurrency limits from a tenth to the full value over WEBHOOK_SLOW_START', async () => {
      const m = await Merchant.start(delayed(150, ok));
      merchants.push(m);
      const span = 2000;
      herald = await startNode(store, {
        webhookConcurrency: 20,
        webhookMerchantConcurrency: 10,
        webhookSlowConcurrency: 10,
        webhookSlowStart: span,
      });
      const t0 = Date.now();
      const h = herald;
      await Promise.all(
        Array.from({ length: 200 }, (_, i) =>
          h.webhooks.enqueue({ orderNo: orderNo('R'), notifyUrl: m.url(), payload: { i } }),
        ),
      );
      await waitFor(() => m.received.length >= 1, 5000, 'the first delivery');
      await sleep(200);
      const early = m.maxInFlight;
      const elapsed = Date.now() - t0;
      // At most the ramp's share of 10 at this point, never the full 10. The ramp started while the node
      // started, before t0: one more than the share at t0 + elapsed covers a start up to span / 9 earlier
      // (CI saw 3 in flight 416 ms after t0, where the share from t0 is 2).
      const bound = Math.min(10, Math.floor(10 * Math.min(1, 0.1 + (0.9 * elapsed) / span)) + 1);
      assert.ok(early <= bound, `in flight early ${early} <= ${bound} (after ${elapsed} ms)`);
      assert.ok(early < 10, `the full limit is not used at once (saw ${early})`);
      // After the ramp the merchant gets its whole share.
      await sleep(Math.max(0, span + 100 - (Date.now() - t0)));
      m.maxInFlight = 0;
      await waitFor(() => m.maxInFlight >= 9, 5000, 'the full per-merchant concurrency after the ramp');
      assert.ok(m.maxInFlight <= 10, `never above the limit (saw ${m.maxInFlight})`);
      await waitFor(() => m.ids().size >= 200, 20_000, 'every webhook delivered');
    });

    it('WEBHOOK_SLOW_START=0 uses the full limits at once', async () => {
      const m = await Merchant.start(delayed(300, ok));
      merchants.push(m);
      herald = await startNode(store, {
        webhookConcurrency: 20,
        webhookMerchantConcurrency: 10,
        webhookSlowConcurrency: 10,
        webhookSlowStart: 0,
      });
      const h = herald;
      await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          h.webhooks.enqueue({ orderNo: orderNo('Z'), notifyUrl: m.url(), payload: { i } }),
        ),
      );
      await waitFor(() => m.maxInFlight >= 10, 5000, 'ten requests in flight at once');
      await waitFor(() => m.ids().size >= 40, 10_000, 'every webhook delivered');
    });
  });
}
