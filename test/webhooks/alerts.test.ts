import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import type { TestHerald } from '../helpers.js';
import {
  call,
  dropSchemas,
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

interface TelegramCall {
  token: string;
  chat_id: string;
  text: string;
  disable_notification: boolean;
}

/** A local stand-in for the Telegram Bot API: records sendMessage calls. */
async function fakeTelegram(): Promise<{ server: Merchant; calls: () => TelegramCall[] }> {
  const server = await Merchant.start((req, res) => {
    const m = /^\/bot([^/]+)\/sendMessage$/.exec(req.path);
    res.writeHead(m ? 200 : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify(m ? { ok: true, result: { message_id: 1 } } : { ok: false }));
  });
  return {
    server,
    calls: () =>
      server.received.map((r) => ({
        token: /^\/bot([^/]+)\//.exec(r.path)?.[1] ?? '',
        ...(JSON.parse(r.body) as Omit<TelegramCall, 'token'>),
      })),
  };
}

for (const store of STORES) {
  describe(`alerts (${store} store)`, () => {
    let telegram: Awaited<ReturnType<typeof fakeTelegram>>;
    let sink: Merchant;
    let herald: TestHerald | undefined;
    const merchants: Merchant[] = [];
    before(async () => {
      telegram = await fakeTelegram();
      sink = await Merchant.start(ok);
    });
    after(async () => {
      await telegram.server.close();
      await sink.close();
    });
    afterEach(async () => {
      await herald?.cleanup();
      herald = undefined;
      for (const m of merchants.splice(0)) await m.close();
      telegram.server.received.length = 0;
      sink.received.length = 0;
    });

    const alerting = {
      telegramBotToken: '123456:test-token',
      telegramChatIds: ['-1001', '-1002'],
      webhookAlertInterval: 100,
      webhookAlertMinSamples: 5,
    };

    it('a breaker that opens sends the critical alert to every Telegram chat and to the alert webhook', async () => {
      const m = await Merchant.start(status(500));
      merchants.push(m);
      telegram.server.received.length = 0;
      herald = await startNode(store, {
        ...alerting,
        telegramApiBase: telegram.server.url(''),
        alertWebhookUrl: sink.url('/alerts'),
        webhookBreakerThreshold: 3,
        webhookRetryDelays: Array(10).fill(50),
      });
      for (let i = 0; i < 3; i++) {
        await herald.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: m.url(), payload: { i } });
      }
      const calls = await waitFor(
        () => {
          const c = telegram.calls().filter((x) => x.text.includes('熔断器告警'));
          return c.length >= 2 ? c : undefined;
        },
        10_000,
        'breaker alerts on Telegram',
      );
      assert.deepEqual(calls.map((c) => c.chat_id).sort(), ['-1001', '-1002']);
      for (const c of calls) {
        assert.equal(c.token, '123456:test-token');
        assert.equal(c.disable_notification, false, 'critical alerts ring');
        assert.match(c.text, /🚨 商户通知熔断器告警/);
        assert.match(c.text, /失败次数: \d+/);
        assert.match(c.text, /熔断时长: 5分钟/);
        assert.match(c.text, /状态: 熔断器已开启/);
        assert.match(c.text, /建议: 请检查商户服务器状态和网络连接。/);
        assert.ok(c.text.includes(herald.webhooks.merchantKey(m.url())));
      }
      const hook = await waitFor(
        () => sink.received.find((r) => JSON.parse(r.body).type === 'circuit_breaker'),
        5000,
        'the generic alert webhook',
      );
      const body = JSON.parse(hook.body);
      assert.equal(hook.path, '/alerts');
      assert.equal(body.level, 'critical');
      assert.equal(body.data.merchant_key, herald.webhooks.merchantKey(m.url()));
      assert.equal(typeof body.text, 'string');
      await sleep(300);
      assert.equal(
        telegram.calls().filter((x) => x.text.includes('熔断器告警')).length,
        2,
        'one alert per chat, not one per failure',
      );
    });

    it('a slow merchant alert is normal level and not repeated within the cooldown', async () => {
      const m = await Merchant.start(async (req, res, n) => {
        await sleep(120);
        ok(req, res, n);
      });
      merchants.push(m);
      herald = await startNode(store, {
        ...alerting,
        telegramApiBase: telegram.server.url(''),
        webhookSlowThreshold: 60,
        webhookAlertCooldown: 3_600_000,
      });
      for (let i = 0; i < 12; i++) {
        await herald.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: m.url(), payload: { i } });
      }
      await waitFor(() => m.ids().size >= 12, 15_000, 'all webhooks');
      const calls = await waitFor(
        () => {
          const c = telegram.calls().filter((x) => x.text.includes('慢商户告警'));
          return c.length >= 2 ? c : undefined;
        },
        5000,
        'a slow merchant alert',
      );
      await sleep(300);
      const again = telegram.calls().filter((x) => x.text.includes('慢商户告警'));
      assert.equal(again.length, 2, 'one alert per chat within the cooldown');
      for (const c of calls) {
        assert.equal(c.disable_notification, true, 'normal alerts are silent');
        assert.match(c.text, /⚠️ 慢商户告警/);
        assert.match(c.text, /平均响应时间: \d+\.\d{3}秒/);
        assert.match(c.text, /阈值: 60毫秒/);
        assert.match(c.text, /状态: 响应过慢/);
      }
    });

    it('system rules: queue length, success rate and error rate alerts; a failing sink never disturbs delivery', async () => {
      const failing = await Merchant.start(status(500));
      const good = await Merchant.start(ok);
      merchants.push(failing, good);
      herald = await startNode(store, {
        ...alerting,
        telegramApiBase: 'http://127.0.0.1:9', // nothing listens: the Telegram sink fails
        alertWebhookUrl: sink.url('/alerts'),
        webhookAlertQueueLength: 3,
        webhookRetryDelays: [50],
        webhookBreakerThreshold: 1000,
        webhookDispatch: true,
      });
      for (let i = 0; i < 8; i++) {
        await herald.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: failing.url(), payload: { i } });
        await herald.webhooks.enqueue({ orderNo: orderNo(), notifyUrl: good.url(), payload: { i } });
      }
      await waitFor(() => good.ids().size >= 8, 10_000, 'the good merchant to get its webhooks');
      const types = await waitFor(
        () => {
          const t = new Set(sink.received.map((r) => JSON.parse(r.body).type as string));
          return t.has('success_rate') && t.has('error_rate') ? t : undefined;
        },
        10_000,
        'success-rate and error-rate alerts',
      );
      assert.ok(types.has('success_rate'));
      const err = sink.received.map((r) => JSON.parse(r.body)).find((b) => b.type === 'error_rate');
      assert.match(err.text, /错误率: \d+\.\d{2}%/);
      // Each sink reports on its own: the failing Telegram call can end after the webhook sink's success.
      const h = herald;
      const metrics = await waitFor(
        async () => {
          const text = await (await fetch(`${h.url()}/metrics`)).text();
          return /herald_webhook_alerts_total\{type="success_rate",sink="telegram",result="failed"\} 1/.test(
            text,
          )
            ? text
            : undefined;
        },
        10_000,
        'the failed Telegram alert to be counted',
      );
      assert.match(
        metrics,
        /herald_webhook_alerts_total\{type="success_rate",sink="webhook",result="ok"\} 1/,
      );
    });

    it('queue length over the threshold alerts (dispatcher off on this node)', async () => {
      herald = await startNode(store, {
        ...alerting,
        telegramBotToken: undefined,
        alertWebhookUrl: sink.url('/alerts'),
        webhookAlertQueueLength: 3,
        webhookDispatch: false,
      });
      for (let i = 0; i < 5; i++) {
        await herald.webhooks.enqueue({
          orderNo: orderNo(),
          notifyUrl: 'http://127.0.0.1:9/x',
          payload: { i },
        });
      }
      const alert = await waitFor(
        () => sink.received.map((r) => JSON.parse(r.body)).find((b) => b.type === 'queue_length'),
        10_000,
        'the queue length alert',
      );
      // The rule may run between two enqueues: it fires once the length passes the threshold.
      assert.ok(alert.data.value > 3 && alert.data.value <= 5, String(alert.data.value));
      assert.equal(alert.data.threshold, 3);
      assert.match(alert.text, new RegExp(`队列长度: ${alert.data.value}\n阈值: 3`));
      const q = await call(herald.url(), 'GET', '/admin/merchant-notify/queue-status');
      assert.equal(q.body.data.pending_count, 5, 'no dispatcher on this node: nothing was sent');
    });
  });
}
