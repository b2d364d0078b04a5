import pino from 'pino';
import { PaymentIntake } from '../../src/payments/intake.js';
import { OrderCache } from '../../src/payments/order-cache.js';
import type { Store } from '../../src/store/index.js';

/**
 * The payment intake alone, as the bench tools drive it: one lane, no realtime side, silent. Batches
 * are written as a node writes them (up to 500 events each).
 */
export function toolIntake(store: Store, cacheSize = 100_000): PaymentIntake {
  return new PaymentIntake({
    store,
    logger: pino({ level: 'silent' }),
    defaultCurrency: 'CNY',
    batchMax: 500,
    lanes: 1,
    onCommitted: () => undefined,
    cache: new OrderCache(cacheSize),
    realtime: () => ({}),
  });
}
