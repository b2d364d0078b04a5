/**
 * The web console in a real headless Chromium (Debian's chromium through playwright-core) against a
 * real node: every page loads without console errors, live values change when the server's state
 * changes (no reload), and the actions work. Saves screenshots of every page at laptop and phone
 * widths under docs/screenshots/.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import type { Socket } from 'socket.io-client';
import {
  closeAll,
  connect,
  connectWith,
  post,
  refused,
  startTestHerald,
  type TestHerald,
} from '../helpers.js';
import { ensureConsoleBuilt, LAPTOP, launch, open, PHONE, shot, waitText } from './helpers.js';

/** Webhook settings that make breakers and retries observable within a test. */
const FAST_WEBHOOKS = {
  webhookAllowPrivateNetworks: true,
  webhookRetryDelays: [50, 50, 50],
  webhookPollInterval: 20,
  webhookTimeout: 2000,
  webhookLease: 10_000,
  webhookBreakerThreshold: 2,
  webhookBreakerOpen: 300_000,
  webhookBreakerDelay: 60_000,
};

async function routes(herald: TestHerald): Promise<Set<string>> {
  const doc = (await (await fetch(`${herald.url()}/openapi.json`)).json()) as {
    paths: Record<string, object>;
  };
  return new Set(Object.keys(doc.paths));
}

function paymentEvent(
  orderId: string,
  type: string,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    eventId: randomUUID(),
    orderId,
    appId: 'shop',
    merchantId: 'm-shop',
    type,
    amount: 4,
    currency: 'CNY',
    occurredAt: new Date().toISOString(),
    ...extra,
  };
}

