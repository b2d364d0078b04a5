import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { Socket } from 'socket.io-client';
import type { Herald } from '../../src/server.js';
import { collect, sleep, until } from '../helpers.js';
import {
  cleanupSpots,
  ev,
  get,
  machine,
  merchantApp,
  newOrderId,
  newSpot,
  report,
  STORES,
  startNode,
} from './helpers.js';

const APP = 'pos-app';
type Update = { data: Record<string, unknown> };

after(cleanupSpots);

for (const kind of STORES) {
  describe(`payments on the ${kind} store: PAYMENT_TIMEOUT`, () => {
    it('closes orders still created or paying after the timeout, with reason timeout, and tells app and machine', async () => {
      const herald = await startNode(newSpot(kind), { paymentTimeout: 1000, paymentSweepInterval: 100 });
      const sockets: Socket[] = [];
      try {
        const app = await merchantApp(herald, APP, 'm-to');
        sockets.push(app);
        const appGot = collect(app) as unknown as Update[];
        const pos = await machine(herald, APP, 'pos-to', 'm-to');
        sockets.push(pos);
        const posGot = collect(pos) as unknown as Update[];
        const [created, paying, paid] = [newOrderId(), newOrderId(), newOrderId()];
        await report(pos, ev({ orderId: created, type: 'created', amount: 4 }));
        await report(pos, ev({ orderId: paying, type: 'created', amount: 6 }));
        await report(pos, ev({ orderId: paying, type: 'paying' }));
        await report(pos, ev({ orderId: paid, type: 'created', amount: 1 }));
        await report(pos, ev({ orderId: paid, type: 'succeeded' }));

        const closedOf = (list: Update[], orderId: string) =>
          list.find((u) => u.data.orderId === orderId && u.data.status === 'closed')?.data;
        await until(
          () => !!closedOf(appGot, created) && !!closedOf(appGot, paying),
          5000,
          'timeout notifications',
        );
        assert.deepEqual(
          {
            previous: closedOf(appGot, paying)?.previous,
            reason: closedOf(appGot, paying)?.reason,
            announcement: closedOf(appGot, paying)?.announcement,
          },
          { previous: 'paying', reason: 'timeout', announcement: '支付超时，订单已关闭 6.00 元' },
        );
        await until(() => !!closedOf(posGot, created), 2000, 'the machine hears it too');

        const order = await get(herald, `/payments/orders/${created}?appId=${APP}`);
        assert.equal(order.body.state, 'closed');
        assert.equal(order.body.reason, 'timeout');
        const events = order.body.events as Record<string, unknown>[];
        assert.deepEqual(
          { id: events.at(-1)?.eventId, source: events.at(-1)?.source, from: events.at(-1)?.from },
          { id: `timeout:${created}`, source: 'timeout', from: 'created' },
        );
        assert.equal((await get(herald, `/payments/orders/${paid}?appId=${APP}`)).body.state, 'succeeded');

        // A success that arrives after the order timed out means the money was taken after all: the
        // order is reconciled closed -> succeeded, and app and machine hear it (with the announcement).
        const late = await report(pos, ev({ orderId: created, type: 'succeeded' }));
        assert.deepEqual({ ok: late.ok, state: late.state }, { ok: true, state: 'succeeded' });
        const paidOf = (list: Update[]) =>
          list.find((u) => u.data.orderId === created && u.data.status === 'succeeded')?.data;
        await until(() => !!paidOf(appGot) && !!paidOf(posGot), 5000, 'the reconciliation notification');
        assert.deepEqual(
          {
            previous: paidOf(appGot)?.previous,
            reason: paidOf(appGot)?.reason,
            announcement: paidOf(appGot)?.announcement,
            version: paidOf(appGot)?.version,
          },
          {
            previous: 'closed',
            reason: 'reconciled_after_timeout',
            announcement: '收款 4.00 元',
            version: 3,
          },
        );
        const reconciled = await get(herald, `/payments/orders/${created}?appId=${APP}`);
        assert.deepEqual(
          { state: reconciled.body.state, reason: reconciled.body.reason },
          { state: 'succeeded', reason: 'reconciled_after_timeout' },
        );
        const lastEvent = (reconciled.body.events as Record<string, unknown>[]).at(-1);
        assert.deepEqual(
          { from: lastEvent?.from, to: lastEvent?.to, reason: lastEvent?.reason },
          { from: 'closed', to: 'succeeded', reason: 'reconciled_after_timeout' },
        );
        // The same report again is a duplicate; a second, different success is stale.
        assert.equal((await report(pos, ev({ orderId: created, type: 'succeeded' }))).stale, true);

        // An order the merchant cancelled stays closed: a success after it is refused for good.
        const cancelled = newOrderId();
        await report(pos, ev({ orderId: cancelled, type: 'created', amount: 2 }));
        await report(pos, ev({ orderId: cancelled, type: 'closed', meta: { reason: 'cancelled' } }));
        const refused = await report(pos, ev({ orderId: cancelled, type: 'succeeded' }));
        assert.equal((refused.error as { code: string }).code, 'invalid_transition');
        assert.equal((refused.error as { details: { retryable: boolean } }).details.retryable, false);

        // Each order is closed once, however many sweeps run.
        await sleep(300);
        assert.equal(
          appGot.filter((u) => u.data.orderId === created && u.data.status === 'closed').length,
          1,
        );
      } finally {
        for (const s of sockets) s.close();
        await herald.stop();
      }
    });

    it('closes an order whose timeout passed while no node was running, after a restart on the same store', async () => {
      const spot = newSpot(kind);
      // The first node sweeps only when told to, and its order is younger than the timeout then.
      let herald: Herald = await startNode(spot, { paymentTimeout: 2000, paymentSweepInterval: 600_000 });
      const orderId = newOrderId();
      const pos = await machine(herald, APP, 'pos-restart', 'm-restart');
      assert.equal((await report(pos, ev({ orderId, type: 'paying', amount: 9 }))).state, 'paying');
      assert.deepEqual(
        await herald.payments.sweep(),
        { closed: 0, webhooks: 0, republished: 0 },
        'not due yet',
      );
      pos.close();
      await herald.stop();

      await sleep(2200);
      herald = await startNode(spot, { paymentTimeout: 2000, paymentSweepInterval: 100 });
      try {
        const app = await merchantApp(herald, APP, 'm-restart');
        const appGot = collect(app) as unknown as Update[];
        await until(
          () => appGot.some((u) => u.data.orderId === orderId && u.data.status === 'closed'),
          5000,
          'the closed notification after the restart',
        );
        const order = await get(herald, `/payments/orders/${orderId}?appId=${APP}`);
        assert.deepEqual(
          { state: order.body.state, reason: order.body.reason, version: order.body.version },
          { state: 'closed', reason: 'timeout', version: 2 },
        );
        app.close();
      } finally {
        await herald.stop();
      }
    });
  });
}
