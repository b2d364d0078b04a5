import assert from 'node:assert/strict';
import { after, afterEach, describe, it } from 'node:test';
import { HeraldError } from '../../src/errors.js';
import { SqlError } from '../../src/store/index.js';
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

    it('text the store cannot hold is 400 validation_failed naming the field, not 503 store_unavailable', async () => {
      merchant = await Merchant.start();
      herald = await startNode(store);
      const base = herald.url();
      const valid = () => ({ orderNo: orderNo(), notifyUrl: merchant!.url(), payload: { ok: true } });
      for (const [field, value] of [
        ['orderNo', 'n\u0000'],
        ['orderNo', 'n\ud800'],
        ['orderNo', '\udc00n'],
        ['merchantId', 'm\u0000'],
        ['merchantId', 'm\ud800'],
        ['eventType', '\u0000'],
        ['idempotencyKey', 'k\u0000'],
      ] as const) {
        const what = `${field} ${JSON.stringify(value)}`;
        const r = await call(base, 'POST', '/merchant-notify', { ...valid(), [field]: value });
        assert.equal(r.status, 400, `${what}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.code, 400, what);
        assert.equal(r.body.error?.code, 'validation_failed', what);
        assert.equal(r.body.error?.details?.[0]?.path, `/${field}`, what);
        await assert.rejects(
          herald.webhooks.enqueue({ ...valid(), [field]: value }),
          (e: unknown) => e instanceof HeraldError && e.code === 'validation_failed',
          what,
        );
      }
      // A number JSON cannot carry (1e309 parses to Infinity, sent as null) is refused, naming where it is.
      const inf = await fetch(`${base}/merchant-notify`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: `{"orderNo":"${orderNo()}","notifyUrl":"${merchant.url()}","payload":{"a":[1e309]}}`,
      });
      const infBody = (await inf.json()) as { error: { code: string; details: { path: string }[] } };
      assert.equal(inf.status, 400);
      assert.equal(infBody.error.code, 'validation_failed');
      assert.equal(infBody.error.details[0]?.path, '/payload/a/0');
      // The payload is stored as JSON text, where such characters are escapes: it is sent as given.
      const payload = { nul: 'a\u0000b', lone: 'x\ud800y', 'k\u0000': 1 };
      const sent = await call(base, 'POST', '/merchant-notify', { ...valid(), payload });
      assert.equal(sent.status, 202, JSON.stringify(sent.body));
      await waitFor(() => merchant!.received.length >= 1, 5000, 'the webhook');
      assert.deepEqual(JSON.parse(merchant.received[0]!.body), payload);
    });

    it('a row the store refuses fails alone, not the intake batch it shares; class 22 is a 400', async () => {
      herald = await startNode(store, { webhookDispatch: false });
      const queue = herald.webhooks.queue;
      let n = 0;
      const row = (order: string) => ({
        id: `msg_batch_${++n}_${Date.now()}`,
        idempotencyKey: `${order}:${n}`,
        orderNo: order,
        eventType: null,
        merchantKey: 'url:0000000000000000',
        merchantId: null,
        notifyUrl: 'http://127.0.0.1:9/x',
        body: '{}',
      });
      // Bypasses the engine's checks: the bad rows reach the store in a batch with good ones.
      const rows = [
        ...Array.from({ length: 4 }, () => row(orderNo())),
        row('bad\u0000'),
        ...Array.from({ length: 3 }, () => row(orderNo())),
        row('bad\ud800'),
        row(orderNo()),
      ];
      const results = await Promise.allSettled(rows.map((r) => queue.enqueue(r)));
      results.forEach((r, i) => {
        const bad = rows[i]!.orderNo.startsWith('bad');
        if (!bad) {
          assert.equal(r.status, 'fulfilled', `row ${i}: ${r.status === 'rejected' ? r.reason : ''}`);
          return;
        }
        assert.equal(r.status, 'rejected', `row ${i}`);
        const err = (r as PromiseRejectedResult).reason as SqlError;
        assert.ok(err instanceof SqlError && String(err.code).startsWith('22'), `row ${i}: ${err}`);
      });
      const stored = await herald.store.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM webhook_deliveries',
      );
      assert.equal(stored.rows[0]?.n, 8);

      // Should such a value get past the checks, the answer is 400 validation_failed, not a 503.
      const enqueue = queue.enqueue;
      try {
        queue.enqueue = async () => {
          throw new SqlError('invalid byte sequence for encoding "UTF8": 0x00', '22021');
        };
        const r = await call(herald.url(), 'POST', '/merchant-notify', {
          orderNo: orderNo(),
          notifyUrl: 'http://127.0.0.1:9/x',
          payload: {},
        });
        assert.equal(r.status, 400);
        assert.equal(r.body.error?.code, 'validation_failed');
      } finally {
        queue.enqueue = enqueue;
      }
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
