import assert from 'node:assert/strict';
import { after, afterEach, describe, it } from 'node:test';
import type { TestHerald } from '../helpers.js';
import { call, dropSchemas, Merchant, orderNo, STORES, startNode, waitFor } from './helpers.js';

after(dropSchemas);

const DAY = 86_400_000;

for (const store of STORES) {
  describe(`retention keeps idempotency keys (${store} store)`, () => {
    let herald: TestHerald | undefined;
    let merchant: Merchant | undefined;
    afterEach(async () => {
      await herald?.cleanup();
      await merchant?.close();
      herald = undefined;
      merchant = undefined;
    });

    it('the queue tables can be vacuumed while the engine runs (embedded-store upkeep)', async () => {
      merchant = await Merchant.start();
      herald = await startNode(store);
      const first = await herald.webhooks.enqueue({
        orderNo: orderNo('VC'),
        notifyUrl: merchant.url(),
        payload: {},
      });
      await herald.webhooks.queue.vacuum();
      await waitFor(
        async () => (await herald?.webhooks.queue.getDelivery(first.id))?.status === 'delivered',
        10_000,
        'delivered after the vacuum',
      );
    });

    it('old webhooks lose payload and logs, but a re-sent notification stays a duplicate until the key retention', async () => {
      merchant = await Merchant.start();
      herald = await startNode(store, { webhookLogRetention: DAY, webhookIdempotencyRetention: 100 * DAY });
      const engine = herald.webhooks;
      const order = orderNo('RT');
      const input = { orderNo: order, notifyUrl: merchant.url(), payload: { amount: 1 } };
      const first = await engine.enqueue(input);
      await waitFor(() => merchant?.received.length === 1, 10_000, 'the webhook');
      await waitFor(
        async () => (await engine.queue.getDelivery(first.id))?.status === 'delivered',
        10_000,
        'delivered',
      );
      const age = async (days: number) => {
        await herald?.store.query(
          `UPDATE webhook_deliveries SET finished_at = now() - $2::int * interval '1 day' WHERE id = $1`,
          [first.id, days],
        );
        await herald?.store.query(
          `UPDATE webhook_attempts SET created_at = now() - $2::int * interval '1 day' WHERE delivery_id = $1`,
          [first.id, days],
        );
      };

      // Past the log retention (the automatic cleanup uses WEBHOOK_LOG_RETENTION): logs and payload go.
      await age(2);
      const r1 = await engine.cleanup(DAY);
      assert.deepEqual(r1, { logs: 1, notifications: 1, keys: 0 });
      const row = await herald.store.query<{ body: string; purged: boolean }>(
        'SELECT body, purged_at IS NOT NULL AS purged FROM webhook_deliveries WHERE id = $1',
        [first.id],
      );
      assert.deepEqual(row.rows[0], { body: '', purged: true });
      // The producer sends the same notification again: still the first one, nothing is sent.
      const again = await engine.enqueue(input);
      assert.deepEqual(again, { id: first.id, duplicate: true });
      const viaHttp = await call(herald.url(), 'POST', '/merchant-notify', input);
      assert.equal(viaHttp.status, 202);
      assert.equal(viaHttp.body.data.id, first.id);
      // A purged webhook has no payload left to send: it cannot be retried.
      assert.deepEqual(await engine.retry({ id: first.id }, true), []);
      // A second cleanup finds nothing more to do.
      assert.deepEqual(await engine.cleanup(DAY), { logs: 0, notifications: 0, keys: 0 });

      // Past the idempotency retention the row (and its key) goes; the order may be notified again.
      await age(101);
      const r2 = await engine.cleanup(DAY);
      assert.equal(r2.keys, 1);
      const fresh = await engine.enqueue(input);
      assert.equal(fresh.duplicate, false);
      assert.notEqual(fresh.id, first.id);
      await waitFor(() => merchant?.received.length === 2, 10_000, 'the new webhook');
      assert.equal(merchant.received.length, 2);
    });
  });
}
