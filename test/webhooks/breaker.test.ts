import assert from 'node:assert/strict';
import { after, afterEach, describe, it } from 'node:test';
import type { TestHerald } from '../helpers.js';
import {
  call,
  delayed,
  dropSchemas,
  Merchant,
  newSchema,
  ok,
  orderNo,
  STORES,
  sleep,
  startNode,
  status,
  waitFor,
} from './helpers.js';

after(dropSchemas);

const OPEN_MS = 1200;

for (const store of STORES) {
  describe(`circuit breaker (${store} store)`, () => {
    let herald: TestHerald | undefined;
    let merchant: Merchant | undefined;
    afterEach(async () => {
      await herald?.cleanup();
      await merchant?.close();
      herald = undefined;
      merchant = undefined;
    });

    const start = () =>
      startNode(store, {
        webhookRetryDelays: Array(30).fill(50),
        webhookBreakerThreshold: 3,
        webhookBreakerOpen: OPEN_MS,
        webhookBreakerDelay: 200,
        webhookMerchantConcurrency: 2,
      });
    const statusOf = async (h: TestHerald, url: string) =>
      (
        await call(
          h.url(),
          'GET',
          `/admin/merchant-notify/merchant-status?notify_url=${encodeURIComponent(url)}`,
        )
      ).body.data as Record<string, unknown>;
    const enqueueMany = async (h: TestHerald, url: string, n: number) => {
      const ids: string[] = [];
      for (let i = 0; i < n; i++) {
        const r = await h.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: url, payload: { i } });
        ids.push(r.id);
      }
      return ids;
    };

    it('opens after N consecutive failures, holds webhooks in the delay queue without sending, then one trial closes it', async () => {
      let down = true;
      merchant = await Merchant.start((req, res, n) =>
        down ? status(500)(req, res, n) : delayed(250, ok)(req, res, n),
      );
      herald = await start();
      const h = herald;
      const url = merchant.url();
      await enqueueMany(h, url, 6);
      const opened = await waitFor(
        async () => {
          const s = await statusOf(h, url);
          return s.is_circuit_breaker_open === true ? s : undefined;
        },
        10_000,
        'the breaker to open',
      );
      assert.equal(opened.status, 'circuit_breaker');
      assert.equal(opened.breaker_state, 'open');
      assert.ok(Number(opened.failure_count) >= 3);
      const openedAt = Date.parse(String(opened.breaker_opened_at));
      const sentWhenOpened = merchant.received.length;
      // While open: due webhooks go to the delay queue and nothing reaches the merchant.
      const q = await waitFor(
        async () => {
          const r = await call(h.url(), 'GET', '/admin/merchant-notify/queue-status');
          return Number(r.body.data.delayed_count) > 0 ? r.body.data : undefined;
        },
        5000,
        'webhooks in the delay queue',
      );
      assert.ok(Number(q.delayed_count) > 0);
      down = false;
      await sleep(Math.max(0, OPEN_MS - (Date.now() - openedAt) - 150));
      const early = merchant.received
        .slice(sentWhenOpened)
        .filter((r) => r.at < openedAt + OPEN_MS - 50)
        .map((r) => r.at - openedAt);
      assert.deepEqual(early, [], 'no webhook is sent while the breaker is open');
      // After the open period: one trial (250 ms), and only when it succeeds the others.
      await waitFor(
        async () => (await statusOf(h, url)).breaker_state === 'closed',
        10_000,
        'the breaker to close',
      );
      await waitFor(
        async () => {
          const r = await call(h.url(), 'GET', '/admin/merchant-notify/queue-status');
          return r.body.data.queue_length === 0 && r.body.data.in_flight_count === 0;
        },
        10_000,
        'the queue to drain',
      );
      const after = merchant.received.slice(sentWhenOpened);
      assert.ok(
        after.length >= 6,
        `every webhook is delivered in the end (got ${after.length} after opening)`,
      );
      const trial = after[0]!;
      const second = after[1]!;
      assert.ok(trial.at - openedAt >= OPEN_MS - 50, 'the trial waits for the open period');
      assert.ok(second.at - trial.at >= 200, 'the other webhooks wait for the trial to succeed');
      const closed = await statusOf(h, url);
      assert.equal(closed.failure_count, 0);
      assert.equal(closed.status, 'normal');
      const ids = merchant.ids();
      assert.equal(ids.size, 6);
    });

    it('a failed trial opens the breaker again for another period', async () => {
      merchant = await Merchant.start(status(503));
      herald = await start();
      const h = herald;
      const url = merchant.url();
      await enqueueMany(h, url, 4);
      await waitFor(
        async () => (await statusOf(h, url)).breaker_state === 'open',
        10_000,
        'the breaker to open',
      );
      const firstUntil = Date.parse(String((await statusOf(h, url)).breaker_until));
      const before = merchant.received.length;
      // The trial fails and the breaker re-opens with a later deadline.
      await waitFor(
        async () => {
          const s = await statusOf(h, url);
          return s.breaker_state === 'open' && Date.parse(String(s.breaker_until)) > firstUntil;
        },
        10_000,
        'the breaker to re-open',
      );
      assert.equal(merchant.received.length, before + 1, 'exactly one trial request');
      await sleep(300);
      assert.equal(merchant.received.length, before + 1, 'nothing is sent while re-opened');
    });

    it('reset-circuit-breaker closes it at once and sends the delayed webhooks', async () => {
      let down = true;
      merchant = await Merchant.start((req, res, n) => (down ? status(500)(req, res, n) : ok(req, res, n)));
      herald = await startNode(store, {
        webhookRetryDelays: Array(30).fill(50),
        webhookBreakerThreshold: 2,
        webhookBreakerOpen: 600_000,
        webhookBreakerDelay: 600_000,
      });
      const h = herald;
      const url = merchant.url();
      const ids = await enqueueMany(h, url, 3);
      await waitFor(
        async () => (await statusOf(h, url)).breaker_state === 'open',
        10_000,
        'the breaker to open',
      );
      await waitFor(
        async () =>
          Number(
            (await call(h.url(), 'GET', '/admin/merchant-notify/queue-status')).body.data.delayed_count,
          ) === 3,
        5000,
        'three delayed webhooks',
      );
      down = false;
      const r = await call(h.url(), 'POST', '/admin/merchant-notify/reset-circuit-breaker', {
        notify_url: url,
      });
      assert.equal(r.status, 200);
      assert.equal(r.body.data.status, 'normal');
      await waitFor(
        () => ids.every((id) => merchant!.ids().has(id)),
        5000,
        'the delayed webhooks to be sent',
      );
    });
  });
}

