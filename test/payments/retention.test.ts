import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { deleteExpiredOrders, paymentApps } from '../../src/payments/ledger.js';
import type { Herald } from '../../src/server.js';
import { cleanupSpots, ev, get, newOrderId, newSpot, STORES, startNode } from './helpers.js';

const APP = 'pos-retention';
const OTHER_APP = 'pos-retention-b';

after(cleanupSpots);

async function post(herald: Herald, body: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(`${herald.url()}/payments/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.json()) as Record<string, unknown>;
}

/** Runs an order through `types` (each event accepted). */
async function order(herald: Herald, appId: string, types: string[]): Promise<string> {
  const orderId = newOrderId();
  for (const type of types) {
    await post(herald, ev({ appId, orderId, merchantId: 'm-1', type, amount: 4, currency: 'CNY' }));
  }
  return orderId;
}

/** Moves an order's creation and last change (and its events' reception) `ms` into the past. */
async function age(herald: Herald, appId: string, orderId: string, ms: number, changedMs = ms) {
  await herald.store.query(
    `UPDATE payment_orders SET created_at = now() - $3::float8 * interval '1 millisecond',
       updated_at = now() - $4::float8 * interval '1 millisecond'
     WHERE app_id = $1 AND order_id = $2`,
    [appId, orderId, ms, changedMs],
  );
  await herald.store.query(
    `UPDATE payment_events SET received_at = now() - $3::float8 * interval '1 millisecond'
     WHERE app_id = $1 AND order_id = $2`,
    [appId, orderId, ms],
  );
}

async function exists(herald: Herald, appId: string, orderId: string): Promise<boolean> {
  const r = await get(herald, `/payments/orders/${orderId}?appId=${appId}`);
  assert.ok(r.status === 200 || r.status === 404, `status ${r.status}`);
  return r.status === 200;
}

async function eventCount(herald: Herald, appId: string, orderId: string): Promise<number> {
  const { rows } = await herald.store.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM payment_events WHERE app_id = $1 AND order_id = $2',
    [appId, orderId],
  );
  return Number(rows[0]?.n);
}

const HOUR = 3_600_000;

/**
 * PAYMENT_RETENTION: finished orders not changed for that long are deleted with their events, by the
 * sweep, a chunk at a time, over every app; open orders and recently changed ones stay; stats still
 * count the deleted ones. The nodes here sweep every 10 minutes: the tests run the passes themselves.
 */
for (const kind of STORES) {
  describe(`payment retention (${kind})`, () => {
    it('deletes finished orders past the retention with their events, and keeps the rest', async () => {
      const herald = await startNode(newSpot(kind), {
        paymentRetention: 24 * HOUR,
        paymentSweepInterval: 600_000,
      });
      try {
        const oldDone = await order(herald, APP, ['created', 'paying', 'succeeded']);
        const oldFailed = await order(herald, OTHER_APP, ['created', 'failed']);
        const oldOpen = await order(herald, APP, ['created', 'paying']);
        const oldButRefundedLately = await order(herald, APP, ['created', 'succeeded', 'refunded']);
        const recentDone = await order(herald, APP, ['created', 'succeeded']);
        await age(herald, APP, oldDone, 25 * HOUR);
        await age(herald, OTHER_APP, oldFailed, 48 * HOUR);
        await age(herald, APP, oldOpen, 25 * HOUR);
        await age(herald, APP, oldButRefundedLately, 25 * HOUR, HOUR);
        await age(herald, APP, recentDone, 23 * HOUR);
        assert.equal(await eventCount(herald, APP, oldDone), 3);
        const statsBefore = (await get(herald, `/payments/stats?appId=${APP}`)).body;

        // Machines: one offline for longer than the retention (forgotten), one offline lately, and one
        // online whose own row is old (its node's heartbeat says it is there): both kept.
        await herald.store.query(
          `INSERT INTO payment_machines (app_id, device_id, merchant_id, online, node_id, connected_at, last_seen_at)
           VALUES ($1, 'pos-gone', 'm-1', false, 'n', now() - interval '30 days', now() - interval '25 hours'),
                  ($1, 'pos-lately', 'm-1', false, 'n', now() - interval '30 days', now() - interval '1 hour'),
                  ($1, 'pos-online', 'm-1', true, 'n', now() - interval '30 days', now() - interval '30 days')`,
          [APP],
        );
        assert.deepEqual((await paymentApps(herald.store)).sort(), [APP, OTHER_APP].sort());
        assert.equal(await herald.payments.deleteExpired(), 2);

        assert.equal(await exists(herald, APP, oldDone), false);
        assert.equal(await eventCount(herald, APP, oldDone), 0);
        assert.equal(await exists(herald, OTHER_APP, oldFailed), false);
        assert.equal(await eventCount(herald, OTHER_APP, oldFailed), 0);
        assert.equal(await exists(herald, APP, oldOpen), true, 'an open order stays (the timeout closes it)');
        assert.equal(await exists(herald, APP, oldButRefundedLately), true, 'changed within the retention');
        assert.equal(await exists(herald, APP, recentDone), true);
        assert.equal(await eventCount(herald, APP, recentDone), 2);

        // The counters are not the orders: stats still count the deleted ones.
        const statsAfter = (await get(herald, `/payments/stats?appId=${APP}`)).body;
        assert.deepEqual(statsAfter.counts, statsBefore.counts);

        const metrics = await (await fetch(`${herald.url()}/metrics`)).text();
        assert.match(metrics, /herald_payment_retention_deleted_total\{kind="orders"\} 2/);
        assert.match(metrics, /herald_payment_retention_deleted_total\{kind="events"\} 5/);
        assert.match(metrics, /herald_payment_retention_deleted_total\{kind="machines"\} 1/);
        const machines = await herald.store.query<{ device_id: string }>(
          'SELECT device_id FROM payment_machines ORDER BY device_id',
        );
        assert.deepEqual(
          machines.rows.map((r) => r.device_id),
          ['pos-lately', 'pos-online'],
        );
        assert.equal(await herald.payments.deleteExpired(), 0, 'nothing left to delete');

        // A late refund of a deleted order is refused as for an unknown order (refunds need `succeeded`).
        const refund = await fetch(`${herald.url()}/payments/events`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(ev({ appId: APP, orderId: oldDone, merchantId: 'm-1', type: 'refunded' })),
        });
        assert.equal(refund.status, 409);
        assert.equal(((await refund.json()) as { error: { code: string } }).error.code, 'invalid_transition');
        // An event for a deleted order starts it again (its event ids are forgotten with it).
        const again = await post(
          herald,
          ev({ appId: APP, orderId: oldDone, merchantId: 'm-1', type: 'created', amount: 4 }),
        );
        assert.equal(again.ok, true);
        assert.equal(again.state, 'created');
      } finally {
        await herald.stop();
      }
    });

    it('deletes a chunk per statement, oldest first, and the sweep goes on where a pass stopped', async () => {
      const herald = await startNode(newSpot(kind), {
        paymentRetention: HOUR,
        paymentSweepInterval: 600_000,
      });
      try {
        const ids: string[] = [];
        for (let i = 0; i < 5; i++) {
          const id = await order(herald, APP, ['created', 'closed']);
          await age(herald, APP, id, (10 - i) * HOUR);
          ids.push(id);
        }
        // Two per statement: the two oldest go first.
        const first = await deleteExpiredOrders(herald.store, APP, HOUR, 2);
        assert.deepEqual(first.orders.sort(), ids.slice(0, 2).sort());
        assert.equal(first.events, 4);
        // A pass capped at one statement takes APP's other three and stops before the next app...
        const other = await order(herald, OTHER_APP, ['created', 'failed']);
        await age(herald, OTHER_APP, other, 2 * HOUR);
        assert.equal(await herald.payments.deleteExpired(1), 3);
        for (const id of ids) assert.equal(await exists(herald, APP, id), false);
        assert.equal(await exists(herald, OTHER_APP, other), true);
        // ...and the next sweep goes on at once (not a minute later).
        await herald.payments.sweep();
        assert.equal(await exists(herald, OTHER_APP, other), false);
      } finally {
        await herald.stop();
      }
    });
  });
}
