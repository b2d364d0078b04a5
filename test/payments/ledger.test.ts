import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import {
  applyEvents,
  DuplicateConflict,
  eventKey,
  loadOrders,
  OrderConflict,
  orderKey,
} from '../../src/payments/ledger.js';
import type { PaymentEvent } from '../../src/payments/types.js';
import type { Store } from '../../src/store/index.js';
import { cleanupSpots, openSpotStore, paymentEvent, STORES } from './helpers.js';

const APP = 'ledger-app';

const event = (orderId: string, type: PaymentEvent['type'], eventId?: string): PaymentEvent =>
  paymentEvent(APP, orderId, type, eventId);

const opts = { defaultCurrency: 'CNY', knownDuplicates: new Set<string>() };

async function apply(store: Store, events: PaymentEvent[]) {
  const orders = await loadOrders(store, events);
  return applyEvents(
    store,
    orders,
    events.map((e) => ({ event: e, source: 'http' as const })),
    opts,
  );
}

async function count(store: Store, sql: string, params: unknown[]): Promise<number> {
  const { rows } = await store.query<{ n: number }>(sql, params);
  return Number(rows[0]?.n);
}

for (const kind of STORES) {
  describe(`payment ledger writes (${kind} store)`, () => {
    let store: Store;
    before(async () => {
      store = await openSpotStore(kind);
    });
    after(async () => {
      await store.close();
      await cleanupSpots();
    });

    it('aborts the whole batch when an order changed after it was read', async () => {
      const orderId = randomUUID();
      await apply(store, [event(orderId, 'created')]);
      // Read by one writer, then changed by another before the first one writes.
      const stale = await loadOrders(store, [{ appId: APP, orderId }]);
      await apply(store, [event(orderId, 'paying')]);
      const other = randomUUID();
      await assert.rejects(
        applyEvents(
          store,
          stale,
          [
            { event: event(other, 'created'), source: 'http' },
            { event: event(orderId, 'succeeded'), source: 'http' },
          ],
          opts,
        ),
        OrderConflict,
      );
      // Nothing of the aborted batch was written: not the other order, not the event.
      assert.equal(
        await count(store, 'SELECT count(*)::int AS n FROM payment_orders WHERE order_id = $1', [other]),
        0,
      );
      const fresh = await loadOrders(store, [{ appId: APP, orderId }]);
      assert.equal(fresh.get(orderKey(APP, orderId))?.state, 'paying');
      assert.equal(fresh.get(orderKey(APP, orderId))?.version, 2);
      // Read again, the same batch goes through.
      const r = await apply(store, [event(other, 'created'), event(orderId, 'succeeded')]);
      assert.deepEqual(
        r.transitions.map((t) => t.to),
        ['created', 'succeeded'],
      );
    });

    it('aborts when another writer created one of its new orders first', async () => {
      const orderId = randomUUID();
      const none = await loadOrders(store, [{ appId: APP, orderId }]);
      assert.equal(none.size, 0);
      await apply(store, [event(orderId, 'created')]);
      await assert.rejects(
        applyEvents(store, none, [{ event: event(orderId, 'paying'), source: 'http' }], opts),
        OrderConflict,
      );
      assert.equal(
        await count(store, 'SELECT count(*)::int AS n FROM payment_events WHERE order_id = $1', [orderId]),
        1,
      );
    });

    it('names the events another writer stored first, and writes none of the batch', async () => {
      const a = randomUUID();
      const b = randomUUID();
      const first = event(a, 'created');
      await apply(store, [first]);
      const orders = await loadOrders(store, [{ appId: APP, orderId: b }]);
      // The same event again, as if it had reached another node at the same time, with a new order.
      const again = { ...first, orderId: b };
      const err = await applyEvents(
        store,
        orders,
        [
          { event: again, source: 'http' },
          { event: event(b, 'paying'), source: 'http' },
        ],
        opts,
      ).then(
        () => assert.fail('expected a DuplicateConflict'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof DuplicateConflict);
      assert.deepEqual([...err.keys], [eventKey(APP, first.eventId)]);
      assert.equal(
        await count(store, 'SELECT count(*)::int AS n FROM payment_orders WHERE order_id = $1', [b]),
        0,
      );
    });
  });
}
