import assert from 'node:assert/strict';
import { after, afterEach, describe, it } from 'node:test';
import type { TestHerald } from '../helpers.js';
import {
  call,
  deliveryOf,
  dropSchemas,
  Merchant,
  orderNo,
  STORES,
  sleep,
  startNode,
  status,
  waitFor,
} from './helpers.js';

after(dropSchemas);

const MAX_AGE = 1500;

for (const store of STORES) {
  describe(`WEBHOOK_MAX_AGE and 410 on a breaker trial (${store} store)`, () => {
    let herald: TestHerald | undefined;
    let merchant: Merchant | undefined;
    afterEach(async () => {
      await herald?.cleanup();
      await merchant?.close();
      herald = undefined;
      merchant = undefined;
    });

    const statusOf = async (h: TestHerald, url: string) =>
      (
        await call(
          h.url(),
          'GET',
          `/admin/merchant-notify/merchant-status?notify_url=${encodeURIComponent(url)}`,
        )
      ).body.data as Record<string, unknown>;

    it('webhooks held by an open breaker end failed at the max age; a retry gives a fresh age', async () => {
      merchant = await Merchant.start(status(500));
      herald = await startNode(store, {
        webhookRetryDelays: Array(30).fill(50),
        webhookBreakerThreshold: 2,
        webhookBreakerOpen: 600_000,
        webhookBreakerDelay: 200,
        webhookMaxAge: MAX_AGE,
      });
      const h = herald;
      const url = merchant.url();
      const ids: string[] = [];
      for (let i = 0; i < 4; i++) {
        ids.push((await h.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: url, payload: { i } })).id);
      }
      await waitFor(async () => (await statusOf(h, url)).breaker_state === 'open', 10_000, 'the breaker');
      const started = Date.now();
      const q = await waitFor(
        async () => {
          const r = await call(h.url(), 'GET', '/admin/merchant-notify/queue-status');
          return (r.body.data.failed_orders as unknown[]).length === 4 ? r.body.data : undefined;
        },
        10_000,
        'every webhook to fail at the max age',
      );
      assert.ok(Date.now() - started < MAX_AGE + 3000, 'not held for breaker periods');
      const failed = q.failed_orders as { last_error: string }[];
      assert.equal(failed.length, 4);
      for (const f of failed) assert.match(f.last_error, /max age reached/);
      for (const id of ids) {
        const logs = await call(h.url(), 'GET', `/admin/merchant-notify/logs?webhook_id=${id}&status=0`);
        const list = logs.body.data.list as { outcome: string; error: string }[];
        assert.equal(list[0]?.outcome, 'expired');
        assert.match(list[0]!.error, /max age reached/);
      }
      const metrics = await fetch(`${h.url()}/metrics`).then((r) => r.text());
      assert.match(metrics, /herald_webhook_deliveries_total\{result="expired"\} 4/);
      // A retry gives it a fresh schedule: it is not failed again at once although it was created long ago.
      const retry = await call(h.url(), 'POST', '/admin/merchant-notify/retry', { order_id: ids[0] });
      assert.equal(retry.status, 200, JSON.stringify(retry.body));
      await sleep(MAX_AGE / 2);
      const d = await deliveryOf(h, ids[0]!);
      assert.notEqual(d?.status, 'failed', 'a retried webhook gets a fresh max age');
      // ... and the max age applies again from the retry.
      const again = await waitFor(
        async () => {
          const x = await deliveryOf(h, ids[0]!);
          return x?.status === 'failed' ? x : undefined;
        },
        10_000,
        'the retried webhook to reach the max age again',
      );
      assert.match(String(again.last_error), /max age reached/);
    });

    it('a webhook that reaches the max age while it waits for its merchant is not sent', async () => {
      // One request at a time per merchant; the first is answered after 1.5 s, while the second (waiting
      // for the merchant's slot) passes the max age of 1 s.
      merchant = await Merchant.start(async (_req, res, n) => {
        if (n === 1) await sleep(1500);
        res.writeHead(200).end('success');
      });
      herald = await startNode(store, {
        webhookMerchantConcurrency: 1,
        webhookMaxAge: 1000,
        webhookTimeout: 4000,
      });
      const h = herald;
      const url = merchant.url();
      const first = (await h.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: url, payload: { i: 1 } })).id;
      const second = (await h.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: url, payload: { i: 2 } })).id;
      const late = await waitFor(
        async () => {
          const x = await deliveryOf(h, second);
          return x?.status === 'failed' ? x : undefined;
        },
        10_000,
        'the waiting webhook to fail at the max age',
      );
      assert.match(String(late.last_error), /max age reached/);
      assert.equal((await deliveryOf(h, first))?.status, 'delivered');
      await sleep(300);
      assert.equal(merchant.received.length, 1, 'only the first webhook was sent');
    });

    it('410 Gone answered to the trial disables the URL, closes the breaker, and the rest fail at once', async () => {
      let gone = false;
      merchant = await Merchant.start((req, res, n) => status(gone ? 410 : 500)(req, res, n));
      herald = await startNode(store, {
        webhookRetryDelays: Array(30).fill(50),
        webhookBreakerThreshold: 2,
        webhookBreakerOpen: 800,
        webhookBreakerDelay: 200,
        webhookMerchantConcurrency: 1,
      });
      const h = herald;
      const url = merchant.url();
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        ids.push((await h.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: url, payload: { i } })).id);
      }
      await waitFor(async () => (await statusOf(h, url)).breaker_state === 'open', 10_000, 'the breaker');
      gone = true;
      const before = merchant.received.length;
      // The lease is 10 s: without the fix the trials drain one webhook per lease.
      await waitFor(
        async () => {
          for (const id of ids) if ((await deliveryOf(h, id))?.status !== 'failed') return false;
          return true;
        },
        6000,
        'every webhook to fail',
      );
      assert.equal(merchant.received.length, before + 1, 'only the trial reaches the disabled URL');
      const s = await statusOf(h, url);
      assert.equal(s.disabled, true);
      assert.equal(s.breaker_state, 'closed');
      assert.equal(s.is_circuit_breaker_open, false);
      // Later webhooks fail at once without a request.
      const later = (await h.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: url, payload: {} })).id;
      const d = await waitFor(
        async () => {
          const x = await deliveryOf(h, later);
          return x?.status === 'failed' ? x : undefined;
        },
        3000,
        'the later webhook to fail',
      );
      assert.match(String(d.last_error), /410/);
      assert.equal(merchant.received.length, before + 1);
    });
  });
}
