import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { isHeraldError } from '../../src/errors.js';
import { createLogger } from '../../src/logger.js';
import { PaymentIntake } from '../../src/payments/intake.js';
import { SqlError, type Store } from '../../src/store/index.js';
import { cleanupSpots, paymentEvent } from './helpers.js';

after(cleanupSpots);

/**
 * The payment pipeline under failures: a store outage.
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
});
