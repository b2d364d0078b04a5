import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Socket } from 'socket.io-client';
import type { Herald } from '../../src/server.js';
import { call, collect, post, sleep, until } from '../helpers.js';
import {
  cleanupSpots,
  client,
  ev,
  get,
  machine,
  merchantApp,
  newOrderId,
  newSpot,
  report,
  STORES,
  startNode,
  twoNodesOnPostgres,
} from './helpers.js';

const APP = 'pos-app';

type Update = { data: Record<string, unknown>; meta: Record<string, unknown> };
const updates = (socket: Socket) => collect(socket) as unknown as Update[];
const payments = (list: Update[], orderId: string) =>
  list.filter((u) => u.data.type === 'payment' && u.data.orderId === orderId);

after(cleanupSpots);

for (const kind of STORES) {
  describe(`payments on the ${kind} store: reports, state machine, notifications`, () => {
    let herald: Herald;
    const sockets: Socket[] = [];
    const track = <T extends Socket>(s: T) => {
      sockets.push(s);
      return s;
    };

    before(async () => {
      herald = await startNode(newSpot(kind));
    });
    after(async () => {
      for (const s of sockets) s.close();
      await herald.stop();
    });

    it('drives an order created -> paying -> succeeded from a machine, and the merchant app hears 收款 4.00 元', async () => {
      const orderId = newOrderId();
      const app = track(await merchantApp(herald, APP, 'm-life'));
      const appGot = updates(app);
      const watcher = track(await client(herald, APP));
      const watcherGot = updates(watcher);
      await call(watcher, 'subscribe', [`order:${orderId}:status`]);
      const pos = track(await machine(herald, APP, 'pos-life-1', 'm-life'));
      const posGot = updates(pos);

      // The machine sends neither appId, deviceId nor merchantId: the connection supplies them.
      const a1 = await report(pos, ev({ orderId, type: 'created', amount: 4 }));
      assert.equal(a1.ok, true);
      assert.equal(a1.state, 'created');
      assert.equal(a1.orderId, orderId);
      assert.equal(a1.duplicate, undefined);
      assert.equal(a1.stale, undefined);
      assert.equal((await report(pos, ev({ orderId, type: 'paying' }))).state, 'paying');
      const a3 = await report(pos, ev({ orderId, type: 'succeeded', amount: 4 }));
      assert.deepEqual({ ok: a3.ok, state: a3.state }, { ok: true, state: 'succeeded' });

      await until(() => payments(appGot, orderId).length === 3, 3000, 'three updates to the merchant app');
      const seen = payments(appGot, orderId);
      assert.deepEqual(
        seen.map((u) => [u.data.previous, u.data.status, u.data.version]),
        [
          [null, 'created', 1],
          ['created', 'paying', 2],
          ['paying', 'succeeded', 3],
        ],
      );
      const last = seen[2]?.data as Record<string, unknown>;
      assert.equal(last.announcement, '收款 4.00 元');
      assert.equal(last.amount, 4);
      assert.equal(last.currency, 'CNY');
      assert.equal(last.merchantId, 'm-life');
      assert.equal(last.deviceId, 'pos-life-1');
      assert.equal(seen[0]?.data.announcement, '新订单 4.00 元');

      // Topic subscribers and the reporting machine get the same updates, each once.
      await until(() => payments(watcherGot, orderId).length === 3 && payments(posGot, orderId).length === 3);
      assert.equal(payments(watcherGot, orderId)[2]?.meta.topic, `order:${orderId}:status`);
      await sleep(100);
      assert.equal(payments(appGot, orderId).length, 3);
      assert.equal(payments(posGot, orderId).length, 3);

      const res = await get(herald, `/payments/orders/${orderId}?appId=${APP}`);
      assert.equal(res.status, 200);
      assert.equal(res.body.state, 'succeeded');
      assert.equal(res.body.amount, 4);
      assert.equal(res.body.version, 3);
      const events = res.body.events as Record<string, unknown>[];
      assert.deepEqual(
        events.map((e) => [e.type, e.outcome, e.from, e.to, e.source, e.deviceId]),
        [
          ['created', 'transition', null, 'created', 'socket', 'pos-life-1'],
          ['paying', 'transition', 'created', 'paying', 'socket', 'pos-life-1'],
          ['succeeded', 'transition', 'paying', 'succeeded', 'socket', 'pos-life-1'],
        ],
      );
      // Without appId the order id is unique here, so it is found too.
      assert.equal((await get(herald, `/payments/orders/${orderId}`)).body.state, 'succeeded');
    });

    it('takes the same events over HTTP, one or a batch, with one result per event', async () => {
      const orderId = newOrderId();
      const app = track(await merchantApp(herald, APP, 'm-http'));
      const appGot = updates(app);
      const base = { orderId, appId: APP, merchantId: 'm-http' };
      const one = await post(herald, '/payments/events', ev({ ...base, type: 'created', amount: 12.5 }));
      assert.equal(one.status, 200);
      assert.equal(one.body.ok, true);
      assert.equal(one.body.state, 'created');

      const dup = ev({ ...base, type: 'paying' });
      const batch = await post(herald, '/payments/events', {
        events: [
          dup,
          dup,
          ev({ ...base, type: 'refunded' }),
          ev({ ...base, type: 'succeeded' }),
          { ...ev({ ...base, type: 'succeeded' }), amount: -1 },
          ev({ ...base, type: 'created' }),
        ],
      });
      assert.equal(batch.status, 200);
      assert.equal(batch.body.accepted, 4);
      assert.equal(batch.body.rejected, 2);
      const results = batch.body.results as Record<string, unknown>[];
      assert.deepEqual(results[0], { ok: true, eventId: dup.eventId, orderId, state: 'paying' });
      assert.deepEqual(results[1], {
        ok: true,
        eventId: dup.eventId,
        orderId,
        state: 'paying',
        duplicate: true,
      });
      assert.equal((results[2] as { error: { code: string } }).error.code, 'invalid_transition');
      assert.equal(results[3]?.state, 'succeeded');
      const bad = results[4]?.error as { code: string; details: { path: string }[] };
      assert.equal(bad.code, 'invalid_event');
      assert.equal(bad.details[0]?.path, '/events/4/amount');
      assert.deepEqual(
        { state: results[5]?.state, stale: results[5]?.stale },
        { state: 'succeeded', stale: true },
      );

      await until(() => payments(appGot, orderId).length === 3);
      assert.equal(payments(appGot, orderId)[2]?.data.announcement, '收款 12.50 元');

      // A single invalid event gets its error status.
      const refused = await post(herald, '/payments/events', ev({ ...base, type: 'failed' }));
      assert.equal(refused.status, 409);
      assert.equal(refused.body.error?.code, 'invalid_transition');
      const invalid = await post(herald, '/payments/events', { ...base, type: 'paid' });
      assert.equal(invalid.status, 400);
      assert.equal(invalid.body.error?.code, 'invalid_event');
    });

    it('stores and notifies a duplicated event once, also when the copies arrive at the same time', async () => {
      const orderId = newOrderId();
      const app = track(await merchantApp(herald, APP, 'm-dup'));
      const appGot = updates(app);
      const pos = track(await machine(herald, APP, 'pos-dup', 'm-dup'));
      const created = ev({ orderId, type: 'created', amount: 8 });
      assert.equal((await report(pos, created)).duplicate, undefined);
      const again = await report(pos, created);
      assert.deepEqual(again, {
        ok: true,
        eventId: created.eventId,
        orderId,
        state: 'created',
        duplicate: true,
      });

      const paid = ev({
        orderId,
        type: 'succeeded',
        amount: 8,
        appId: APP,
        merchantId: 'm-dup',
        deviceId: 'pos-dup',
      });
      const answers = await Promise.all([
        report(pos, paid),
        report(pos, paid),
        post(herald, '/payments/events', paid).then((r) => r.body),
        post(herald, '/payments/events', paid).then((r) => r.body),
        report(pos, paid),
      ]);
      assert.ok(answers.every((a) => a.ok === true && a.state === 'succeeded'));
      assert.equal(answers.filter((a) => a.duplicate === true).length, 4);

      await until(() => payments(appGot, orderId).length === 2);
      await sleep(150);
      assert.deepEqual(
        payments(appGot, orderId).map((u) => u.data.status),
        ['created', 'succeeded'],
      );
      const res = await get(herald, `/payments/orders/${orderId}?appId=${APP}`);
      assert.equal((res.body.events as unknown[]).length, 2);
    });

    it('applies an outcome that arrives before its created and records the late events as stale', async () => {
      const orderId = newOrderId();
      const app = track(await merchantApp(herald, APP, 'm-ooo'));
      const appGot = updates(app);
      const pos = track(await machine(herald, APP, 'pos-ooo', 'm-ooo'));
      const t0 = Date.now();
      const paid = await report(pos, ev({ orderId, type: 'succeeded', amount: 2, occurredAt: t0 + 20 }));
      assert.equal(paid.state, 'succeeded');
      const paying = await report(pos, ev({ orderId, type: 'paying', occurredAt: t0 + 10 }));
      assert.deepEqual({ state: paying.state, stale: paying.stale }, { state: 'succeeded', stale: true });
      const created = await report(
        pos,
        ev({
          orderId,
          type: 'created',
          amount: 2,
          occurredAt: t0,
          notifyUrl: 'https://merchant.example/notify',
        }),
      );
      assert.deepEqual({ state: created.state, stale: created.stale }, { state: 'succeeded', stale: true });

      await until(() => payments(appGot, orderId).length === 1);
      await sleep(150);
      assert.equal(payments(appGot, orderId).length, 1, 'stale events notify nobody');
      assert.equal(payments(appGot, orderId)[0]?.data.announcement, '收款 2.00 元');
      const res = await get(herald, `/payments/orders/${orderId}?appId=${APP}`);
      assert.equal(res.body.state, 'succeeded');
      assert.equal(
        res.body.notifyUrl,
        'https://merchant.example/notify',
        'the late event filled in the notifyUrl',
      );
      assert.deepEqual(
        (res.body.events as Record<string, unknown>[]).map((e) => [e.type, e.outcome]),
        [
          ['succeeded', 'transition'],
          ['paying', 'stale'],
          ['created', 'stale'],
        ],
      );
    });

    it('refuses invalid transitions with a reason, stores nothing, and accepts the same event once it fits', async () => {
      const orderId = newOrderId();
      const pos = track(await machine(herald, APP, 'pos-inv', 'm-inv'));
      const refund = ev({ orderId, type: 'refunded', amount: 5 });
      const early = await report(pos, refund);
      assert.equal(early.ok, false);
      const err = early.error as { code: string; message: string; details: Record<string, unknown> };
      assert.equal(err.code, 'invalid_transition');
      assert.match(err.message, /succeeded first/);
      assert.deepEqual(err.details, { orderId, state: null, type: 'refunded', retryable: true });
      assert.equal((await get(herald, `/payments/orders/${orderId}?appId=${APP}`)).status, 404);

      await report(pos, ev({ orderId, type: 'created', amount: 5 }));
      const stillEarly = await report(pos, refund);
      assert.equal((stillEarly.error as { details: { state: string } }).details.state, 'created');
      await report(pos, ev({ orderId, type: 'succeeded' }));
      // The refused event was not stored, so sending it again now is a transition, not a duplicate.
      const ok = await report(pos, refund);
      assert.deepEqual(
        { ok: ok.ok, state: ok.state, duplicate: ok.duplicate },
        { ok: true, state: 'refunded', duplicate: undefined },
      );

      const late = await report(pos, ev({ orderId, type: 'failed' }));
      assert.equal((late.error as { code: string }).code, 'invalid_transition');
      assert.equal((late.error as { details: { retryable: boolean } }).details.retryable, false);
      const res = await get(herald, `/payments/orders/${orderId}?appId=${APP}`);
      assert.deepEqual(
        (res.body.events as Record<string, unknown>[]).map((e) => e.to),
        ['created', 'succeeded', 'refunded'],
      );
      assert.equal(res.body.refundedAmount, 5);
    });

    it('rejects malformed or inconsistent events with invalid_event naming the field', async () => {
      const orderId = newOrderId();
      const pos = track(await machine(herald, APP, 'pos-bad', 'm-bad'));
      const code = async (e: unknown) => {
        const a = await report(pos, e);
        assert.equal(a.ok, false);
        return a.error as { code: string; details?: { path: string }[] };
      };
      const missing = await code({ eventId: randomUUID(), type: 'created', occurredAt: Date.now() });
      assert.equal(missing.code, 'invalid_event');
      assert.equal(missing.details?.[0]?.path, '/orderId');
      assert.equal((await code(ev({ orderId, type: 'paid' }))).code, 'invalid_event');
      assert.equal(
        (await code(ev({ orderId, type: 'created', amount: 1.234 }))).details?.[0]?.path,
        '/amount',
      );
      assert.equal(
        (await code(ev({ orderId, type: 'created', occurredAt: 'yesterday' }))).code,
        'invalid_event',
      );
      assert.equal(
        (await code(ev({ orderId, type: 'created', notifyUrl: 'ftp://x' }))).details?.[0]?.path,
        '/notifyUrl',
      );
      assert.equal(
        (await code(ev({ orderId, type: 'created', deviceId: 'someone-else' }))).details?.[0]?.path,
        '/deviceId',
      );
      assert.equal(
        (await code(ev({ orderId, type: 'created', merchantId: 'm-other' }))).details?.[0]?.path,
        '/merchantId',
      );
      assert.equal(
        (await code(ev({ orderId, type: 'created', appId: 'other-app' }))).details?.[0]?.path,
        '/appId',
      );
      assert.equal((await code('not an object')).code, 'invalid_event');

      await report(pos, ev({ orderId, type: 'created', amount: 3 }));
      assert.equal(
        (await code(ev({ orderId, type: 'succeeded', amount: 30 }))).details?.[0]?.path,
        '/amount',
      );
      assert.equal(
        (await code(ev({ orderId, type: 'succeeded', currency: 'USD' }))).details?.[0]?.path,
        '/currency',
      );
      // Another merchant's machine cannot move this order.
      const other = track(await machine(herald, APP, 'pos-bad-2', 'm-bad-2'));
      const stolen = await report(other, ev({ orderId, type: 'succeeded' }));
      assert.equal((stolen.error as { details: { path: string }[] }).details[0]?.path, '/merchantId');
      assert.equal((await get(herald, `/payments/orders/${orderId}?appId=${APP}`)).body.state, 'created');
    });

    it('lists orders by merchant, state and time, page by page, and counts them in stats', async () => {
      const merchantId = `m-q-${randomUUID().slice(0, 8)}`;
      const base = { appId: APP, merchantId };
      const ids: string[] = [];
      const outcome = ['succeeded', 'succeeded', 'succeeded', 'failed', 'closed', 'paying', 'created'];
      const before = new Date(Date.now() - 1000).toISOString();
      for (const type of outcome) {
        const orderId = newOrderId();
        ids.push(orderId);
        const r = await post(herald, '/payments/events', {
          events: [ev({ ...base, orderId, type: 'created', amount: 1 }), ev({ ...base, orderId, type })],
        });
        assert.equal(r.body.accepted, 2);
      }
      const all = await get(herald, `/payments/orders?appId=${APP}&merchantId=${merchantId}`);
      assert.equal(all.status, 200);
      assert.equal(all.body.total, 7);
      const succeeded = await get(herald, `/payments/orders?merchantId=${merchantId}&state=succeeded`);
      assert.equal(succeeded.body.total, 3);
      assert.ok((succeeded.body.orders as { state: string }[]).every((o) => o.state === 'succeeded'));
      const p1 = await get(herald, `/payments/orders?merchantId=${merchantId}&limit=3&page=1`);
      const p3 = await get(herald, `/payments/orders?merchantId=${merchantId}&limit=3&page=3`);
      assert.equal((p1.body.orders as unknown[]).length, 3);
      assert.equal((p3.body.orders as unknown[]).length, 1);
      assert.equal((p1.body.orders as { orderId: string }[])[0]?.orderId, ids[6], 'newest first');
      const inWindow = await get(
        herald,
        `/payments/orders?merchantId=${merchantId}&from=${before}&to=${Date.now() + 1000}`,
      );
      assert.equal(inWindow.body.total, 7);
      const future = await get(
        herald,
        `/payments/orders?merchantId=${merchantId}&from=${Date.now() + 60_000}`,
      );
      assert.equal(future.body.total, 0);
      const badQuery = await get(herald, `/payments/orders?state=paid`);
      assert.equal(badQuery.status, 400);

      const stats = await get(herald, `/payments/stats?appId=${APP}&merchantId=${merchantId}&minutes=5`);
      assert.equal(stats.status, 200);
      assert.deepEqual(stats.body.counts, {
        created: 1,
        paying: 1,
        succeeded: 3,
        failed: 1,
        closed: 1,
        refunded: 0,
      });
      assert.equal(stats.body.total, 7);
      assert.equal(stats.body.finished, 5);
      assert.equal(stats.body.successRate, 3 / 5);
      const tp = stats.body.throughput as {
        minutes: number;
        perMinute: { events: number; transitions: number }[];
      };
      assert.equal(tp.minutes, 5);
      assert.equal(tp.perMinute.length, 5);
      assert.equal(
        tp.perMinute.reduce((n, m) => n + m.events, 0),
        14,
      );
    });

    it('pages orders with a cursor: none skipped or repeated while new orders arrive', async () => {
      const merchantId = `m-c-${randomUUID().slice(0, 8)}`;
      const make = async () => {
        const orderId = newOrderId();
        const r = await post(
          herald,
          '/payments/events',
          ev({ appId: APP, merchantId, orderId, type: 'created' }),
        );
        assert.equal(r.status, 200);
        return orderId;
      };
      const first: string[] = [];
      for (let i = 0; i < 5; i++) first.push(await make());
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const r = await get(
          herald,
          `/payments/orders?merchantId=${merchantId}&limit=2${cursor ? `&cursor=${cursor}` : ''}`,
        );
        assert.equal(r.status, 200, JSON.stringify(r.body));
        seen.push(...(r.body.orders as { orderId: string }[]).map((o) => o.orderId));
        cursor = r.body.nextCursor as string | null;
        // Orders created between pages are newer than the cursor: they do not shift the next pages
        // (with ?page=, each would push an order already shown onto the next page).
        if (pages++ === 0) for (let i = 0; i < 2; i++) await make();
      } while (cursor !== null && pages < 10);
      assert.deepEqual(seen, [...first].reverse(), 'newest first, each once');
      const bad = await get(herald, `/payments/orders?merchantId=${merchantId}&cursor=not-a-cursor`);
      assert.equal(bad.status, 400);
      assert.equal((bad.body.error as { code: string }).code, 'validation_failed');
      const forged = Buffer.from(JSON.stringify(['2026-99-99 00:00:00+00', APP, 'o'])).toString('base64url');
      assert.equal((await get(herald, `/payments/orders?cursor=${forged}`)).status, 400);
      const both = await get(herald, `/payments/orders?merchantId=${merchantId}&page=2&cursor=${forged}`);
      assert.equal(both.status, 400);
    });
  });
}

