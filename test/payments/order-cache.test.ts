import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../../src/logger.js';
import { PaymentIntake } from '../../src/payments/intake.js';
import {
  encodeMinutes,
  encodeStates,
  type MinuteDelta,
  type StateDelta,
  sumDeltas,
} from '../../src/payments/ledger.js';
import { OrderCache } from '../../src/payments/order-cache.js';
import type { Order, PaymentEvent, ReportResult } from '../../src/payments/types.js';
import type { Herald } from '../../src/server.js';
import type { Store } from '../../src/store/index.js';
import {
  cleanupSpots,
  ev,
  newOrderId,
  openSpotStore,
  paymentEvent,
  STORES,
  twoNodesOnPostgres,
} from './helpers.js';

const APP = 'cache-app';

const event = (orderId: string, type: PaymentEvent['type'], eventId?: string): PaymentEvent =>
  paymentEvent(APP, orderId, type, eventId);

function order(orderId: string, state: Order['state']): Order {
  return {
    appId: APP,
    orderId,
    merchantId: 'm-1',
    state,
    reason: null,
    amount: 4,
    currency: 'CNY',
    refundedAmount: null,
    notifyUrl: null,
    deviceId: null,
    version: 1,
    createdAt: new Date(),
    updatedAt: new Date(),
  };
}

describe('order cache', () => {
  it('keeps open orders only, the newest last, up to its bound', () => {
    const cache = new OrderCache(2);
    cache.set('a', order('a', 'created'));
    cache.set('b', order('b', 'paying'));
    cache.set('c', order('c', 'succeeded'));
    assert.equal(cache.size, 2);
    assert.equal(cache.get('c'), undefined);
    cache.set('a', { ...order('a', 'paying'), version: 2 }); // a is now the newest
    cache.set('d', order('d', 'created')); // evicts b, the oldest
    assert.equal(cache.get('b'), undefined);
    assert.equal(cache.get('a')?.version, 2);
    assert.ok(cache.get('d'));
    // An order that reached a terminal state is forgotten.
    cache.set('a', { ...order('a', 'failed'), version: 3 });
    assert.equal(cache.get('a'), undefined);
  });

  it('hands out copies: a batch that fails does not change what is cached', () => {
    const cache = new OrderCache(10);
    cache.set('a', order('a', 'created'));
    const copy = cache.get('a') as Order;
    copy.state = 'paying';
    copy.version = 2;
    assert.equal(cache.get('a')?.state, 'created');
    assert.equal(cache.get('a')?.version, 1);
  });

  it('keeps nothing when its bound is 0', () => {
    const cache = new OrderCache(0);
    cache.set('a', order('a', 'created'));
    assert.equal(cache.size, 0);
  });
});

