import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Webhook } from 'standardwebhooks';
import type { TestHerald } from '../helpers.js';
import {
  call,
  delayed,
  deliveryFinished,
  deliveryOf,
  dropSchemas,
  FAST,
  Merchant,
  ok,
  orderNo,
  STORES,
  sleep,
  startNode,
  status,
  waitFor,
} from './helpers.js';

after(dropSchemas);

for (const store of STORES) {
  describe(`webhook delivery (${store} store)`, () => {
    let herald: TestHerald;
    let base: string;
    before(async () => {
      herald = await startNode(store, {
        webhookTimeout: 1500,
        webhookLease: 5000,
        webhookRetryDelays: [50, 50, 50],
        webhookBreakerThreshold: 100,
      });
      base = herald.url();
    });
    after(async () => {
      await herald.cleanup();
    });

    const enqueue = async (notifyUrl: string, payload: unknown = { amount: 99.99 }, extra = {}) => {
      const r = await call(base, 'POST', '/merchant-notify', {
        orderNo: orderNo(),
        notifyUrl,
        payload,
        ...extra,
      });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body.code, 200);
      return String(r.body.data.id);
    };
    const finalState = (id: string) => deliveryFinished(herald, id);

    it('POSTs the JSON payload once with Standard Webhooks headers that the standardwebhooks library verifies', async () => {
      const m = await Merchant.start();
      try {
        const payload = { orderNo: 'BY20251010', status: 'paid', amount: 99.99, note: '支付成功' };
        const id = await enqueue(m.url('/notify?sign=abc'), payload);
        assert.match(id, /^msg_[0-9a-f]{32}$/);
        await waitFor(() => m.received.length >= 1, 5000, 'the webhook');
        const got = m.received[0]!;
        assert.equal(got.path, '/notify?sign=abc');
        assert.equal(got.headers['content-type'], 'application/json');
        assert.equal(got.headers['webhook-id'], id);
        assert.deepEqual(JSON.parse(got.body), payload);
        const wh = new Webhook(FAST.webhookDefaultSecret!);
        const verified = wh.verify(got.body, {
          'webhook-id': String(got.headers['webhook-id']),
          'webhook-timestamp': String(got.headers['webhook-timestamp']),
          'webhook-signature': String(got.headers['webhook-signature']),
        });
        assert.deepEqual(verified, payload);
        assert.throws(() =>
          new Webhook(`whsec_${Buffer.alloc(32, 1).toString('base64')}`).verify(got.body, {
            'webhook-id': String(got.headers['webhook-id']),
            'webhook-timestamp': String(got.headers['webhook-timestamp']),
            'webhook-signature': String(got.headers['webhook-signature']),
          }),
        );
        const d = await finalState(id);
        assert.equal(d.status, 'delivered');
        assert.equal(d.attempts, 1);
        await sleep(150);
        assert.equal(m.received.length, 1, 'a delivered webhook is not sent again');
      } finally {
        await m.close();
      }
    });

    it('an idle dispatcher probes the queue instead of claiming at every poll, and sends new work at once', async () => {
      const node = await startNode(store, { webhookPollInterval: 20 });
      const m = await Merchant.start();
      try {
        const queue = (
          node.webhooks as unknown as { queue: { claim: (...a: unknown[]) => Promise<unknown[]> } }
        ).queue;
        const real = queue.claim.bind(queue);
        let claims = 0;
        queue.claim = (...a) => {
          claims++;
          return real(...a);
        };
        // Nothing queued: 25 polls in 500 ms, and at most the first claims (each was a full claim before).
        await sleep(500);
        assert.ok(claims <= 2, `${claims} claims while the queue was empty`);
        const r = await call(node.url(), 'POST', '/merchant-notify', {
          orderNo: orderNo(),
          notifyUrl: m.url('/idle'),
          payload: { amount: 1 },
        });
        assert.equal(r.status, 202, JSON.stringify(r.body));
        await waitFor(() => m.received.length >= 1, 3000, 'the webhook sent after the idle polls');
        assert.equal((await deliveryFinished(node, String(r.body.data.id))).status, 'delivered');
      } finally {
        await m.close();
        await node.cleanup();
      }
    });

    it('retries a failing merchant on the schedule (3 retries) and then marks the webhook failed', async () => {
      const m = await Merchant.start(status(500, 'boom'));
      try {
        const id = await enqueue(m.url());
        const d = await finalState(id);
        assert.equal(d.status, 'failed');
        assert.equal(d.attempts, 4);
        assert.equal(d.last_status_code, 500);
        assert.equal(m.received.length, 4);
        assert.equal(m.ids().size, 1, 'every redelivery keeps its webhook-id');
        const logs = await call(base, 'GET', `/admin/merchant-notify/logs?webhook_id=${id}`);
        assert.equal(logs.body.data.total, 4);
        const list = logs.body.data.list as { attempt: number; status_code: number; response_body: string }[];
        assert.deepEqual(
          list.map((l) => l.attempt),
          [4, 3, 2, 1],
        );
        assert.equal(list[0]?.response_body, 'boom');
      } finally {
        await m.close();
      }
    });

    it('delivers to a flapping merchant on a retry', async () => {
      const m = await Merchant.start((req, res, n) => (n <= 2 ? status(503)(req, res, n) : ok(req, res, n)));
      try {
        const id = await enqueue(m.url());
        const d = await finalState(id);
        assert.equal(d.status, 'delivered');
        assert.equal(d.attempts, 3);
      } finally {
        await m.close();
      }
    });

    it('with WEBHOOK_REQUIRE_SUCCESS_BODY per merchant, a 2xx without "success" is a failure and " SUCCESS\\n" a success', async () => {
      const wrong = await Merchant.start(status(200, '{"ok":true}'));
      const right = await Merchant.start(status(200, ' SUCCESS\n'));
      try {
        for (const m of [wrong, right]) {
          const r = await call(base, 'POST', '/admin/merchant-notify/merchant-settings', {
            notify_url: m.url(),
            require_success_body: true,
          });
          assert.equal(r.status, 200, JSON.stringify(r.body));
          assert.equal(r.body.data.require_success_body, true);
        }
        const bad = await enqueue(wrong.url());
        const good = await enqueue(right.url());
        const b = await finalState(bad);
        assert.equal(b.status, 'failed');
        assert.match(String(b.last_error), /success/);
        assert.equal(wrong.received.length, 4);
        const g = await finalState(good);
        assert.equal(g.status, 'delivered');
      } finally {
        await wrong.close();
        await right.close();
      }
    });

    it('counts a merchant that closes the socket, or answers too late, as a failure and retries', async () => {
      const closing = await Merchant.start((req, res, n) => {
        if (n === 1) res.socket?.destroy();
        else ok(req, res, n);
      });
      const slow = await Merchant.start((req, res, n) =>
        n === 1 ? delayed(4000)(req, res, n) : ok(req, res, n),
      );
      try {
        const a = await enqueue(closing.url());
        const b = await enqueue(slow.url());
        const da = await finalState(a);
        assert.equal(da.status, 'delivered');
        assert.equal(da.attempts, 2);
        const db = await finalState(b);
        assert.equal(db.status, 'delivered');
        assert.equal(db.attempts, 2);
        const logs = await call(base, 'GET', `/admin/merchant-notify/logs?webhook_id=${b}&status=0`);
        const first = (logs.body.data.list as { outcome: string; error: string }[])[0];
        assert.equal(first?.outcome, 'timeout');
        const logsA = await call(base, 'GET', `/admin/merchant-notify/logs?webhook_id=${a}&status=failed`);
        assert.equal((logsA.body.data.list as { outcome: string }[])[0]?.outcome, 'network_error');
      } finally {
        await closing.close();
        await slow.close();
      }
    });

    it('410 Gone fails the webhook at once and disables the URL until the merchant is reset', async () => {
      let gone = true;
      const m = await Merchant.start((req, res, n) => (gone ? status(410)(req, res, n) : ok(req, res, n)));
      try {
        const first = await enqueue(m.url());
        const d = await finalState(first);
        assert.equal(d.status, 'failed');
        assert.equal(d.attempts, 1);
        const second = await enqueue(m.url());
        const d2 = await finalState(second);
        assert.equal(d2.status, 'failed');
        assert.match(String(d2.last_error), /410/);
        assert.equal(m.received.length, 1, 'a disabled URL is not called');
        const st = await call(
          base,
          'GET',
          `/admin/merchant-notify/merchant-status?notify_url=${encodeURIComponent(m.url())}`,
        );
        assert.equal(st.body.data.disabled, true);
        gone = false;
        const reset = await call(base, 'POST', '/admin/merchant-notify/reset-circuit-breaker', {
          notify_url: m.url(),
        });
        assert.equal(reset.status, 200);
        assert.equal(reset.body.data.disabled, false);
        const retry = await call(base, 'POST', '/admin/merchant-notify/retry', { order_id: second });
        assert.equal(retry.status, 200, JSON.stringify(retry.body));
        const d3 = await finalState(second);
        assert.equal(d3.status, 'delivered');
      } finally {
        await m.close();
      }
    });

    it('honours Retry-After when it is longer than the schedule', async () => {
      const m = await Merchant.start((req, res, n) =>
        n === 1 ? status(429, 'slow down', { 'retry-after': '1' })(req, res, n) : ok(req, res, n),
      );
      try {
        const id = await enqueue(m.url());
        const d = await finalState(id);
        assert.equal(d.status, 'delivered');
        assert.equal(m.received.length, 2);
        const gap = m.received[1]!.at - m.received[0]!.at;
        assert.ok(gap >= 900, `the retry came ${gap}ms after a Retry-After of 1s`);
      } finally {
        await m.close();
      }
    });

    it('does not follow redirects: a 302 is a failure and the target is never called', async () => {
      const target = await Merchant.start();
      const m = await Merchant.start(status(302, '', { location: target.url() }));
      try {
        const id = await enqueue(m.url());
        const d = await finalState(id);
        assert.equal(d.status, 'failed');
        assert.equal(d.last_status_code, 302);
        assert.match(String(d.last_error), /redirect/);
        assert.equal(target.received.length, 0);
      } finally {
        await m.close();
        await target.close();
      }
    });
  });
}

