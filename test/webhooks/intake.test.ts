import assert from 'node:assert/strict';
import { after, afterEach, describe, it } from 'node:test';
import { HeraldError } from '../../src/errors.js';
import type { TestHerald } from '../helpers.js';
import {
  call,
  dropSchemas,
  Merchant,
  newSchema,
  orderNo,
  STORES,
  sleep,
  startNode,
  TEST_DATABASE_URL,
  waitFor,
} from './helpers.js';

after(dropSchemas);

for (const store of STORES) {
  describe(`intake and idempotency (${store} store)`, () => {
    let herald: TestHerald | undefined;
    let merchant: Merchant | undefined;
    afterEach(async () => {
      await herald?.cleanup();
      await merchant?.close();
      herald = undefined;
      merchant = undefined;
    });

    it('racing requests with one orderNo + eventType create one delivery; the others answer duplicate', async () => {
      merchant = await Merchant.start();
      herald = await startNode(store);
      const base = herald.url();
      const order = orderNo();
      const body = {
        orderNo: order,
        eventType: 'payment.succeeded',
        notifyUrl: merchant.url(),
        payload: { a: 1 },
      };
      const answers = await Promise.all(
        Array.from({ length: 25 }, () => call(base, 'POST', '/merchant-notify', body)),
      );
      for (const a of answers) assert.equal(a.status, 202);
      const ids = new Set(answers.map((a) => a.body.data.id));
      assert.equal(ids.size, 1, 'every answer names the same webhook');
      assert.equal(answers.filter((a) => a.body.data.duplicate === false).length, 1);
      // A different event of the same order is another webhook; an explicit key wins over the default.
      const refund = await call(base, 'POST', '/merchant-notify', { ...body, eventType: 'refund.succeeded' });
      assert.equal(refund.body.data.duplicate, false);
      const keyed = await Promise.all(
        [1, 2, 3].map(() =>
          herald!.webhooks.enqueue({ ...body, eventType: 'x', idempotencyKey: `key-${order}` }),
        ),
      );
      assert.equal(new Set(keyed.map((k) => k.id)).size, 1);
      await waitFor(() => merchant!.ids().size >= 3, 5000, 'three webhooks');
      await sleep(200);
      assert.equal(merchant.received.length, 3);
      const r = await herald.store.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM webhook_deliveries WHERE order_no = $1',
        [order],
      );
      assert.equal(r.rows[0]?.n, 3);
    });

    it('validates the body with stable codes in the { code, msg, data } envelope', async () => {
      herald = await startNode(store);
      const base = herald.url();
      const cases: [unknown, number, string][] = [
        [{ notifyUrl: 'http://127.0.0.1/x', payload: {} }, 400, 'validation_failed'],
        [{ orderNo: 'A1', notifyUrl: 'http://127.0.0.1/x' }, 400, 'validation_failed'],
        [{ orderNo: 'A1', notifyUrl: 'ftp://example.com/x', payload: {} }, 400, 'invalid_notify_url'],
        [{ orderNo: 'A1', notifyUrl: 'not a url', payload: {} }, 400, 'invalid_notify_url'],
        [{ orderNo: 'A1', notifyUrl: 'http://127.0.0.1/x', payload: {}, extra: 1 }, 400, 'validation_failed'],
        ['{"orderNo":', 400, 'invalid_json'],
      ];
      for (const [body, code, err] of cases) {
        const res = await fetch(`${base}/merchant-notify`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: typeof body === 'string' ? body : JSON.stringify(body),
        });
        const json = (await res.json()) as { code: number; msg: string; data: null; error: { code: string } };
        assert.equal(res.status, code, JSON.stringify(body));
        assert.equal(json.code, code);
        assert.equal(json.data, null);
        assert.equal(json.error.code, err, JSON.stringify(body));
        assert.equal(typeof json.msg, 'string');
      }
      await assert.rejects(
        herald.webhooks.enqueue({
          orderNo: 'A2',
          notifyUrl: 'http://127.0.0.1/x',
          payload: 'x'.repeat(70_000),
        }),
        (e: unknown) => e instanceof HeraldError && e.code === 'payload_too_large',
      );
    });

    it('answers 503 store_unavailable when the store fails, never a silent 202', async () => {
      herald = await startNode(store);
      const base = herald.url();
      if (store === 'embedded') await herald.store.close();
      else await herald.store.query(`DROP SCHEMA "${herald.config.databaseSchema}" CASCADE`);
      const r = await call(base, 'POST', '/merchant-notify', {
        orderNo: orderNo(),
        notifyUrl: 'http://127.0.0.1:9/x',
        payload: {},
      });
      assert.equal(r.status, 503);
      assert.equal(r.body.error?.code, 'store_unavailable');
      assert.equal(r.body.code, 503);
      await assert.rejects(
        herald.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: 'http://127.0.0.1:9/x', payload: {} }),
        (e: unknown) => e instanceof HeraldError && e.code === 'store_unavailable',
      );
      const admin = await call(base, 'GET', '/admin/merchant-notify/queue-status');
      assert.equal(admin.status, 503);
      assert.equal(admin.body.error?.code, 'store_unavailable');
    });

    it('requires WEBHOOK_INTAKE_TOKEN when it is set', async () => {
      merchant = await Merchant.start();
      herald = await startNode(store, { webhookIntakeToken: 'intake-token-0123456789' });
      const body = { orderNo: orderNo(), notifyUrl: merchant.url(), payload: {} };
      const none = await call(herald.url(), 'POST', '/merchant-notify', body);
      assert.equal(none.status, 401);
      assert.equal(none.body.error?.code, 'unauthorized');
      const wrong = await call(herald.url(), 'POST', '/merchant-notify', body, {
        authorization: 'Bearer nope',
      });
      assert.equal(wrong.status, 401);
      const right = await call(herald.url(), 'POST', '/merchant-notify', body, {
        authorization: 'Bearer intake-token-0123456789',
      });
      assert.equal(right.status, 202);
    });
  });
}

describe('idempotency across two nodes on one PostgreSQL', () => {
  const nodes: TestHerald[] = [];
  after(async () => {
    for (const n of nodes) await n.cleanup();
  });

  it('requests racing on two nodes create one delivery, sent once', async () => {
    const merchant = await Merchant.start();
    try {
      const schema = newSchema();
      for (let i = 0; i < 2; i++) {
        nodes.push(await startNode('postgres', { databaseUrl: TEST_DATABASE_URL, databaseSchema: schema }));
      }
      const order = orderNo();
      const answers = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          nodes[i % 2]!.webhooks.enqueue({ orderNo: order, notifyUrl: merchant.url(), payload: { i } }),
        ),
      );
      assert.equal(new Set(answers.map((a) => a.id)).size, 1);
      assert.equal(answers.filter((a) => !a.duplicate).length, 1);
      await waitFor(() => merchant.received.length >= 1, 5000, 'the webhook');
      await sleep(300);
      assert.equal(merchant.received.length, 1);
    } finally {
      await merchant.close();
    }
  });
});
