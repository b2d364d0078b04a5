import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import { SqlError } from '../../src/store/index.js';
import type { QueueSettings } from '../../src/webhooks/queue.js';
import type { ClaimedDelivery } from '../../src/webhooks/types.js';
import type { TestHerald } from '../helpers.js';
import {
  call,
  delayed,
  deliveryFinished,
  dropSchemas,
  Merchant,
  newSchema,
  ok,
  orderNo,
  STORES,
  sleep,
  startNode,
  status,
} from './helpers.js';

after(dropSchemas);

/**
 * Failure semantics of the dispatcher: what happens to an attempt when the store is slow or down around
 * it. A webhook answered by its merchant must not be sent again because the node was slow to start it or
 * slow to write its result.
 */
for (const store of STORES) {
  describe(`webhook failure semantics (${store} store)`, () => {
    let herald: TestHerald;
    let base: string;
    const restore: (() => void)[] = [];
    before(async () => {
      herald = await startNode(store, {
        webhookTimeout: 2000,
        webhookLease: 3000,
        webhookRetryDelays: [50, 50, 50],
        webhookBreakerThreshold: 100,
        webhookSlowStart: 0,
      });
      base = herald.url();
    });
    after(async () => {
      await herald.cleanup();
    });
    afterEach(() => {
      for (const r of restore.splice(0)) r();
    });

    const enqueue = async (notifyUrl: string, prefix?: string) => {
      const r = await call(base, 'POST', '/merchant-notify', {
        orderNo: orderNo(prefix),
        notifyUrl,
        payload: { a: 1 },
      });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      return String(r.body.data.id);
    };

    it('a row whose lease is nearly over when the claim returns is not sent (it would be sent twice)', async () => {
      // The claim statement answers late (a store under load): the lease started in the store when the
      // claim ran, so the row has less than the request timeout of its lease left when it arrives.
      const queue = herald.webhooks.queue;
      const claim = queue.claim.bind(queue);
      let slowed = 0;
      queue.claim = async (...args: Parameters<typeof claim>): Promise<ClaimedDelivery[]> => {
        const rows = await claim(...args);
        if (rows.length > 0 && slowed++ === 0) await sleep(2200);
        return rows;
      };
      restore.push(() => {
        queue.claim = claim;
      });
      const m = await Merchant.start(delayed(1500, ok));
      try {
        const id = await enqueue(m.url());
        const d = await deliveryFinished(herald, id, 15_000);
        assert.equal(d.status, 'delivered');
        await sleep(2000);
        assert.equal(
          m.received.length,
          1,
          `the merchant got webhook ${id} ${m.received.length} times; it answered 200 the first time`,
        );
      } finally {
        await m.close();
      }
    });

    it('results survive a store outage longer than a few seconds: nothing answered is sent again', async () => {
      const m = await Merchant.start(delayed(300, ok));
      // Every statement fails for 4.5 s from the moment the merchant has the requests (the store is down
      // while the answers come in).
      let downUntil = 0;
      const s = herald.store as { query: typeof herald.store.query };
      const query = s.query.bind(herald.store);
      s.query = (async (...args: Parameters<typeof query>) => {
        if (Date.now() < downUntil) throw new SqlError('connection terminated (simulated outage)', '08006');
        return query(...args);
      }) as typeof query;
      restore.push(() => {
        s.query = query;
      });
      try {
        const ids = await Promise.all(Array.from({ length: 5 }, () => enqueue(m.url())));
        const start = Date.now();
        while (m.received.length < ids.length && Date.now() - start < 5000) await sleep(5);
        assert.equal(m.received.length, ids.length, 'every webhook reached the merchant');
        downUntil = Date.now() + 4500;
        await sleep(4600);
        for (const id of ids) {
          const d = await deliveryFinished(herald, id, 20_000);
          assert.equal(d.status, 'delivered', id);
          assert.equal(d.attempts, 1, id);
        }
        await sleep(3500);
        assert.equal(
          m.received.length,
          ids.length,
          'a webhook the merchant answered 200 to was sent again after the store came back',
        );
      } finally {
        await m.close();
      }
    });

    it('a store that does not answer: intake answers 503 store_unavailable at its deadline, never hangs', async () => {
      const settings = (herald.webhooks.queue as unknown as { s: QueueSettings }).s;
      settings.intakeDeadline = 400;
      let open: () => void = () => undefined;
      const gate = new Promise<void>((r) => {
        open = r;
      });
      const s = herald.store as { query: typeof herald.store.query };
      const query = s.query.bind(herald.store);
      s.query = (async (...args: Parameters<typeof query>) => {
        if (String(args[0]).includes('INSERT INTO webhook_deliveries (id, idempotency_key')) await gate;
        return query(...args);
      }) as typeof query;
      restore.push(() => {
        s.query = query;
        settings.intakeDeadline = undefined;
        open();
      });
      const orders = Array.from({ length: 6 }, () => orderNo());
      const notifyUrl = 'http://127.0.0.1:9/notify';
      const post = (o: string) =>
        call(base, 'POST', '/merchant-notify', { orderNo: o, notifyUrl, payload: { o } });
      const started = Date.now();
      const hung = setTimeout(open, 3000); // without a deadline the requests wait for the store
      const answers = await Promise.all(orders.map(post));
      const ms = Date.now() - started;
      clearTimeout(hung);
      open();
      assert.ok(ms < 2000, `intake answered after ${ms} ms with the store not answering`);
      for (const a of answers) {
        assert.equal(a.status, 503, JSON.stringify(a.body));
        assert.equal(a.body.error?.code, 'store_unavailable');
        assert.match(a.body.error?.message ?? '', /within 400 ms/);
      }
      // Sent again once the store answers, each is stored once: requests whose write had not started were
      // not stored; the others answer duplicate with their id.
      const again = await Promise.all(orders.map(post));
      for (const [i, a] of again.entries()) {
        assert.equal(a.status, 202, JSON.stringify(a.body));
        if (/was not stored/.test(answers[i]?.body.error?.message ?? ''))
          assert.equal(a.body.data.duplicate, false);
      }
      const n = await herald.store.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM webhook_deliveries WHERE order_no IN (SELECT jsonb_array_elements_text($1::jsonb))',
        [JSON.stringify(orders)],
      );
      assert.equal(n.rows[0]?.n, orders.length);
    });

    it('admin: failed webhooks are listed in queue-status; a retry says why it did nothing (in flight, delivered)', async () => {
      const bad = await Merchant.start(status(500));
      const slow = await Merchant.start(delayed(1500, ok));
      try {
        const failedId = await enqueue(bad.url());
        assert.equal((await deliveryFinished(herald, failedId, 10_000)).status, 'failed');
        const q = await call(base, 'GET', '/admin/merchant-notify/queue-status');
        const failed = q.body.data.failed_orders as { id: string; status: string; finished_at: string }[];
        assert.ok(Array.isArray(failed), 'queue-status lists the failed webhooks');
        // Newest failed first. Earlier tests of this node leave webhooks that may end failed after this
        // one (their last retry comes later), so this one need not be the first: check the order instead.
        const mine = failed.find((f) => f.id === failedId);
        assert.equal(mine?.status, 'failed', JSON.stringify(failed));
        const times = failed.map((f) => Date.parse(f.finished_at));
        assert.deepEqual(
          times,
          [...times].sort((a, b) => b - a),
          'newest failed first',
        );

        const id = await enqueue(slow.url());
        const start = Date.now();
        while (slow.received.length === 0 && Date.now() - start < 5000) await sleep(5);
        const busy = await call(base, 'POST', '/admin/merchant-notify/retry', { order_id: id });
        assert.equal(busy.status, 409, JSON.stringify(busy.body));
        assert.equal(busy.body.code, 409, 'the envelope carries the status');
        assert.equal(busy.body.error?.code, 'not_retryable');
        assert.match(busy.body.error?.message ?? '', /is being sent right now/);
        assert.doesNotMatch(busy.body.error?.message ?? '', /No webhook matches/);
        assert.equal(busy.body.error?.details?.[0]?.message, 'in_flight');
        assert.equal((await deliveryFinished(herald, id, 10_000)).status, 'delivered');
        const done = await call(base, 'POST', '/admin/merchant-notify/retry', { order_id: id });
        assert.equal(done.status, 409);
        assert.equal(done.body.error?.code, 'not_retryable');
        assert.match(done.body.error?.message ?? '', /include_delivered/);
        assert.equal(done.body.error?.details?.[0]?.message, 'delivered');
        const none = await call(base, 'POST', '/admin/merchant-notify/retry', { order_id: 'no-such-order' });
        assert.equal(none.status, 404);
        assert.equal(none.body.error?.message, 'No webhook matches order_id.');
      } finally {
        await Promise.all([bad.close(), slow.close()]);
      }
    });

    it('admin: all-merchant-status pages neither repeat nor skip merchants while results touch them', async () => {
      const ms = await Promise.all(Array.from({ length: 4 }, () => Merchant.start(ok)));
      try {
        const ids = await Promise.all(ms.map((m) => enqueue(m.url())));
        for (const id of ids) await deliveryFinished(herald, id, 10_000);
        const total = Number(
          (await call(base, 'GET', '/admin/merchant-notify/all-merchant-status')).body.data.total,
        );
        assert.ok(total >= 4);
        const seen: string[] = [];
        for (let page = 1; page <= Math.ceil(total / 2); page++) {
          const r = await call(
            base,
            'GET',
            `/admin/merchant-notify/all-merchant-status?page=${page}&limit=2`,
          );
          const keys = (r.body.data.list as { merchant_key: string }[]).map((m) => m.merchant_key);
          seen.push(...keys);
          // The merchants not shown yet get results now (every result batch touches its merchants' rows).
          await herald.store.query(
            `UPDATE webhook_merchants SET updated_at = now()
             WHERE merchant_key NOT IN (SELECT jsonb_array_elements_text($1::jsonb))`,
            [JSON.stringify(seen)],
          );
          await sleep(5);
        }
        assert.equal(new Set(seen).size, seen.length, `a merchant was shown twice: ${seen.join(' ')}`);
        assert.equal(seen.length, total, 'every merchant was shown');
      } finally {
        await Promise.all(ms.map((m) => m.close()));
      }
    });

    it('admin: logs paged with cursor neither repeat nor skip attempts while new ones are logged', async () => {
      const m = await Merchant.start(ok);
      try {
        const prefix = `CUR${store}`;
        const first = await Promise.all(Array.from({ length: 6 }, () => enqueue(m.url(), prefix)));
        for (const id of first) await deliveryFinished(herald, id, 10_000);
        const logs = (query: string) =>
          call(base, 'GET', `/admin/merchant-notify/logs?order_no=${prefix}&${query}`);
        const all = ((await logs('limit=100')).body.data.list as { id: number }[]).map((a) => a.id);
        assert.equal(all.length, 6);
        const seen: number[] = [];
        let cursor: string | null = null;
        do {
          const r = await logs(`limit=2${cursor ? `&cursor=${cursor}` : ''}`);
          assert.equal(r.status, 200, JSON.stringify(r.body));
          seen.push(...(r.body.data.list as { id: number }[]).map((a) => a.id));
          cursor = r.body.data.next_cursor as string | null;
          // New attempts are logged between two pages.
          const more = await enqueue(m.url(), prefix);
          await deliveryFinished(herald, more, 10_000);
        } while (cursor !== null && seen.length < 20);
        assert.deepEqual(seen, all, 'the pages hold every attempt of the start once, newest first');
        const bad = await logs('cursor=abc');
        assert.equal(bad.status, 400);
        assert.equal(bad.body.error?.code, 'validation_failed');
      } finally {
        await m.close();
      }
    });

    it('admin: swapped stats bounds and a non-http merchant-settings URL are 400, not an empty answer or a stored row', async () => {
      const swapped = await call(
        base,
        'GET',
        '/admin/merchant-notify/stats?start_time=2025-03-01&end_time=2025-01-01',
      );
      assert.equal(swapped.status, 400, JSON.stringify(swapped.body));
      assert.equal(swapped.body.error?.code, 'validation_failed');
      assert.match(swapped.body.error?.message ?? '', /start_time must not be after end_time/);
      const ftp = await call(base, 'POST', '/admin/merchant-notify/merchant-settings', {
        notify_url: 'ftp://merchant.example/notify',
        secret: 'generate',
      });
      assert.equal(ftp.status, 400, JSON.stringify(ftp.body));
      assert.equal(ftp.body.error?.code, 'invalid_notify_url');
    });
  });
}