describe('web console', () => {
  let browser: Browser;
  let herald: TestHerald;
  let paths: Set<string>;
  let merchant: Server;
  let merchantMode: 'fail' | 'ok' = 'fail';
  const sockets: Socket[] = [];

  before(async () => {
    ensureConsoleBuilt();
    browser = await launch();
    herald = await startTestHerald(FAST_WEBHOOKS);
    paths = await routes(herald);
    merchant = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        if (merchantMode === 'ok') res.writeHead(200).end('success');
        else res.writeHead(500).end('merchant is down');
      });
    });
    await new Promise<void>((r) => merchant.listen(0, '127.0.0.1', r));
  });

  after(async () => {
    closeAll(...sockets);
    await browser?.close();
    await herald?.cleanup();
    merchant?.close();
  });

  test('overview: loads without errors; connections and rates change live, without a reload', async () => {
    const c = await open(browser, `${herald.url()}/console`);
    try {
      const { page } = c;
      await waitText(page, '[data-testid=live-status]', (t) => t.includes('live'));
      await waitText(page, '[data-testid=total-connections]', (t) => t === '0');
      await page.getByText('No client is connected to this node').waitFor();
      await shot(page, 'overview-empty-laptop');

      const a = await connect(herald, 'shop', { clientId: 'user-1', deviceId: 'ios-1' });
      const b = await connect(herald, 'chat', { clientId: 'user-2' });
      sockets.push(a, b);
      await waitText(page, '[data-testid=total-connections]', (t) => t === '2');
      await page.locator('tr[data-app=shop]').waitFor();
      // A single node lists itself in the node list, with the same connections.
      await page.locator('[data-testid=nodes][data-mode=single][data-state=ok]').waitFor();
      await waitText(page, '[data-testid=nodes-count]', (t) => t === '1');
      await waitText(page, '[data-testid=nodes-total-connections]', (t) => t === '2');
      assert.equal(await page.locator('[data-testid=nodes-table] tr[data-self=true]').count(), 1);

      // Notifications/s rises while notifications flow.
      const pump = setInterval(() => {
        void post(herald, '/notify', { appId: 'shop', users: ['user-1'], data: { n: 1 } });
      }, 50);
      try {
        await waitText(page, '[data-testid=metric-notify] .metric-value', (t) => Number.parseFloat(t) > 0);
        await waitText(
          page,
          '[data-testid=metric-deliveries] .metric-value',
          (t) => Number.parseFloat(t) > 0,
        );
      } finally {
        clearInterval(pump);
      }
      await page.locator('[data-testid=health-store]').getByText('healthy').waitFor();
      await shot(page, 'overview-laptop');
      assert.deepEqual(c.errors, []);
    } finally {
      await c.close();
    }
  });

  test('realtime: busiest topics live, client search, and the test publish reaches a client', async () => {
    const sub = await connect(herald, 'shop', { clientId: 'user-567', deviceId: 'mobile-ios-001' });
    sockets.push(sub);
    await sub.timeout(3000).emitWithAck('subscribe', ['order:12345:status', 'promo:all']);
    const got: unknown[] = [];
    sub.on('dataUpdate', (data: unknown) => got.push(data));

    const c = await open(browser, `${herald.url()}/console/realtime`);
    try {
      const { page } = c;
      await page
        .locator('[data-testid=topics-table]')
        .getByText('order:12345:status')
        .waitFor({ timeout: 8000 });
      // A second subscriber shows up in the live table.
      const other = await connect(herald, 'shop', { clientId: 'user-9' });
      sockets.push(other);
      await other.timeout(3000).emitWithAck('subscribe', ['order:12345:status']);
      await waitText(
        page,
        '[data-testid=topics-table] tr:has-text("order:12345:status") td.num',
        (t) => t === '2',
      );

      await page.fill('input[name=q]', 'user-567');
      await page.click('form:has(input[name=q]) button[type=submit]');
      const found = page.locator('[data-testid=client-results]');
      await found.getByText('mobile-ios-001', { exact: false }).waitFor();
      await found.getByText('promo:all').waitFor();

      await page.fill('[data-testid=publish-form] input[name=appId]', 'shop');
      await page.fill('[data-testid=publish-form] input[name=to]', 'order:12345:status');
      await page.fill('[data-testid=publish-form] textarea[name=data]', '{"type":"test","from":"console"}');
      await page.click('[data-testid=publish-form] button[type=submit]');
      await page.locator('[data-testid=publish-result]').waitFor();
      const end = Date.now() + 3000;
      while (!got.some((d) => (d as { from?: string }).from === 'console') && Date.now() < end) {
        await page.waitForTimeout(20);
      }
      assert.ok(
        got.some((d) => (d as { from?: string }).from === 'console'),
        'the subscriber got the test notification',
      );

      // A bad JSON body is refused in the page, not sent.
      await page.fill('[data-testid=publish-form] textarea[name=data]', '{oops');
      await page.click('[data-testid=publish-form] button[type=submit]');
      await page.getByText('data is not valid JSON').waitFor();
      await page.fill('[data-testid=publish-form] textarea[name=data]', '{"type":"test"}');
      await shot(page, 'realtime-laptop');
      assert.deepEqual(c.errors, []);
    } finally {
      await c.close();
    }
  });

  test('merchant notifications: live deliveries, breaker opens, reset breaker, attempt detail and retry', async (t) => {
    if (!paths.has('/admin/merchant-notify/queue-status')) {
      t.skip('this node has no merchant webhook engine');
      return;
    }
    const c = await open(browser, `${herald.url()}/console/merchants`);
    try {
      const { page } = c;
      await page.locator('[data-testid=queue-status]').waitFor();
      await page.getByText('No webhook attempt yet').waitFor();
      if (!paths.has('/admin/merchant-notify/alerts')) {
        // A feature the node lacks is announced, not called (no 404 in the browser console).
        await page.getByText('Alert history is not available').waitFor();
      }
      await shot(page, 'merchants-empty-laptop');

      const url = `http://127.0.0.1:${(merchant.address() as AddressInfo).port}/notify`;
      merchantMode = 'fail';
      for (const orderNo of ['ORD-1001', 'ORD-1002']) {
        const r = await post(herald, '/merchant-notify', {
          orderNo,
          notifyUrl: url,
          merchantId: 'm-down',
          payload: { orderNo, status: 'paid', amount: 4 },
        });
        assert.equal(r.status, 202, r.text);
      }
      // Attempts stream in through the realtime channel.
      await page
        .locator('[data-testid=webhook-feed]')
        .getByText('ORD-1001')
        .first()
        .waitFor({ timeout: 8000 });
      // Two failures in a row open the breaker; the merchant list refreshes by itself.
      const row = page.locator('[data-testid=merchants-table] tr:has-text("m-down")');
      await waitText(
        page,
        '[data-testid=merchants-table] tr:has-text("m-down")',
        (x) => x.includes('breaker'),
        10_000,
      );
      await shot(page, 'merchants-laptop');

      // The merchant is back: reset its breaker from the console.
      merchantMode = 'ok';
      await row.getByRole('button', { name: 'Reset breaker' }).click();
      await waitText(
        page,
        '[data-testid=merchants-table] tr:has-text("m-down")',
        (x) => x.includes('normal'),
        8000,
      );

      // Attempt detail and retry from the delivery log.
      await page.locator('[data-testid=logs-table] tr:has-text("ORD-1001")').first().click();
      const detail = page.locator('[data-testid=attempt-detail]');
      await detail.getByText('Attempt 1').waitFor();
      await detail.getByText('merchant is down').first().waitFor();
      await detail.getByRole('button', { name: 'Retry now' }).click();
      await detail.getByText('Queued again').waitFor();
      // The retried webhook succeeds now and shows up live.
      await page
        .locator('[data-testid=webhook-feed] li:has-text("ORD-1001")')
        .filter({ hasText: 'success' })
        .first()
        .waitFor({ timeout: 8000 });

      // Log filters.
      await page.fill('input[name=order_no]', 'ORD-1002');
      await page.selectOption('select[name=status]', 'failed');
      await page.click('form:has(input[name=order_no]) button[type=submit]');
      await waitText(
        page,
        '[data-testid=logs-table] tbody',
        (x) => x.includes('ORD-1002') && !x.includes('ORD-1001'),
      );
      assert.deepEqual(c.errors, []);
    } finally {
      await c.close();
    }
  });

  test('payments and machines: live orders, counts per state, machine online/offline, command to a machine', async (t) => {
    if (!paths.has('/payments/events') || !paths.has('/devices/{deviceId}/commands')) {
      t.skip('this node has no payment tracking');
      return;
    }
    const c = await open(browser, `${herald.url()}/console/payments`);
    try {
      const { page } = c;
      await page.getByText('No payment event yet').waitFor();

      const machine = await connectWith(herald, 'shop', {
        extraHeaders: { 'x-client-id': 'pos-7', 'x-device-id': 'pos-7', 'x-merchant-id': 'm-shop' },
      });
      sockets.push(machine);
      machine.on('command', (cmd: { command: string; args: unknown }, ack: (reply: unknown) => void) =>
        ack({ pong: true, command: cmd.command, args: cmd.args }),
      );
      await page.locator('button[data-device=pos-7][data-online=true]').waitFor({ timeout: 10_000 });

      for (const type of ['created', 'paying', 'succeeded']) {
        const r = await post(herald, '/payments/events', paymentEvent('o-42', type, { deviceId: 'pos-7' }));
        assert.equal(r.status, 200, r.text);
      }
      await post(herald, '/payments/events', paymentEvent('o-43', 'created'));
      await post(herald, '/payments/events', paymentEvent('o-43', 'failed'));
      const feed = page.locator('[data-testid=order-feed]');
      await feed
        .locator('li[data-order=o-42]')
        .filter({ hasText: 'succeeded' })
        .first()
        .waitFor({ timeout: 8000 });
      await feed.locator('li[data-order=o-43]').filter({ hasText: 'failed' }).first().waitFor();
      await waitText(page, '[data-testid=state-counts] [data-key=succeeded] .bar-value', (x) => x === '1');
      await waitText(page, '[data-testid=state-counts] [data-key=failed] .bar-value', (x) => x === '1');

      await page.click('button[data-device=pos-7]');
      await page.fill('[data-testid=command-form] input[name=command]', 'print-receipt');
      await page.fill('[data-testid=command-form] textarea[name=args]', '{"copies":2}');
      await page.click('[data-testid=command-form] button[type=submit]');
      await waitText(
        page,
        '[data-testid=command-result]',
        (x) => x.includes('"pong":true') && x.includes('print-receipt'),
      );
      await shot(page, 'payments-laptop');

      machine.close();
      await page.locator('button[data-device=pos-7][data-online=false]').waitFor({ timeout: 10_000 });
      // An offline machine: the node answers 404 device_offline, shown as an error.
      await page.click('[data-testid=command-form] button[type=submit]');
      await waitText(page, '[data-testid=command-error]', (x) => /offline|not connected/i.test(x));
      assert.deepEqual(
        c.errors.filter((e) => !/status of 404/.test(e)),
        [],
      );
    } finally {
      await c.close();
    }
  });

  test('cashier: shows each payment and speaks the successful ones (speechSynthesis)', async () => {
    const c = await open(browser, `${herald.url()}/console/cashier?appId=shop&merchantId=m-cash`, {
      // Record what would be spoken (headless Chromium has no voices).
      init: `
        window.__spoken = [];
        Object.defineProperty(window, 'speechSynthesis', {
          configurable: true,
          value: {
            speak: (u) => window.__spoken.push(u.lang + '|' + u.text),
            cancel: () => undefined,
            getVoices: () => [],
            addEventListener: () => undefined,
            removeEventListener: () => undefined,
          },
        });`,
    });
    try {
      const { page } = c;
      await waitText(
        page,
        '[data-testid=cashier-status]',
        (x) => x.includes('connected') && !x.includes('未'),
      );
      await page.click('[data-testid=voice-toggle]');
      const notify = (status: string, orderId: string, amount: number, announcement: string) =>
        post(herald, '/notify', {
          appId: 'shop',
          users: ['m-cash'],
          data: {
            type: 'payment',
            status,
            orderId,
            merchantId: 'm-cash',
            amount,
            currency: 'CNY',
            announcement,
          },
        });
      await notify('paying', 'c-1', 4, '正在支付 4.00 元');
      await notify('succeeded', 'c-1', 4, '收款 4.00 元');
      await notify('failed', 'c-2', 12.5, '支付失败 12.50 元');
      const feed = page.locator('[data-testid=cashier-feed]');
      await feed.locator('li[data-status=succeeded]').getByText('收款 4.00 元').waitFor();
      await feed.locator('li[data-status=failed]').getByText('支付失败 12.50 元').waitFor();
      await waitText(page, '[data-testid=cashier-total]', (x) => x.includes('4.00'));
      const spoken = (await page.evaluate('window.__spoken')) as string[];
      assert.deepEqual(
        spoken,
        ['zh-CN|语音播报已开启', 'zh-CN|收款 4.00 元'],
        'only the successful payment is spoken',
      );

      if (paths.has('/payments/events')) {
        // The real pipeline: a machine's successful payment reaches the merchant's cashier and is spoken.
        const ev = (type: string) => paymentEvent('c-3', type, { merchantId: 'm-cash', amount: 8.8 });
        assert.equal((await post(herald, '/payments/events', ev('created'))).status, 200);
        assert.equal((await post(herald, '/payments/events', ev('succeeded'))).status, 200);
        await feed.locator('li[data-status=succeeded]').getByText('8.80').first().waitFor({ timeout: 5000 });
        await page.waitForFunction(`window.__spoken.some((s) => s.includes('8.80'))`);
      }
      await shot(page, 'cashier-laptop');
      await page.setViewportSize(PHONE);
      await shot(page, 'cashier-phone');
      assert.deepEqual(c.errors, []);
    } finally {
      await c.close();
    }
  });

  test('phone width: every page fits the screen, and the menu opens', async () => {
    for (const [path, name] of [
      ['', 'overview'],
      ['realtime', 'realtime'],
      ['merchants', 'merchants'],
      ['payments', 'payments'],
    ] as const) {
      const c = await open(browser, `${herald.url()}/console/${path}`, { viewport: PHONE });
      try {
        const { page } = c;
        await page.locator('.page-title').waitFor();
        await page.waitForLoadState('networkidle');
        await shot(page, `${name}-phone`);
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        assert.ok(overflow <= 1, `${name}: the page is ${overflow}px wider than a phone screen`);
        assert.deepEqual(c.errors, [], `${name}: console errors`);
        if (name === 'overview') {
          await page.click('.menu-btn');
          await page.getByRole('link', { name: /Payments/ }).click();
          await page.locator('.page-title', { hasText: 'Payments' }).waitFor();
        }
      } finally {
        await c.close();
      }
    }
    // The laptop screenshot of the unknown-page state.
    const c = await open(browser, `${herald.url()}/console/nope`, { viewport: LAPTOP });
    try {
      await c.page.getByText('Page not found').waitFor();
      assert.deepEqual(c.errors, []);
    } finally {
      await c.close();
    }
  });
});

