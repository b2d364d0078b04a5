import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { HeraldError, isHeraldError } from '../../src/errors.js';
import { createLogger } from '../../src/logger.js';
import { PaymentIntake } from '../../src/payments/intake.js';
import type { Herald } from '../../src/server.js';
import { SqlError, type Store } from '../../src/store/index.js';
import {
  cleanupSpots,
  ev,
  fakeWebhooks,
  newOrderId,
  newSpot,
  paymentEvent,
  STORES,
  startNode,
} from './helpers.js';

after(cleanupSpots);

/**
 * The payment pipeline under failures: a store outage, retention while merchant notifications are
 * still pending.
 */
describe('payment intake during a store outage', () => {
  it('answers a batch that meets a store outage at once, without trying its events one by one', async () => {
    // A PostgreSQL store that cannot be reached: every statement fails as postgres.ts reports it
    // (SQLSTATE 08006, connection failure) after a delay (a connect timeout is 5 s there).
    let statements = 0;
    const down: Store = {
      kind: 'postgres',
      async query() {
        statements++;
        await new Promise((r) => setTimeout(r, 20));
        throw new SqlError('timeout exceeded when trying to connect', '08006');
      },
      transaction: () => Promise.reject(new SqlError('timeout exceeded when trying to connect', '08006')),
      ping: () => Promise.reject(new Error('down')),
      close: async () => {},
    };
    const intake = new PaymentIntake({
      store: down,
      logger: createLogger('silent'),
      defaultCurrency: 'CNY',
      batchMax: 100,
      lanes: 1,
      onCommitted: () => {},
    });
    const events = Array.from({ length: 20 }, () => paymentEvent('outage-app', randomUUID(), 'created'));
    const results = await Promise.allSettled(events.map((e) => intake.submit(e, 'http')));
    await intake.close();
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      const err = r.reason as unknown;
      assert.ok(isHeraldError(err) && err.code === 'store_unavailable', String(err));
    }
    // One batch, one failed round trip. Trying its 20 events one by one cost 20 more, each waiting for
    // the store to time out again, while every reporter (and every event queued behind them) waited.
    assert.equal(statements, 1, `${statements} statements`);
  });

  it('refuses events past PAYMENT_QUEUE_MAX with overloaded while the store is stalled, and takes them again after', async () => {
    // A store that does not answer until the test lets it: the first event's batch is in flight, the
    // next ones wait in the lane.
    let release: () => void = () => {};
    const stalled = new Promise<void>((r) => {
      release = r;
    });
    const store: Store = {
      kind: 'postgres',
      async query() {
        await stalled;
        throw new SqlError('timeout exceeded when trying to connect', '08006');
      },
      transaction: async () => {
        await stalled;
        throw new SqlError('timeout exceeded when trying to connect', '08006');
      },
      ping: () => Promise.resolve(),
      close: async () => {},
    };
    const outcomes: string[] = [];
    const intake = new PaymentIntake({
      store,
      logger: createLogger('silent'),
      defaultCurrency: 'CNY',
      batchMax: 1,
      queueMax: 3,
      lanes: 1,
      onCommitted: () => {},
      onOutcome: (o) => outcomes.push(o),
    });
    const submit = () => intake.submit(paymentEvent('queue-app', randomUUID(), 'created'), 'socket');
    const first = submit();
    await new Promise((r) => setImmediate(r)); // the first batch leaves the lane
    const waiting = [submit(), submit(), submit()];
    assert.equal(intake.waiting(), 3);
    await assert.rejects(submit(), (err: unknown) => {
      assert.ok(isHeraldError(err) && err.code === 'overloaded', String(err));
      assert.equal((err as HeraldError).status, 503);
      assert.match((err as HeraldError).message, /PAYMENT_QUEUE_MAX 3/);
      return true;
    });
    assert.deepEqual(outcomes, ['overloaded']);
    release();
    await Promise.allSettled([first, ...waiting]);
    assert.equal(intake.waiting(), 0);
    // Room again: the next event is taken (and answered by the store, unavailable here).
    await assert.rejects(submit(), (err: unknown) => isHeraldError(err) && err.code === 'store_unavailable');
    await intake.close();
  });
});

for (const kind of STORES) {
  describe(`payment retention while merchant notifications are pending (${kind})`, () => {
    it('keeps a finished order whose merchant notification was not handed over yet, and delivers it later', async () => {
      const herald: Herald = await startNode(newSpot(kind), {
        paymentRetention: 60_000,
        paymentSweepInterval: 600_000,
      });
      try {
        const fake = fakeWebhooks(herald);
        const appId = 'pos-retention-wh';
        const orderId = newOrderId();
        const notifyUrl = 'https://merchant.example/pay/notify';
        // The webhook engine cannot take notifications for a while (its store is down, say).
        fake.fail = new HeraldError('store_unavailable');
        for (const type of ['created', 'succeeded']) {
          const res = await fetch(`${herald.url()}/payments/events`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify(ev({ appId, orderId, merchantId: 'm-1', type, amount: 4, notifyUrl })),
          });
          assert.equal(res.status, 200, await res.text());
        }
        await new Promise((r) => setTimeout(r, 100));
        // Two hours later: finished and unchanged for longer than PAYMENT_RETENTION (1 minute), and old
        // enough for the sweep to offer its notifications again (5 sweep intervals).
        await herald.store.query(
          `UPDATE payment_orders SET created_at = now() - interval '2 hours', updated_at = now() - interval '2 hours'
           WHERE app_id = $1 AND order_id = $2`,
          [appId, orderId],
        );
        await herald.store.query(
          `UPDATE payment_events SET received_at = now() - interval '2 hours' WHERE app_id = $1 AND order_id = $2`,
          [appId, orderId],
        );
        await herald.payments.deleteExpired();
        const left = await herald.store.query<{ webhook: string }>(
          'SELECT webhook FROM payment_events WHERE app_id = $1 AND order_id = $2',
          [appId, orderId],
        );
        assert.deepEqual(
          left.rows.map((r) => r.webhook),
          ['pending', 'pending'],
          'kept while its notifications are pending',
        );
        // The engine is back: the sweep hands the pending notifications over (it retries them for a day).
        fake.fail = undefined;
        await herald.payments.sweep();
        const keys = fake.calls.filter((c) => c.orderNo === orderId).map((c) => c.idempotencyKey);
        assert.deepEqual(
          keys.sort(),
          [`${appId}:${orderId}:created`, `${appId}:${orderId}:succeeded`],
          'the merchant server hears of the order',
        );
        // Once handed over, the order goes at the next retention pass (this sweep ran one too).
        await herald.payments.deleteExpired();
        const gone = await herald.store.query(
          'SELECT 1 FROM payment_orders WHERE app_id = $1 AND order_id = $2',
          [appId, orderId],
        );
        assert.equal(gone.rows.length, 0);
      } finally {
        await herald.stop();
      }
    });
  });
}