describe('counter deltas summed on the node', () => {
  it('reads rows of both formats alike (format 2 grouped by app and hour, format 1 a list of objects)', () => {
    const ms = Date.UTC(2026, 11, 6, 4, 59, 30);
    const states: StateDelta[] = [
      { a: 'x', m: 'm1', h: '2026-12-06T04:00:00.000', s: 'created', d: -1 },
      { a: 'x', m: 'm1', h: '2026-12-06T04:00:00.000', s: 'paying', d: 1 },
      { a: 'x', m: 'm2', h: '2026-12-06T03:00:00.000', s: 'succeeded', d: 2 },
      { a: 'y', m: 'm1', h: null, s: 'created', d: 1 },
      { a: 'x', m: 'm3 "quoted" 商户', h: '2026-12-06T04:00:00.000', s: 'failed', d: 1 },
    ];
    const minutes: MinuteDelta[] = [
      { a: 'x', m: 'm1', e: 2, t: 1 },
      { a: 'y', m: 'm1', e: 1, t: 1 },
      { a: 'x', m: 'm3 "quoted" 商户', e: 1, t: 1 },
    ];
    // The same sums, whatever their order.
    const sorted = (r: ReturnType<typeof sumDeltas>) => ({
      states: r.states.map((x) => JSON.stringify(x)).sort(),
      minutes: r.minutes.map((x) => JSON.stringify(x)).sort(),
    });
    const v1 = sumDeltas([{ states: JSON.stringify(states), minutes: JSON.stringify(minutes), ms }]);
    const v2 = sumDeltas([{ states: encodeStates(states), minutes: encodeMinutes(minutes), ms }]);
    assert.deepEqual(sorted(v2), sorted(v1));
    assert.equal(v1.states.length, 10); // 5 deltas, each for its merchant and for the app's total
    const text = encodeStates(states);
    assert.ok(text.length < JSON.stringify(states).length * 0.75, `${text.length} bytes`);
    // Both formats in one fold.
    const mixed = sumDeltas([
      { states: JSON.stringify(states), minutes: JSON.stringify(minutes), ms },
      { states: encodeStates(states), minutes: encodeMinutes(minutes), ms },
    ]);
    assert.deepEqual(
      sorted(mixed).states,
      sorted({ states: v1.states.map((x) => ({ ...x, n: 2 * x.n })), minutes: [] }).states,
    );
  });

  it('sums per merchant and app total, takes the row time for hourless states, drops what cancels out', () => {
    const ms = Date.UTC(2026, 11, 6, 4, 59, 59, 999);
    const rows = [
      {
        states: JSON.stringify([
          { a: 'x', m: 'm1', h: null, s: 'created', d: 2 },
          { a: 'x', m: 'm2', h: '2026-12-06T03:00:00.000', s: 'paying', d: -1 },
        ]),
        minutes: JSON.stringify([{ a: 'x', m: 'm1', e: 3, t: 2 }]),
        ms,
      },
      {
        states: JSON.stringify([
          { a: 'x', m: 'm1', h: '2026-12-06T04:00:00.000', s: 'created', d: -2 },
          { a: 'x', m: 'm2', h: '2026-12-06T03:00:00.000', s: 'succeeded', d: 1 },
        ]),
        minutes: JSON.stringify([
          { a: 'x', m: 'm1', e: 1, t: 1 },
          { a: 'x', m: 'm2', e: 2, t: 0 },
        ]),
        ms: String(ms + 1), // the next minute and hour (PGlite and node-postgres may give a string)
      },
    ];
    const { states, minutes } = sumDeltas(rows);
    const key = (s: { a: string; m: string; h: string; s?: string }) => `${s.a}/${s.m}/${s.h}/${s.s ?? ''}`;
    assert.deepEqual(Object.fromEntries(states.map((s) => [key(s), s.n])), {
      // created +2 in hour 04 (the row's), -2 in hour 04 (given): cancelled out, left out.
      'x/m2/2026-12-06T03:00:00.000/paying': -1,
      'x//2026-12-06T03:00:00.000/paying': -1,
      'x/m2/2026-12-06T03:00:00.000/succeeded': 1,
      'x//2026-12-06T03:00:00.000/succeeded': 1,
    });
    assert.deepEqual(Object.fromEntries(minutes.map((m) => [key(m), [m.e, m.t]])), {
      'x/m1/2026-12-06T04:59:00.000/': [3, 2],
      'x//2026-12-06T04:59:00.000/': [3, 2],
      'x/m1/2026-12-06T05:00:00.000/': [1, 1],
      'x/m2/2026-12-06T05:00:00.000/': [2, 0],
      'x//2026-12-06T05:00:00.000/': [3, 1],
    });
  });
});

