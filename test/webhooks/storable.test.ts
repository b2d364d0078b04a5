import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { DeliveryUpdate, MerchantUpdate } from '../../src/webhooks/queue.js';
import { type Sender, storableText } from '../../src/webhooks/sender.js';
import type { TestHerald } from '../helpers.js';
import {
  call,
  delayed,
  deliveryFinished,
  deliveryOf,
  dropSchemas,
  Merchant,
  ok,
  orderNo,
  STORES,
  sleep,
  startNode,
} from './helpers.js';

after(dropSchemas);

describe('storableText', () => {
  it('replaces NUL characters and unpaired surrogates with U+FFFD and keeps everything else', () => {
    assert.equal(storableText('success'), 'success');
    assert.equal(storableText('success\u0000'), 'success\uFFFD');
    assert.equal(storableText('a\u0000b\u0000'), 'a\uFFFDb\uFFFD');
    assert.equal(storableText('x\uD800y'), 'x\uFFFDy');
    assert.equal(storableText('x\uDC00'), 'x\uFFFD');
    assert.equal(storableText('支付成功 😀'), '支付成功 😀');
  });
});

for (const store of STORES) {
  describe(`webhook results with text the store cannot hold (${store} store)`, () => {
    let herald: TestHerald;
    let base: string;
    before(async () => {
      herald = await startNode(store, {
        webhookLease: 3000,
        webhookRetryDelays: [50, 50, 50],
        webhookBreakerThreshold: 100,
      });
      base = herald.url();
    });
    after(async () => {
      await herald.cleanup();
    });

    const enqueue = async (notifyUrl: string) => {
      const r = await call(base, 'POST', '/merchant-notify', {
        orderNo: orderNo(),
        notifyUrl,
        payload: { a: 1 },
      });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      return String(r.body.data.id);
    };
    const delivered = (id: string) => deliveryFinished(herald, id, 10_000);
    const logBodies = async (id: string) => {
      const logs = await call(base, 'GET', `/admin/merchant-notify/logs?webhook_id=${id}`);
      return (logs.body.data.list as { response_body: string | null }[]).map((l) => l.response_body);
    };

    it('records a 200 with a NUL byte or a binary body as delivered once, and other merchants are not resent', async () => {
      const nul = await Merchant.start(
        delayed(100, (_req, res) => {
          res.writeHead(200, { 'content-type': 'text/plain' });
          res.end(Buffer.from('success\u0000', 'utf8'));
        }),
      );
      const binary = Buffer.concat([Buffer.from([0x1f, 0x8b, 0x00, 0xff, 0xfe, 0xed]), randomBytes(2000)]);
      const bin = await Merchant.start(
        delayed(100, (_req, res) => {
          res.writeHead(200, { 'content-type': 'image/png' });
          res.end(binary);
        }),
      );
      const good = await Merchant.start(delayed(100, ok));
      try {
        const nulId = await enqueue(nul.url());
        const binId = await enqueue(bin.url());
        const goodIds = await Promise.all(Array.from({ length: 8 }, () => enqueue(good.url())));
        for (const id of [nulId, binId, ...goodIds]) {
          const d = await delivered(id);
          assert.equal(d.status, 'delivered', id);
          assert.equal(d.attempts, 1, id);
        }
        // Longer than the lease: nothing is sent again.
        await sleep(3500);
        assert.equal(nul.received.length, 1, 'the NUL-body webhook is sent once');
        assert.equal(bin.received.length, 1, 'the binary-body webhook is sent once');
        assert.equal(good.received.length, goodIds.length, "other merchants' webhooks are not resent");
        const [nulBody] = await logBodies(nulId);
        assert.equal(nulBody, 'success\uFFFD');
        const binBodies = await logBodies(binId);
        assert.equal(binBodies.length, 1);
        assert.ok(!binBodies[0]?.includes('\u0000'));
        const m = await herald.store.query<{ success_total: number; last_status_code: number }>(
          'SELECT success_total, last_status_code FROM webhook_merchants WHERE merchant_key = $1',
          [herald.webhooks.merchantKey(nul.url())],
        );
        assert.equal(m.rows[0]?.success_total, 1, 'the merchant row is updated');
      } finally {
        await Promise.all([nul.close(), bin.close(), good.close()]);
      }
    });

    it('writes a refused batch row by row: only the bad row is sanitised, the others are written once', async () => {
      // A text the sender did not clean (simulated), and a store that writes slowly enough for results
      // to gather into one batch: the batch holding the bad row is refused by the store.
      const sender = (herald.webhooks as unknown as { sender: Sender }).sender;
      const send = sender.send.bind(sender);
      sender.send = async (req) => {
        const r = await send(req);
        return r.responseBody === 'POISON' ? { ...r, responseBody: 'POISON\u0000', error: 'bad\uD800' } : r;
      };
      const queue = herald.webhooks.queue;
      const complete = queue.complete.bind(queue);
      const poisonedBatches: number[] = [];
      let calls = 0;
      queue.complete = async (
        batchId: string,
        deliveries: readonly DeliveryUpdate[],
        merchants: readonly MerchantUpdate[],
      ) => {
        if (calls++ === 0) await sleep(300); // the starter's write: the others gather into one batch
        if (deliveries.some((u) => u.responseBody === 'POISON\u0000'))
          poisonedBatches.push(deliveries.length);
        return complete(batchId, deliveries, merchants);
      };
      const starter = await Merchant.start(ok);
      const poison = await Merchant.start(
        delayed(100, (_req, res) => {
          res.writeHead(200, { 'content-type': 'text/plain' });
          res.end('POISON');
        }),
      );
      const good = await Merchant.start(delayed(100, ok));
      try {
        await enqueue(starter.url());
        await sleep(30);
        const poisonId = await enqueue(poison.url());
        const goodIds = await Promise.all(Array.from({ length: 6 }, () => enqueue(good.url())));
        for (const id of [poisonId, ...goodIds]) {
          const d = await delivered(id);
          assert.equal(d.status, 'delivered', id);
          assert.equal(d.attempts, 1, id);
        }
        assert.ok(
          poisonedBatches.some((n) => n > 1),
          `the poisoned row was in a batch with others (${poisonedBatches})`,
        );
        await sleep(3500);
        assert.equal(poison.received.length, 1, 'the refused row is not sent again');
        assert.equal(good.received.length, goodIds.length, 'the rows of the refused batch are not resent');
        assert.deepEqual(await logBodies(poisonId), ['POISON\uFFFD']);
        assert.equal((await deliveryOf(herald, poisonId))?.last_error, 'bad\uFFFD');
      } finally {
        queue.complete = complete;
        sender.send = send;
        await Promise.all([starter.close(), poison.close(), good.close()]);
      }
    });
  });
}