describe('SSRF guard (WEBHOOK_ALLOW_PRIVATE_NETWORKS=false)', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startNode('embedded', { webhookAllowPrivateNetworks: false, webhookRetryDelays: [50] });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('refuses a literal private address at intake with invalid_notify_url', async () => {
    for (const url of [
      'http://127.0.0.1:9/x',
      'http://10.1.2.3/x',
      'http://[::1]/x',
      'http://169.254.169.254/latest',
    ]) {
      const r = await call(herald.url(), 'POST', '/merchant-notify', {
        orderNo: orderNo(),
        notifyUrl: url,
        payload: {},
      });
      assert.equal(r.status, 400, url);
      assert.equal(r.body.error?.code, 'invalid_notify_url');
      assert.equal(r.body.code, 400);
    }
  });

  it('refuses a name that resolves to loopback at delivery time, and never connects', async () => {
    const m = await Merchant.start();
    try {
      const url = m.url().replace('127.0.0.1', 'localhost');
      const r = await call(herald.url(), 'POST', '/merchant-notify', {
        orderNo: orderNo(),
        notifyUrl: url,
        payload: {},
      });
      assert.equal(r.status, 202);
      const id = String(r.body.data.id);
      const d = await waitFor(async () => {
        const x = await deliveryOf(herald, id);
        return x?.status === 'failed' ? x : undefined;
      });
      assert.match(String(d.last_error), /private or local/);
      assert.equal(m.received.length, 0);
    } finally {
      await m.close();
    }
  });
});