describe('webhook leases across two nodes on one PostgreSQL', () => {
  const nodes: TestHerald[] = [];
  after(async () => {
    for (const n of nodes) await n.cleanup();
  });

  it('a node never starts a row whose lease would run out during the request (the other node sends it too)', async () => {
    const schema = newSchema();
    const settings = {
      databaseSchema: schema,
      webhookTimeout: 2000,
      webhookLease: 3000,
      webhookBreakerThreshold: 100,
      webhookSlowStart: 0,
    };
    const a = await startNode('postgres', settings);
    nodes.push(a);
    // Node A's first claim with rows is answered late (a store under load); after it, A claims nothing
    // more, so that only node B can take the row once A's lease has run out.
    const queue = a.webhooks.queue;
    const claim = queue.claim.bind(queue);
    let claimed = false;
    queue.claim = async (...args: Parameters<typeof claim>): Promise<ClaimedDelivery[]> => {
      if (claimed) return [];
      const rows = await claim(...args);
      if (rows.length > 0) {
        claimed = true;
        await sleep(2200);
      }
      return rows;
    };
    const m = await Merchant.start(delayed(1500, ok));
    try {
      const { id } = await a.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: m.url(), payload: { a: 1 } });
      const start = Date.now();
      while (!claimed && Date.now() - start < 5000) await sleep(5);
      assert.ok(claimed, 'node A claimed the webhook');
      const b = await startNode('postgres', settings);
      nodes.push(b);
      const d = await deliveryFinished(b, id, 15_000);
      assert.equal(d.status, 'delivered');
      await sleep(2500);
      assert.equal(
        m.received.length,
        1,
        `the merchant got webhook ${id} ${m.received.length} times; it answered 200 the first time`,
      );
    } finally {
      queue.claim = claim;
      await m.close();
    }
  });
});
