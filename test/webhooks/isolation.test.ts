import assert from 'node:assert/strict';
import { after, afterEach, describe, it } from 'node:test';
import type { TestHerald } from '../helpers.js';
import { call, delayed, dropSchemas, Merchant, ok, orderNo, STORES, startNode, waitFor } from './helpers.js';

after(dropSchemas);

for (const store of STORES) {
  describe(`merchant isolation (${store} store)`, () => {
    let herald: TestHerald | undefined;
    const merchants: Merchant[] = [];
    afterEach(async () => {
      await herald?.cleanup();
      for (const m of merchants.splice(0)) await m.close();
      herald = undefined;
    });

    it('a slow merchant is marked slow, gets a smaller share, and never holds up a fast one', async () => {
      const slow = await Merchant.start(delayed(300, ok));
      const fast = await Merchant.start(ok);
      merchants.push(slow, fast);
      herald = await startNode(store, {
        webhookConcurrency: 6,
        webhookMerchantConcurrency: 4,
        webhookSlowConcurrency: 1,
        webhookSlowThreshold: 150,
        webhookTimeout: 2000,
      });
      const h = herald;
      // The slow merchant's backlog is queued first, so it is the oldest work.
      for (let i = 0; i < 30; i++) {
        await h.webhooks.enqueue({ orderNo: orderNo('S'), notifyUrl: slow.url(), payload: { i } });
      }
      await waitFor(() => slow.received.length >= 5, 10_000, 'the slow merchant to be called');
      for (let i = 0; i < 40; i++) {
        await h.webhooks.enqueue({ orderNo: orderNo('F'), notifyUrl: fast.url(), payload: { i } });
      }
      await waitFor(() => fast.ids().size >= 40, 10_000, 'the fast merchant to get all its webhooks');
      assert.ok(
        slow.received.length < 30,
        `the fast merchant finished while the slow one still waits (${slow.received.length}/30 sent)`,
      );
      assert.ok(slow.maxInFlight <= 4, `slow merchant concurrency ${slow.maxInFlight} <= 4`);
      assert.ok(fast.maxInFlight <= 4, `fast merchant concurrency ${fast.maxInFlight} <= 4`);
      // Results reach the store in batches, so the slow mark can trail the last response a little.
      const st = await waitFor(
        async () => {
          const d = (
            await call(
              h.url(),
              'GET',
              `/admin/merchant-notify/merchant-status?notify_url=${encodeURIComponent(slow.url())}`,
            )
          ).body.data;
          return d.is_slow_merchant === true ? d : undefined;
        },
        10_000,
        'the slow merchant to be marked slow',
      );
      assert.equal(st.status, 'slow');
      assert.equal(st.concurrency, 1);
      assert.ok(Number(st.avg_response_time) >= 0.15);
      // Once marked slow, at most one request at a time.
      const mark = slow.received.length;
      slow.maxInFlight = 0;
      await waitFor(() => slow.received.length >= mark + 3, 10_000, 'more slow deliveries');
      assert.ok(slow.maxInFlight <= 1, `a slow merchant gets one slot (saw ${slow.maxInFlight})`);
      const fastSt = (
        await call(
          h.url(),
          'GET',
          `/admin/merchant-notify/merchant-status?notify_url=${encodeURIComponent(fast.url())}`,
        )
      ).body.data;
      assert.equal(fastSt.status, 'normal');
    });

    it('merchants that turn slow together, before any is marked slow, do not hold up a fast one', async () => {
      let release: () => void = () => undefined;
      const gate = new Promise<void>((r) => {
        release = r;
      });
      // Three merchants that answer only when the test lets them: never within the test's wait.
      const hanging = await Promise.all(
        [0, 1, 2].map(() =>
          Merchant.start(async (req, res, n) => {
            await gate;
            ok(req, res, n);
          }),
        ),
      );
      const fast = await Merchant.start(ok);
      merchants.push(...hanging, fast);
      herald = await startNode(store, {
        webhookConcurrency: 4,
        webhookMerchantConcurrency: 4,
        webhookSlowConcurrency: 1,
        webhookSlowLaneAfter: 100,
        webhookSlowThreshold: 60_000,
        webhookTimeout: 30_000,
        webhookLease: 60_000,
      });
      try {
        for (const m of hanging) {
          for (let i = 0; i < 6; i++) {
            await herald.webhooks.enqueue({ orderNo: orderNo('H'), notifyUrl: m.url(), payload: { i } });
          }
        }
        await waitFor(
          () => hanging.every((m) => m.received.length >= 1),
          10_000,
          'the hanging merchants called',
        );
        for (let i = 0; i < 20; i++) {
          await herald.webhooks.enqueue({ orderNo: orderNo('F'), notifyUrl: fast.url(), payload: { i } });
        }
        // 3 merchants x 4 requests would fill both lanes (2 x 4 slots) until they answer; a merchant with a
        // request in the slow lane gets the slow share at once instead, so the normal lane stays free.
        await waitFor(() => fast.ids().size >= 20, 15_000, 'the fast merchant to get all its webhooks');
        for (const m of hanging) {
          assert.ok(m.maxInFlight <= 4, `a hanging merchant got ${m.maxInFlight} requests at once`);
        }
      } finally {
        release();
      }
    });

    it("a lagging merchant's backlog goes back to the queue instead of filling the claim buffer", async () => {
      let release: () => void = () => undefined;
      const gate = new Promise<void>((r) => {
        release = r;
      });
      const hanging = await Promise.all(
        [0, 1].map(() =>
          Merchant.start(async (req, res, n) => {
            await gate;
            ok(req, res, n);
          }),
        ),
      );
      const fast = await Merchant.start(ok);
      merchants.push(...hanging, fast);
      // The claim budget is 4 x 2 + 4 x 5 = 28 rows; each hanging merchant may lease 4 x 5 = 20, so their
      // 40 rows, claimed first, would fill it until their leases went stale (15 s here).
      herald = await startNode(store, {
        webhookConcurrency: 4,
        webhookMerchantConcurrency: 4,
        webhookPrefetch: 5,
        webhookSlowConcurrency: 1,
        webhookSlowLaneAfter: 100,
        webhookSlowThreshold: 60_000,
        webhookTimeout: 30_000,
        webhookLease: 60_000,
      });
      const h = herald;
      try {
        for (const m of hanging) {
          for (let i = 0; i < 20; i++) {
            await h.webhooks.enqueue({ orderNo: orderNo('H'), notifyUrl: m.url(), payload: { i } });
          }
        }
        await waitFor(
          () => hanging.every((m) => m.received.length >= 1),
          10_000,
          'the hanging merchants called',
        );
        for (let i = 0; i < 30; i++) {
          await h.webhooks.enqueue({ orderNo: orderNo('F'), notifyUrl: fast.url(), payload: { i } });
        }
        await waitFor(() => fast.ids().size >= 30, 10_000, 'the fast merchant to get all its webhooks');
        for (const m of hanging) {
          assert.ok(m.maxInFlight <= 1, `a lagging merchant keeps its slow share (saw ${m.maxInFlight})`);
        }
      } finally {
        release();
      }
      // Nothing given back was lost: every hanging webhook is delivered once the merchants answer.
      await waitFor(
        () => hanging.every((m) => m.ids().size >= 20),
        20_000,
        'the backlog of the merchants that lagged',
      );
    });

    it('merchants keyed by merchantId share one limit across notify URLs', async () => {
      const m = await Merchant.start(delayed(100, ok));
      merchants.push(m);
      herald = await startNode(store, { webhookMerchantConcurrency: 2, webhookConcurrency: 50 });
      for (let i = 0; i < 12; i++) {
        await herald.webhooks.enqueue({
          orderNo: orderNo(),
          notifyUrl: m.url(`/notify/${i % 3}`),
          merchantId: 'M1001',
          payload: { i },
        });
      }
      await waitFor(() => m.ids().size >= 12, 10_000, 'all webhooks');
      assert.ok(m.maxInFlight <= 2, `one merchant id, one limit (saw ${m.maxInFlight})`);
      const h = herald;
      const st = await waitFor(
        async () => {
          const d = (await call(h.url(), 'GET', '/admin/merchant-notify/merchant-status?merchant_id=M1001'))
            .body.data;
          return d.success_total === 12 ? d : undefined;
        },
        5000,
        'the results to be written',
      );
      assert.equal(st.merchant_key, 'id:M1001');
    });
  });
}