describe('web console access', () => {
  const TOKEN = 'console-admin-token-0123456789';
  let browser: Browser;
  let herald: TestHerald;

  before(async () => {
    ensureConsoleBuilt();
    browser = await launch();
    herald = await startTestHerald({ adminToken: TOKEN });
  });

  after(async () => {
    await browser?.close();
    await herald?.cleanup();
  });

  test('ADMIN_TOKEN: the API and the realtime namespace refuse anonymous callers', async () => {
    assert.equal((await fetch(`${herald.url()}/admin/api/overview`)).status, 401);
    const wrong = await fetch(`${herald.url()}/admin/api/overview`, {
      headers: { authorization: 'Bearer nope' },
    });
    assert.equal(wrong.status, 401);
    assert.equal(((await wrong.json()) as { error: { code: string } }).error.code, 'unauthorized');
    const ok = await fetch(`${herald.url()}/admin/api/overview`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(ok.status, 200);
    assert.equal(
      (await post(herald, '/admin/api/publish', { appId: 'a', broadcast: true, data: {} })).status,
      401,
    );

    const err = await refused(connectWith(herald, 'admin/console', {}));
    assert.equal(err.data?.code, 'unauthorized');
    const err2 = await refused(connectWith(herald, 'admin/console', { auth: { token: 'nope' } }));
    assert.equal(err2.data?.code, 'unauthorized');
    const s = await connectWith(herald, 'admin/console', { auth: { token: TOKEN } });
    const stats = new Promise<{ totals: { connections: number } }>((resolve) => s.once('stats', resolve));
    s.emit('watch', ['stats']);
    assert.equal((await stats).totals.connections, 0, 'console sockets are not app connections');
    s.close();
    // The console's namespace is not an app: an app client cannot reach it through /<appId>.
    const app = await connect(herald, '_console', { clientId: 'x' });
    const ack = (await app.timeout(3000).emitWithAck('watch', ['stats'])) as {
      ok: boolean;
      error?: { code: string };
    };
    assert.equal(ack.ok, false);
    assert.equal(ack.error?.code, 'unknown_event');
    app.close();
  });

  test('ADMIN_TOKEN: the console asks for the token, refuses a wrong one, opens with the right one', async () => {
    const c = await open(browser, `${herald.url()}/console/realtime`, {
      allow: [/status of 401/],
    });
    try {
      const { page } = c;
      await page.locator('input[name=token]').waitFor();
      await shot(page, 'login-laptop');
      await page.fill('input[name=token]', 'wrong-token');
      await page.click('button[type=submit]');
      await page.getByText('That token was not accepted').waitFor();
      await page.fill('input[name=token]', TOKEN);
      await page.click('button[type=submit]');
      await page.locator('.page-title', { hasText: 'Realtime' }).waitFor();
      await waitText(page, '[data-testid=live-status]', (x) => x.includes('live'));
      // The token is kept for the tab: a reload stays signed in.
      await page.reload();
      await page.locator('.page-title', { hasText: 'Realtime' }).waitFor();
      assert.equal(await page.locator('input[name=token]').count(), 0);
      assert.deepEqual(c.errors, []);
    } finally {
      await c.close();
    }
  });
});

describe('web console in apps mode without ADMIN_TOKEN', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({
      apps: [
        { id: 'shop', secret: 'a-long-random-secret-for-jwt', apiKeys: ['key-for-the-shop-backend-0001'] },
      ],
    });
  });
  after(async () => {
    await herald?.cleanup();
  });

  test('the console is closed: it would otherwise act for every app without their API keys', async () => {
    for (const [method, path] of [
      ['GET', '/admin/api/overview'],
      ['POST', '/admin/api/publish'],
      ['GET', '/admin/api/as-app/shop/devices'],
    ] as const) {
      const res = await fetch(`${herald.url()}${path}`, {
        method,
        headers: { 'content-type': 'application/json' },
        ...(method === 'POST' ? { body: JSON.stringify({ appId: 'shop', broadcast: true, data: {} }) } : {}),
      });
      assert.equal(res.status, 403, path);
      const body = (await res.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, 'forbidden');
      assert.match(body.error.message, /ADMIN_TOKEN/);
    }
    const err = await refused(connectWith(herald, 'admin/console', {}));
    assert.equal(err.data?.code, 'forbidden');
  });
});

describe('web console not built', () => {
  test('/console answers 503 with how to build it when console/dist is missing', async () => {
    const { default: Fastify } = await import('fastify');
    const { consoleStatic } = await import('../../src/console/static.js');
    const app = Fastify();
    await consoleStatic(app, `/nonexistent-${randomUUID()}`);
    for (const url of ['/console', '/console/', '/console/payments', '/console/assets/x.js']) {
      const res = await app.inject({ url });
      assert.equal(res.statusCode, 503, url);
      assert.match(res.headers['content-type'] as string, /text\/html/);
      assert.match(res.body, /npm run build/);
    }
    await app.close();
  });
});