for (const kind of STORES) {
  describe(`payment intake with the order cache (${kind} store)`, () => {
    let store: Store;
    let intake: PaymentIntake;
    const cache = new OrderCache(1000);
    const sources: Record<string, number> = {};
    before(async () => {
      store = await openSpotStore(kind);
      intake = new PaymentIntake({
        store,
        logger: createLogger('silent'),
        defaultCurrency: 'CNY',
        batchMax: 100,
        lanes: 1,
        onCommitted: () => {},
        cache,
        onCache: (result, n) => {
          sources[result] = (sources[result] ?? 0) + n;
        },
      });
    });
    after(async () => {
      await intake.close();
      await store.close();
      await cleanupSpots();
    });
    const report = (e: PaymentEvent): Promise<ReportResult> => intake.submit(e, 'http');
    const delta = async (fn: () => Promise<unknown>) => {
      const before = { ...sources };
      await fn();
      return Object.fromEntries(
        Object.entries(sources)
          .map(([k, v]) => [k, v - (before[k] ?? 0)])
          .filter(([, v]) => v !== 0),
      );
    };
    /** What another node does: changes an order behind this node's back. */
    const changeElsewhere = (orderId: string, state: string) =>
      store.query(
        'UPDATE payment_orders SET state = $3, version = version + 1 WHERE app_id = $1 AND order_id = $2',
        [APP, orderId, state],
      );

    it('stores the next events of an order without reading it', async () => {
      const orderId = randomUUID();
      assert.deepEqual(await delta(() => report(event(orderId, 'created'))), { new: 1 });
      assert.deepEqual(await delta(() => report(event(orderId, 'paying'))), { hit: 1 });
      const r = await report(event(orderId, 'succeeded'));
      assert.equal(r.state, 'succeeded');
      // Terminal: forgotten, so a refund reads the order from the store.
      assert.equal(cache.get(`${APP}\u0000${orderId}`), undefined);
      assert.deepEqual(await delta(() => report(event(orderId, 'refunded'))), { read: 1 });
      const { rows } = await store.query<{ state: string; version: number }>(
        'SELECT state, version FROM payment_orders WHERE app_id = $1 AND order_id = $2',
        [APP, orderId],
      );
      assert.deepEqual({ ...rows[0], version: Number(rows[0]?.version) }, { state: 'refunded', version: 4 });
    });

    it('runs a batch again from the store when another node changed a cached order', async () => {
      const orderId = randomUUID();
      await report(event(orderId, 'created'));
      await report(event(orderId, 'paying'));
      await changeElsewhere(orderId, 'succeeded');
      // Decided on the cache (`paying`), a refund would be refused; the store says `succeeded`.
      let result: ReportResult | undefined;
      assert.deepEqual(
        await delta(async () => {
          result = await report(event(orderId, 'refunded'));
        }),
        { hit: 1, stale: 1, read: 1 },
      );
      assert.equal(result?.state, 'refunded');
      assert.equal(result?.stale, undefined);
    });

    it('checks cached orders that a batch does not change', async () => {
      const orderId = randomUUID();
      await report(event(orderId, 'created'));
      await changeElsewhere(orderId, 'paying');
      // From the cache this `created` is stale and writes nothing to the order; the check still
      // catches the change, and the answer gives the state the store has.
      const r = await report(event(orderId, 'created'));
      assert.equal(r.stale, true);
      assert.equal(r.state, 'paying');
    });

    it('does not create an order twice when it was created elsewhere', async () => {
      const orderId = randomUUID();
      await store.query(
        `INSERT INTO payment_orders (app_id, order_id, merchant_id, state, version)
         VALUES ($1, $2, 'm-1', 'paying', 2)`,
        [APP, orderId],
      );
      // Not cached: a `created` is assumed new; the write finds the order and the batch runs again.
      let result: ReportResult | undefined;
      assert.deepEqual(
        await delta(async () => {
          result = await report(event(orderId, 'created'));
        }),
        { new: 1, stale: 1, read: 1 },
      );
      assert.equal(result?.stale, true);
      assert.equal(result?.state, 'paying');
      const { rows } = await store.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM payment_orders WHERE app_id = $1 AND order_id = $2',
        [APP, orderId],
      );
      assert.equal(Number(rows[0]?.n), 1);
    });

    it('answers a refund of a cached open order as invalid only when the store agrees', async () => {
      const orderId = randomUUID();
      await report(event(orderId, 'created'));
      await assert.rejects(report(event(orderId, 'refunded')), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'invalid_transition');
        return true;
      });
    });
  });
}

describe('payment order caches of two nodes sharing PostgreSQL', () => {
  const nodes = twoNodesOnPostgres();
  after(() => cleanupSpots());
  const pay = (node: Herald, orderId: string, type: string) =>
    node.payments.report(ev({ orderId, appId: APP, merchantId: 'm-1', type, amount: 4 }), 'http');

  it('decides on the store when the other node moved an order this node has cached', async () => {
    const { a, b } = nodes;
    const orderId = newOrderId();
    await pay(a, orderId, 'created');
    await pay(a, orderId, 'paying'); // A caches the order as paying
    assert.equal((await pay(b, orderId, 'succeeded')).state, 'succeeded');
    // From A's cache (paying) a refund would be refused; the store says succeeded: it is accepted.
    const refund = await pay(a, orderId, 'refunded');
    assert.equal(refund.state, 'refunded');
    assert.equal(refund.stale, undefined);
    const { rows } = await a.store.query<{ state: string; version: number }>(
      'SELECT state, version FROM payment_orders WHERE app_id = $1 AND order_id = $2',
      [APP, orderId],
    );
    assert.deepEqual({ ...rows[0], version: Number(rows[0]?.version) }, { state: 'refunded', version: 4 });
    const stale = await (await fetch(`${a.url()}/metrics`)).text();
    assert.match(stale, /herald_payment_order_cache_total\{result="stale"\} [1-9]/);
  });

  it('answers a failure reported to one node after the other node finished the order as the store says', async () => {
    const { a, b } = nodes;
    const orderId = newOrderId();
    await pay(a, orderId, 'created');
    await pay(a, orderId, 'paying');
    await pay(b, orderId, 'succeeded');
    // From A's cache (paying) a failure is a transition; after a success it is refused.
    await assert.rejects(pay(a, orderId, 'failed'), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'invalid_transition');
      assert.match(err.message, /succeeded/);
      return true;
    });
  });

  it('creates an order once when both nodes take its created event as new', async () => {
    const { a, b } = nodes;
    const orderId = newOrderId();
    const [x, y] = await Promise.all([pay(a, orderId, 'created'), pay(b, orderId, 'created')]);
    // Two different events for one new order: one creates it, the other is stale.
    assert.deepEqual([x.stale ?? false, y.stale ?? false].sort(), [false, true]);
    const { rows } = await a.store.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM payment_events WHERE app_id = $1 AND order_id = $2',
      [APP, orderId],
    );
    assert.equal(Number(rows[0]?.n), 2);
  });
});
