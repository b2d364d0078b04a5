import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { TestHerald } from '../helpers.js';
import {
  delayed,
  dropSchemas,
  Merchant,
  newSchema,
  ok,
  orderNo,
  startNode,
  status,
  TEST_DATABASE_URL,
  waitFor,
} from './helpers.js';

after(dropSchemas);

describe('per-merchant concurrency across two nodes on one PostgreSQL', () => {
  const nodes: TestHerald[] = [];
  after(async () => {
    for (const n of nodes) await n.cleanup();
  });

  it('never has more requests in flight to one merchant than WEBHOOK_MERCHANT_CONCURRENCY in total', async () => {
    const slowish = await Merchant.start(delayed(100));
    const other = await Merchant.start(delayed(20));
    try {
      const schema = newSchema();
      for (let i = 0; i < 2; i++) {
        nodes.push(
          await startNode('postgres', {
            databaseUrl: TEST_DATABASE_URL,
            databaseSchema: schema,
            webhookMerchantConcurrency: 3,
            webhookPrefetch: 2,
          }),
        );
      }
      const [a, b] = nodes as [TestHerald, TestHerald];
      const ids: string[] = [];
      // Both nodes take intake, and both dispatch, while the merchant is busy all along.
      for (let i = 0; i < 40; i++) {
        const node = i % 2 === 0 ? a : b;
        const m = i % 4 === 3 ? other : slowish;
        ids.push(
          (await node.webhooks.enqueue({ orderNo: orderNo('CL'), notifyUrl: m.url(), payload: { i } })).id,
        );
      }
      await waitFor(
        async () => {
          const r = await a.store.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM webhook_deliveries WHERE status = 'delivered'`,
          );
          return r.rows[0]?.n === ids.length;
        },
        30_000,
        'every webhook delivered',
      );
      assert.equal(slowish.ids().size, 30);
      assert.equal(other.ids().size, 10);
      assert.ok(slowish.maxInFlight >= 1);
      assert.ok(
        slowish.maxInFlight <= 3,
        `the merchant saw ${slowish.maxInFlight} requests at once from two nodes; the limit is 3`,
      );
      assert.ok(other.maxInFlight <= 3, `the other merchant saw ${other.maxInFlight} at once`);
      // No merchant is left owned by a node that has nothing to send to it.
      await waitFor(
        async () => {
          const r = await a.store.query<{ n: number }>(
            'SELECT count(*)::int AS n FROM webhook_merchants WHERE owner_node IS NOT NULL',
          );
          return r.rows[0]?.n === 0;
        },
        10_000,
        'ownership given up once idle',
      );
    } finally {
      await slowish.close();
      await other.close();
    }
  });

  it('a merchant owned by a node that stopped is taken over by the other node', async () => {
    const merchant = await Merchant.start(delayed(50));
    const schema = newSchema();
    const first = await startNode('postgres', {
      databaseUrl: TEST_DATABASE_URL,
      databaseSchema: schema,
      webhookMerchantConcurrency: 2,
    });
    const second = await startNode('postgres', {
      databaseUrl: TEST_DATABASE_URL,
      databaseSchema: schema,
      webhookMerchantConcurrency: 2,
    });
    nodes.push(second);
    try {
      for (let i = 0; i < 20; i++) {
        await first.webhooks.enqueue({ orderNo: orderNo('TK'), notifyUrl: merchant.url(), payload: { i } });
      }
      await waitFor(() => merchant.received.length >= 2, 10_000, 'the first requests');
      // A clean stop finishes its requests and gives the merchant up; the other node goes on.
      await first.cleanup();
      await waitFor(() => merchant.ids().size === 20, 20_000, 'all 20 webhooks');
      assert.ok(merchant.maxInFlight <= 2, `saw ${merchant.maxInFlight} at once; the limit is 2`);
    } finally {
      await merchant.close();
    }
  });
});

describe('system alert windows across two nodes on one PostgreSQL', () => {
  const nodes: TestHerald[] = [];
  after(async () => {
    for (const n of nodes) await n.cleanup();
  });

  it('a node that sends nothing alerts on the success rate of the webhooks another node sent', async () => {
    const failing = await Merchant.start(status(500));
    const sink = await Merchant.start(ok);
    try {
      const schema = newSchema();
      const shared = { databaseUrl: TEST_DATABASE_URL, databaseSchema: schema, webhookAlertMinSamples: 5 };
      // The sender never checks the rules itself (hourly); it only adds its counts to the shared window.
      const sender = await startNode('postgres', {
        ...shared,
        webhookAlertInterval: 3_600_000,
        webhookRetryDelays: [60_000],
        // Five failures in a row would open the merchant's breaker and hold the sixth attempt back.
        webhookBreakerThreshold: 100,
      });
      nodes.push(sender);
      // The watcher delivers nothing (dispatcher off), so its own counts stay empty.
      const watcher = await startNode('postgres', {
        ...shared,
        webhookDispatch: false,
        webhookAlertInterval: 100,
        alertWebhookUrl: sink.url('/alerts'),
      });
      nodes.push(watcher);
      for (let i = 0; i < 6; i++) {
        await sender.webhooks.enqueue({ orderNo: orderNo('AW'), notifyUrl: failing.url(), payload: { i } });
      }
      const alert = await waitFor(
        () =>
          sink.received
            .map((r) => JSON.parse(r.body) as { type: string; data: { value: number } })
            .find((a) => a.type === 'success_rate'),
        15_000,
        'the success-rate alert on the watcher',
      );
      assert.equal(alert.data.value, 0);
      // The alert needs 5 samples; the sixth attempt may still be on its way when it fires.
      await waitFor(() => failing.ids().size === 6, 10_000, 'all 6 first attempts');
      assert.equal(failing.ids().size, 6);
    } finally {
      await failing.close();
      await sink.close();
    }
  });
});
