import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Webhook } from 'standardwebhooks';
import { SqlError } from '../../src/store/index.js';
import type { TestHerald } from '../helpers.js';
import { call, dropSchemas, Merchant, ok, orderNo, STORES, startNode, status, waitFor } from './helpers.js';

after(dropSchemas);

const TOKEN = 'admin-token-for-tests-0001';
const auth = { authorization: `Bearer ${TOKEN}` };

for (const store of STORES) {
  describe(`admin API /admin/merchant-notify (${store} store)`, () => {
    let herald: TestHerald;
    let base: string;
    let good: Merchant;
    let bad: Merchant;
    let sink: Merchant;
    const goodOrders: string[] = [];
    let badOrder = '';
    let badId = '';
    const get = (path: string) => call(base, 'GET', `/admin/merchant-notify${path}`, undefined, auth);
    const post = (path: string, body: unknown) =>
      call(base, 'POST', `/admin/merchant-notify${path}`, body, auth);

    before(async () => {
      good = await Merchant.start(ok);
      bad = await Merchant.start(status(500, 'fail'));
      sink = await Merchant.start(ok);
      herald = await startNode(store, {
        adminToken: TOKEN,
        alertWebhookUrl: sink.url('/alerts'),
        webhookRetryDelays: [50],
        webhookBreakerThreshold: 100,
      });
      base = herald.url();
      for (let i = 0; i < 3; i++) {
        const o = orderNo('BY20251010');
        goodOrders.push(o);
        await herald.webhooks.enqueue({
          orderNo: o,
          notifyUrl: good.url(),
          payload: { i },
          eventType: 'paid',
        });
      }
      badOrder = orderNo('BAD');
      badId = (await herald.webhooks.enqueue({ orderNo: badOrder, notifyUrl: bad.url(), payload: {} })).id;
      await waitFor(
        async () => {
          const r = await get('/queue-status');
          return r.body.data.queue_length === 0 && r.body.data.failed_count === 1;
        },
        10_000,
        'the webhooks to finish',
      );
    });
    after(async () => {
      await herald.cleanup();
      for (const m of [good, bad, sink]) await m.close();
    });

    it('requires ADMIN_TOKEN when set, with the envelope and a stable code', async () => {
      const none = await call(base, 'GET', '/admin/merchant-notify/queue-status');
      assert.equal(none.status, 401);
      assert.equal(none.body.code, 401);
      assert.equal(none.body.error?.code, 'unauthorized');
      const wrong = await call(base, 'GET', '/admin/merchant-notify/queue-status', undefined, {
        authorization: 'Bearer wrong',
      });
      assert.equal(wrong.status, 401);
    });

    it('GET queue-status: counts and lists', async () => {
      const r = await get('/queue-status');
      assert.equal(r.status, 200);
      assert.equal(r.body.code, 200);
      assert.equal(r.body.msg, '获取成功');
      for (const k of ['pending_count', 'retry_count', 'delayed_count', 'in_flight_count', 'failed_count']) {
        assert.equal(typeof r.body.data[k], 'number', k);
      }
      assert.ok(Array.isArray(r.body.data.pending_orders));
      assert.ok(Array.isArray(r.body.data.retry_orders));
    });

    it('GET logs: pagination, order_no prefix and status filters', async () => {
      const all = await get('/logs?page=1&limit=2');
      assert.equal(all.body.data.total, 5, '3 successes + 2 attempts of the failing webhook');
      assert.equal((all.body.data.list as unknown[]).length, 2);
      const byOrder = await get('/logs?order_no=BY20251010&status=1');
      assert.equal(byOrder.body.data.total, 3);
      const failed = await get(`/logs?order_no=${badOrder}&status=0`);
      const list = failed.body.data.list as Record<string, unknown>[];
      assert.equal(list.length, 2);
      const first = list[0]!;
      for (const k of [
        'id',
        'webhook_id',
        'order_no',
        'merchant_key',
        'url',
        'attempt',
        'status_code',
        'response_body',
        'duration_ms',
        'error',
        'created_at',
      ]) {
        assert.ok(k in first, k);
      }
      assert.equal(first.status_code, 500);
      assert.equal(first.response_body, 'fail');
      assert.equal(first.webhook_id, badId);
      const bad = await get('/logs?page=x');
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error?.code, 'validation_failed');
    });

    it('GET stats: totals and rates for a time range', async () => {
      const today = new Date();
      const d = `${today.getFullYear()}-${String(today.getMonth() + 1).padStart(2, '0')}-${String(today.getDate()).padStart(2, '0')}`;
      const r = await get(`/stats?start_time=${d}&end_time=${d}`);
      assert.equal(r.status, 200);
      assert.equal(r.body.data.total, 4);
      assert.equal(r.body.data.delivered, 3);
      assert.equal(r.body.data.failed, 1);
      assert.equal(r.body.data.success_rate, 0.75);
      assert.equal(r.body.data.attempts, 5);
      assert.equal(typeof r.body.data.avg_response_time, 'number');
      const empty = await get('/stats?start_time=2001-01-01&end_time=2001-01-31');
      assert.equal(empty.body.data.total, 0);
      assert.equal(empty.body.data.success_rate, null);
      const invalid = await get('/stats?start_time=yesterday');
      assert.equal(invalid.status, 400);
    });

    it('POST retry: by webhook order_id number, by webhook id, by order number; 404 when nothing matches, 409 when delivered', async () => {
      const q = await get(`/logs?order_no=${badOrder}`);
      assert.ok(q.body.data.total);
      const row = await herald.store.query<{ seq: number }>(
        'SELECT seq FROM webhook_deliveries WHERE id = $1',
        [badId],
      );
      const before = bad.received.length;
      const r = await post('/retry', { order_id: row.rows[0]!.seq });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.msg, '操作成功');
      assert.equal(r.body.data.retried, 1);
      await waitFor(() => bad.received.length >= before + 2, 5000, 'a fresh retry schedule');
      await waitFor(
        async () => (await get('/queue-status')).body.data.failed_count === 1,
        5000,
        'failed again',
      );
      const byOrder = await post('/retry', { order_id: badOrder });
      assert.equal(byOrder.body.data.retried, 1);
      const none = await post('/retry', { order_id: 'no-such-order' });
      assert.equal(none.status, 404);
      assert.equal(none.body.error?.code, 'not_found');
      // A delivered webhook is re-sent only on request.
      const deliveredRetry = await post('/retry', { order_id: goodOrders[0] });
      assert.equal(deliveredRetry.status, 409);
      assert.equal(deliveredRetry.body.error?.code, 'not_retryable');
      const forced = await post('/retry', { order_id: goodOrders[0], include_delivered: true });
      assert.equal(forced.body.data.retried, 1);
    });

    it('GET merchant-status and all-merchant-status: the seed fields', async () => {
      const r = await get(`/merchant-status?notify_url=${encodeURIComponent(good.url())}`);
      assert.equal(r.status, 200);
      const d = r.body.data;
      assert.equal(d.notify_url, good.url());
      assert.match(String(d.merchant_key), /^url:[0-9a-f]{16}$/);
      assert.equal(d.failure_count, 0);
      assert.equal(typeof d.avg_response_time, 'number');
      assert.equal(d.is_circuit_breaker_open, false);
      assert.equal(d.is_slow_merchant, false);
      assert.equal(d.status, 'normal');
      const unknown = await get(
        `/merchant-status?notify_url=${encodeURIComponent('https://example.com/notify')}`,
      );
      assert.equal(unknown.body.data.status, 'normal');
      assert.equal(unknown.body.data.known, false);
      const all = await get('/all-merchant-status?page=1&limit=20');
      assert.equal(all.body.data.total, 2);
      assert.equal((all.body.data.list as unknown[]).length, 2);
      const missing = await get('/merchant-status');
      assert.equal(missing.status, 400);
    });

    it('POST reset-circuit-breaker: clears failures; 404 for an unknown merchant', async () => {
      const r = await post('/reset-circuit-breaker', { notify_url: bad.url() });
      assert.equal(r.status, 200);
      assert.equal(r.body.data.failure_count, 0);
      assert.equal(r.body.data.is_circuit_breaker_open, false);
      const none = await post('/reset-circuit-breaker', { notify_url: 'https://nobody.example/notify' });
      assert.equal(none.status, 404);
    });

    it('POST send-alert: slow_merchant and circuit_breaker reach the sinks; other types are refused', async () => {
      const r = await post('/send-alert', { notify_url: bad.url(), alert_type: 'circuit_breaker' });
      assert.equal(r.status, 200);
      assert.deepEqual(r.body.data.sinks, ['webhook']);
      assert.match(String(r.body.data.text), /商户通知熔断器告警/);
      const s = await post('/send-alert', { notify_url: good.url(), alert_type: 'slow_merchant' });
      assert.equal(s.body.data.level, 'normal');
      await waitFor(() => sink.received.length >= 2, 5000, 'two alerts');
      const types = sink.received.map((x) => JSON.parse(x.body).type).sort();
      assert.deepEqual(types, ['circuit_breaker', 'slow_merchant']);
      const badType = await post('/send-alert', { notify_url: good.url(), alert_type: 'other' });
      assert.equal(badType.status, 400);

      // Both are kept in the alert history, newest first, and can be filtered by type.
      type AlertRow = { alert_type: string; level: string; text: string; merchant_key: unknown };
      const listOf = (r: { body: { data: unknown } }) => r.body.data as { list: AlertRow[]; total: number };
      let history = await get('/alerts?limit=50');
      const end = Date.now() + 5000;
      while (listOf(history).list.length < 2 && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 50));
        history = await get('/alerts?limit=50');
      }
      assert.equal(history.status, 200);
      const kinds = listOf(history).list.map((a) => a.alert_type);
      assert.ok(kinds.includes('circuit_breaker') && kinds.includes('slow_merchant'), JSON.stringify(kinds));
      const breaker = listOf(history).list.find((a) => a.alert_type === 'circuit_breaker');
      assert.equal(breaker?.level, 'critical');
      assert.match(String(breaker?.text), /商户通知熔断器告警/);
      assert.equal(typeof breaker?.merchant_key, 'string');
      const onlySlow = await get('/alerts?type=slow_merchant');
      assert.ok(listOf(onlySlow).list.every((a) => a.alert_type === 'slow_merchant'));
      assert.ok(listOf(onlySlow).total >= 1);
    });

    it('merchant-settings and signing-secret: a generated secret signs the next webhooks', async () => {
      const m = await Merchant.start(ok);
      try {
        const r = await post('/merchant-settings', { notify_url: m.url(), secret: 'generate' });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        const secret = String(r.body.data.secret);
        assert.match(secret, /^whsec_/);
        assert.equal(r.body.data.has_own_secret, true);
        const shown = await get(`/signing-secret?notify_url=${encodeURIComponent(m.url())}`);
        assert.equal(shown.body.data.secret, secret);
        assert.equal(shown.body.data.source, 'merchant');
        await herald.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: m.url(), payload: { x: 1 } });
        await waitFor(() => m.received.length >= 1, 5000, 'the webhook');
        const got = m.received[0]!;
        const verified = new Webhook(secret).verify(got.body, {
          'webhook-id': String(got.headers['webhook-id']),
          'webhook-timestamp': String(got.headers['webhook-timestamp']),
          'webhook-signature': String(got.headers['webhook-signature']),
        });
        assert.deepEqual(verified, { x: 1 });
        const invalid = await post('/merchant-settings', { notify_url: m.url(), secret: 'whsec_short' });
        assert.equal(invalid.status, 400);
        const dflt = await get(`/signing-secret?notify_url=${encodeURIComponent(good.url())}`);
        assert.equal(dflt.body.data.source, 'default');
      } finally {
        await m.close();
      }
    });

    it('merchant-settings named by notify_url reaches the merchant keyed by its merchantId that uses it', async () => {
      const m = await Merchant.start(ok);
      const shared = await Merchant.start(ok);
      try {
        // A merchant keyed by its merchantId (id:shop-7), known from a webhook it received.
        await herald.webhooks.enqueue({
          orderNo: orderNo(),
          notifyUrl: m.url(),
          merchantId: 'shop-7',
          payload: { first: true },
        });
        await waitFor(() => m.received.length >= 1, 5000, 'the first webhook');
        const r = await post('/merchant-settings', { notify_url: m.url(), secret: 'generate' });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        assert.equal(r.body.data.merchant_key, 'id:shop-7');
        const secret = String(r.body.data.secret);
        const shown = await get(`/signing-secret?notify_url=${encodeURIComponent(m.url())}`);
        assert.equal(shown.body.data.secret, secret);
        // Its next webhook is signed with the new secret (it was not: the secret went to a url: merchant).
        await herald.webhooks.enqueue({
          orderNo: orderNo(),
          notifyUrl: m.url(),
          merchantId: 'shop-7',
          payload: { second: true },
        });
        await waitFor(() => m.received.length >= 2, 5000, 'the second webhook');
        const got = m.received[1]!;
        const verified = new Webhook(secret).verify(got.body, {
          'webhook-id': String(got.headers['webhook-id']),
          'webhook-timestamp': String(got.headers['webhook-timestamp']),
          'webhook-signature': String(got.headers['webhook-signature']),
        });
        assert.deepEqual(verified, { second: true });

        // Two merchants behind one URL: the URL alone does not say which.
        for (const id of ['shop-8', 'shop-9']) {
          await herald.webhooks.enqueue({
            orderNo: orderNo(),
            notifyUrl: shared.url(),
            merchantId: id,
            payload: {},
          });
        }
        await waitFor(() => shared.received.length >= 2, 5000, 'the shared URL webhooks');
        const ambiguous = await post('/merchant-settings', { notify_url: shared.url(), secret: 'generate' });
        assert.equal(ambiguous.status, 400);
        assert.equal(ambiguous.body.error?.code, 'validation_failed');
        const details = ambiguous.body.error?.details as unknown as { merchant_keys: string[] } | undefined;
        assert.deepEqual([...(details?.merchant_keys ?? [])].sort(), ['id:shop-8', 'id:shop-9']);
        const named = await post('/merchant-settings', {
          notify_url: shared.url(),
          merchant_id: 'shop-9',
          require_success_body: false,
        });
        assert.equal(named.status, 200);
        assert.equal(named.body.data.merchant_key, 'id:shop-9');
      } finally {
        await m.close();
        await shared.close();
      }
    });

    it('POST cleanup: deletes logs and finished webhooks older than N days', async () => {
      await herald.store.query(
        `UPDATE webhook_attempts SET created_at = now() - interval '40 days' WHERE order_no = $1`,
        [goodOrders[1]],
      );
      await herald.store.query(
        `UPDATE webhook_deliveries SET finished_at = now() - interval '40 days' WHERE order_no = $1`,
        [goodOrders[1]],
      );
      const r = await post('/cleanup', { days: 30 });
      assert.equal(r.status, 200);
      assert.equal(r.body.data.deleted_logs, 1);
      assert.equal(r.body.data.deleted_notifications, 1);
      const again = await post('/cleanup', {});
      assert.equal(again.body.data.days, 30);
      assert.equal(again.body.data.deleted_logs, 0);
      const tooSmall = await post('/cleanup', { days: 0 });
      assert.equal(tooSmall.status, 400);
    });

    it('text the store cannot hold, ids and times out of range: 400 validation_failed naming the field', async () => {
      const refused = async (r: Awaited<ReturnType<typeof get>>, path: string | undefined, what: string) => {
        assert.equal(r.status, 400, `${what}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.code, 400, what);
        assert.equal(r.body.error?.code, 'validation_failed', what);
        if (path) assert.equal(r.body.error?.details?.[0]?.path, path, what);
      };
      await refused(await get('/logs?order_no=%00'), '/order_no', 'logs order_no NUL');
      await refused(await get('/logs?webhook_id=msg_%00'), '/webhook_id', 'logs webhook_id NUL');
      await refused(await get('/alerts?type=%00'), '/type', 'alerts type NUL');
      for (const f of ['merchant_id', 'merchant_key', 'notify_url']) {
        await refused(await get(`/merchant-status?${f}=a%00`), `/${f}`, `merchant-status ${f} NUL`);
        await refused(await get(`/signing-secret?${f}=a%00`), `/${f}`, `signing-secret ${f} NUL`);
        await refused(
          await post('/reset-circuit-breaker', { [f]: 'a\u0000' }),
          `/${f}`,
          `reset-circuit-breaker ${f} NUL`,
        );
      }
      await refused(
        await post('/merchant-settings', { notify_url: good.url(), merchant_id: 'm\u0000' }),
        '/merchant_id',
        'merchant-settings merchant_id NUL',
      );
      await refused(
        await post('/send-alert', { merchant_id: 'm\u0000', alert_type: 'slow_merchant' }),
        '/merchant_id',
        'send-alert merchant_id NUL',
      );
      await refused(await post('/retry', { order_id: 'x\u0000' }), '/order_id', 'retry order_id NUL');
      await refused(await post('/retry', { order_id: 'x\ud800' }), '/order_id', 'retry lone surrogate');
      await refused(await post('/retry', { order_id: 1e20 }), undefined, 'retry order_id 1e20');
      await refused(
        await post('/retry', { order_id: Number.MAX_SAFE_INTEGER + 1 }),
        undefined,
        'retry order_id 2^53',
      );
      const unknown = await post('/retry', { order_id: Number.MAX_SAFE_INTEGER });
      assert.equal(unknown.status, 404);
      assert.equal(unknown.body.error?.code, 'not_found');
      for (const [q, field] of [
        ['start_time=9999-99-99', 'start_time'],
        ['start_time=2025-02-30', 'start_time'],
        ['start_time=0000-01-01', 'start_time'],
        ['start_time=275760-09-13', 'start_time'],
        ['start_time=-271821-04-20T00:00:00Z', 'start_time'],
        ['start_time=2001-01-01&end_time=%2B010000-01-01T00:00:00Z', 'end_time'],
      ] as const) {
        await refused(await get(`/stats?${q}`), `/${field}`, `stats ${q}`);
      }
      // The last day the store holds is accepted: the range ends at its last instant.
      const last = await get('/stats?start_time=2001-01-01&end_time=9999-12-31');
      assert.equal(last.status, 200, JSON.stringify(last.body));
      assert.equal(last.body.data.end_time, '9999-12-31T23:59:59.999Z');
      // Years below 100 are those years, not 1900-1999.
      const early = await get('/stats?start_time=0050-06-01&end_time=0050-06-01');
      assert.equal(early.status, 200, JSON.stringify(early.body));
      const june = new Date(2000, 0, 1);
      june.setFullYear(50, 5, 1);
      assert.equal(early.body.data.start_time, june.toISOString());
      assert.equal(early.body.data.total, 0);
    });

    it('a store refusing a value (SQLSTATE class 22) is 400 validation_failed; a failing store stays 503', async () => {
      const queue = herald.webhooks.queue;
      const logs = queue.logs;
      try {
        queue.logs = async () => {
          throw new SqlError('invalid byte sequence for encoding "UTF8": 0x00', '22021');
        };
        const r = await get('/logs');
        assert.equal(r.status, 400);
        assert.equal(r.body.error?.code, 'validation_failed');
        queue.logs = async () => {
          throw new SqlError('connection failure', '08006');
        };
        const down = await get('/logs');
        assert.equal(down.status, 503);
        assert.equal(down.body.error?.code, 'store_unavailable');
      } finally {
        queue.logs = logs;
      }
      assert.equal((await get('/logs')).status, 200);
    });

    it('exposes Prometheus metrics for the queue, deliveries, response times, breakers and slow merchants', async () => {
      const text = await (await fetch(`${base}/metrics`)).text();
      assert.match(text, /herald_webhook_queue_depth\{state="failed"\} \d+/);
      assert.match(text, /herald_webhook_deliveries_total\{result="success"\} \d+/);
      assert.match(text, /herald_webhook_deliveries_total\{result="http_error"\} \d+/);
      assert.match(text, /herald_webhook_response_seconds_bucket/);
      assert.match(text, /herald_webhook_breakers_open\{state="open"\} 0/);
      assert.match(text, /herald_webhook_dns_lookups\{state="running"\} \d+/);
      assert.match(text, /herald_webhook_dns_lookups\{state="queued"\} \d+/);
      assert.match(text, /herald_webhook_slow_merchants 0/);
      assert.match(text, /herald_webhooks_enqueued_total\{result="new"\} \d+/);
    });
  });
}

describe('admin API without ADMIN_TOKEN; OpenAPI', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startNode('embedded', { adminToken: undefined });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('documents POST /merchant-notify and every admin route', async () => {
    const doc = (await (await fetch(`${herald.url()}/openapi.json`)).json()) as {
      paths: Record<string, unknown>;
    };
    for (const p of [
      '/merchant-notify',
      '/admin/merchant-notify/queue-status',
      '/admin/merchant-notify/logs',
      '/admin/merchant-notify/retry',
      '/admin/merchant-notify/stats',
      '/admin/merchant-notify/cleanup',
      '/admin/merchant-notify/merchant-status',
      '/admin/merchant-notify/reset-circuit-breaker',
      '/admin/merchant-notify/all-merchant-status',
      '/admin/merchant-notify/send-alert',
    ]) {
      assert.ok(p in doc.paths, p);
    }
  });

  it('is open, but never shows signing secrets', async () => {
    const q = await call(herald.url(), 'GET', '/admin/merchant-notify/queue-status');
    assert.equal(q.status, 200);
    const s = await call(
      herald.url(),
      'GET',
      '/admin/merchant-notify/signing-secret?notify_url=http://a.example/x',
    );
    assert.equal(s.status, 403);
    assert.equal(s.body.error?.code, 'forbidden');
  });
});