describe('circuit breaker shared by two nodes on one PostgreSQL', () => {
  const nodes: TestHerald[] = [];
  after(async () => {
    for (const n of nodes) await n.cleanup();
  });

  it('a breaker opened through one node holds back both, and one trial closes it for both', async () => {
    let down = true;
    const m = await Merchant.start((req, res, n) => (down ? status(500)(req, res, n) : ok(req, res, n)));
    try {
      const schema = newSchema();
      for (let i = 0; i < 2; i++) {
        nodes.push(
          await startNode('postgres', {
            databaseSchema: schema,
            webhookRetryDelays: Array(30).fill(50),
            webhookBreakerThreshold: 3,
            webhookBreakerOpen: 2500,
            webhookBreakerDelay: 200,
          }),
        );
      }
      const [a, b] = nodes as [TestHerald, TestHerald];
      const ids: string[] = [];
      for (let i = 0; i < 6; i++) {
        const node = i % 2 === 0 ? a : b;
        ids.push(
          (await node.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: m.url(), payload: { i } })).id,
        );
      }
      const url = encodeURIComponent(m.url());
      const viaB = await waitFor(
        async () => {
          const s = (await call(b.url(), 'GET', `/admin/merchant-notify/merchant-status?notify_url=${url}`))
            .body.data;
          return s.breaker_state === 'open' ? s : undefined;
        },
        10_000,
        'node B to see the breaker open',
      );
      const viaA = (await call(a.url(), 'GET', `/admin/merchant-notify/merchant-status?notify_url=${url}`))
        .body.data;
      assert.equal(viaA.breaker_state, 'open');
      assert.equal(viaA.breaker_until, viaB.breaker_until);
      const sent = m.received.length;
      await sleep(1000);
      assert.equal(m.received.length, sent, 'neither node sends while the breaker is open');
      down = false;
      const okIds = () => new Set(m.received.slice(sent).map((r) => String(r.headers['webhook-id'])));
      await waitFor(
        () => ids.every((id) => okIds().has(id)),
        15_000,
        'every webhook after the breaker closes',
      );
      const after = (await call(a.url(), 'GET', `/admin/merchant-notify/merchant-status?notify_url=${url}`))
        .body.data;
      assert.equal(after.breaker_state, 'closed');
    } finally {
      await m.close();
    }
  });
});