describe('payments on PostgreSQL shared by two nodes', () => {
  const nodes = twoNodesOnPostgres();

  it('stores an event delivered to both nodes at once exactly once', async () => {
    const { a, b } = nodes;
    for (let round = 0; round < 10; round++) {
      const orderId = newOrderId();
      const base = { appId: APP, merchantId: 'm-two', orderId };
      const created = ev({ ...base, type: 'created', amount: 1 });
      const [ra, rb] = await Promise.all([
        post(a, '/payments/events', created),
        post(b, '/payments/events', created),
      ]);
      assert.equal(ra.body.ok, true);
      assert.equal(rb.body.ok, true);
      assert.equal([ra.body.duplicate, rb.body.duplicate].filter((d) => d === true).length, 1);
      const res = await get(a, `/payments/orders/${orderId}?appId=${APP}`);
      assert.equal((res.body.events as unknown[]).length, 1);
    }
  });

  it('serializes different events of one order arriving at both nodes', async () => {
    const { a, b } = nodes;
    for (let round = 0; round < 10; round++) {
      const orderId = newOrderId();
      const base = { appId: APP, merchantId: 'm-two', orderId };
      const events = ['created', 'paying', 'succeeded', 'refunded'].map((type) =>
        ev({ ...base, type, amount: 1 }),
      );
      // Everything at once, alternating nodes: whatever the order, the history must be a valid path.
      const answers = await Promise.all(
        events.map((e, i) => post(i % 2 === 0 ? a : b, '/payments/events', e).then((r) => r.body)),
      );
      const res = await get(b, `/payments/orders/${orderId}?appId=${APP}`);
      const history = res.body.events as { outcome: string; from: string | null; to: string | null }[];
      const path = history.filter((h) => h.outcome === 'transition');
      for (let i = 1; i < path.length; i++) assert.equal(path[i]?.from, path[i - 1]?.to, 'transitions chain');
      assert.equal(res.body.version, path.length);
      assert.equal(
        answers.filter((x) => x.ok === true).length,
        history.length,
        'every accepted event is in the history, once',
      );
    }
  });
});
