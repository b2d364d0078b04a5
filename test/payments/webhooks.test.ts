import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Socket } from 'socket.io-client';
import { HeraldError } from '../../src/errors.js';
import type { Herald } from '../../src/server.js';
import { sleep, until } from '../helpers.js';
import {
  cleanupSpots,
  ev,
  eventually,
  type FakeNotifier,
  fakeWebhooks,
  machine,
  newOrderId,
  newSpot,
  report,
  STORES,
  startNode,
} from './helpers.js';

const APP = 'pos-app';

after(cleanupSpots);

async function webhookState(herald: Herald, orderId: string): Promise<(string | null)[]> {
  const { rows } = await herald.store.query<{ webhook: string | null }>(
    'SELECT webhook FROM payment_events WHERE app_id = $1 AND order_id = $2 ORDER BY seq',
    [APP, orderId],
  );
  return rows.map((r) => r.webhook);
}

for (const kind of STORES) {
  describe(`payments on the ${kind} store: merchant notifications through a fake webhook engine`, () => {
    let herald: Herald;
    let fake: FakeNotifier;
    let pos: Socket;
    before(async () => {
      herald = await startNode(newSpot(kind), { paymentSweepInterval: 100 });
      fake = fakeWebhooks(herald);
      pos = await machine(herald, APP, 'pos-wh', 'm-wh');
    });
    after(async () => {
      pos.close();
      await herald.stop();
    });

    it('hands every transition to the engine once, keyed by app, order and state; duplicates and stale events not', async () => {
      const orderId = newOrderId();
      const notifyUrl = 'https://merchant.example/pay/notify';
      const created = ev({ orderId, type: 'created', amount: 4, notifyUrl });
      await report(pos, created);
      await report(pos, created);
      await report(pos, ev({ orderId, type: 'paying' }));
      await report(pos, ev({ orderId, type: 'succeeded', amount: 4 }));
      await report(pos, ev({ orderId, type: 'paying' }));
      await until(() => fake.calls.filter((c) => c.orderNo === orderId).length === 3);
      await sleep(200);
      const calls = fake.calls.filter((c) => c.orderNo === orderId);
      assert.deepEqual(
        calls.map((c) => [c.idempotencyKey, c.eventType, c.notifyUrl, c.merchantId]),
        [
          [`${APP}:${orderId}:created`, 'payment.created', notifyUrl, 'm-wh'],
          [`${APP}:${orderId}:paying`, 'payment.paying', notifyUrl, 'm-wh'],
          [`${APP}:${orderId}:succeeded`, 'payment.succeeded', notifyUrl, 'm-wh'],
        ],
      );
      const payload = calls[2]?.payload as Record<string, unknown>;
      assert.deepEqual(
        {
          type: payload.type,
          status: payload.status,
          previous: payload.previous,
          amount: payload.amount,
          currency: payload.currency,
          orderId: payload.orderId,
        },
        {
          type: 'payment.status',
          status: 'succeeded',
          previous: 'paying',
          amount: 4,
          currency: 'CNY',
          orderId,
        },
      );
      await eventually(async () => (await webhookState(herald, orderId)).every((w) => w !== 'pending'));
      assert.deepEqual(await webhookState(herald, orderId), ['sent', 'sent', 'sent', null]);
    });

    it('tells the merchant server of a success reconciled after a timeout close', async () => {
      const orderId = newOrderId();
      const notifyUrl = 'https://merchant.example/pay/notify';
      await report(pos, ev({ orderId, type: 'created', amount: 8, notifyUrl }));
      await report(pos, ev({ orderId, type: 'closed', meta: { reason: 'timeout' } }));
      const late = await report(pos, ev({ orderId, type: 'succeeded', amount: 8 }));
      assert.equal(late.state, 'succeeded');
      const key = `${APP}:${orderId}:succeeded`;
      await until(() => fake.calls.some((c) => c.idempotencyKey === key), 5000, 'the reconciliation webhook');
      const payload = fake.calls.find((c) => c.idempotencyKey === key)?.payload as Record<string, unknown>;
      assert.deepEqual(
        {
          status: payload.status,
          previous: payload.previous,
          reason: payload.reason,
          amount: payload.amount,
        },
        { status: 'succeeded', previous: 'closed', reason: 'reconciled_after_timeout', amount: 8 },
      );
    });

    it('offers a notification again when the engine could not take it, and gives up when it refuses it', async () => {
      const orderId = newOrderId();
      const notifyUrl = 'https://merchant.example/pay/notify';
      fake.fail = new HeraldError('store_unavailable');
      await report(pos, ev({ orderId, type: 'created', amount: 2, notifyUrl }));
      await sleep(100);
      assert.deepEqual(await webhookState(herald, orderId), ['pending']);
      fake.fail = undefined;
      // The sweep offers pending notifications again once they are a few seconds old.
      await until(
        () => fake.calls.some((c) => c.idempotencyKey === `${APP}:${orderId}:created`),
        8000,
        'the retry',
      );
      await eventually(async () => (await webhookState(herald, orderId))[0] === 'sent');

      fake.fail = new HeraldError('validation_failed', 'notifyUrl is not allowed');
      await report(pos, ev({ orderId, type: 'failed', meta: { reason: 'card_declined' } }));
      await eventually(async () => (await webhookState(herald, orderId))[1] === 'failed');
      fake.fail = undefined;
      await sleep(2500);
      assert.equal(fake.calls.filter((c) => c.idempotencyKey === `${APP}:${orderId}:failed`).length, 0);
    });
  });

  describe(`payments on the ${kind} store: merchant notifications through the real webhook engine`, () => {
    let herald: Herald;
    let merchant: Server;
    const received: { url: string; body: Record<string, unknown> }[] = [];
    before(async () => {
      merchant = createServer((req, res) => {
        let body = '';
        req.on('data', (c: Buffer) => {
          body += c.toString();
        });
        req.on('end', () => {
          received.push({ url: req.url ?? '', body: JSON.parse(body) as Record<string, unknown> });
          res.writeHead(200, { 'content-type': 'text/plain' }).end('success');
        });
      });
      await new Promise<void>((r) => merchant.listen(0, '127.0.0.1', r));
      herald = await startNode(newSpot(kind), {
        webhookAllowPrivateNetworks: true,
        webhookPollInterval: 20,
        webhookRetryDelays: [50, 50, 50],
      });
    });
    after(async () => {
      await herald.stop();
      await new Promise((r) => merchant.close(r));
    });

    it("delivers each state change of an order to the merchant's notifyUrl once", async () => {
      const pos = await machine(herald, APP, 'pos-real', 'm-real');
      const orderId = newOrderId();
      const notifyUrl = `http://127.0.0.1:${(merchant.address() as AddressInfo).port}/notify`;
      await report(pos, ev({ orderId, type: 'created', amount: 4, notifyUrl }));
      const paid = ev({ orderId, type: 'succeeded', amount: 4 });
      await report(pos, paid);
      await report(pos, paid);
      await until(
        () => received.filter((r) => r.body.orderId === orderId).length === 2,
        5000,
        'two webhooks',
      );
      await sleep(300);
      const mine = received.filter((r) => r.body.orderId === orderId);
      assert.deepEqual(
        mine.map((r) => [r.url, r.body.status, r.body.previous]),
        [
          ['/notify', 'created', null],
          ['/notify', 'succeeded', 'created'],
        ],
      );
      pos.close();
    });
  });
}
