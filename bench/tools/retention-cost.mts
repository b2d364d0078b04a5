/**
 * What PAYMENT_RETENTION costs the store (payments/ledger.ts `deleteExpiredOrders`, then on the embedded
 * store the VACUUM of the payment tables), without sockets: fills `payment_orders` with N finished orders
 * (3 events each), half of them past the retention, then deletes them 200 per statement and vacuums.
 * `longestChunkMs` is how long the embedded store's intake waits behind a retention statement at most;
 * the VACUUMs hold it for their whole duration.
 * Usage: npx tsx bench/tools/retention-cost.mts [orders, "20000,200000"] [share past the retention, 0.5]
 * (`DB=postgres://…` for PostgreSQL).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deleteExpiredOrders } from '../../src/payments/ledger.js';
import { openStore } from '../../src/store/index.js';

const sizes = (process.argv[2] ?? '20000,200000').split(',').map(Number);
const expiredShare = Number(process.argv[3] ?? 0.5);
const DAY = 86_400_000;
for (const n of sizes) {
  const dir = mkdtempSync(join(tmpdir(), 'retention-cost-'));
  const schema = `retention_cost_${Date.now().toString(36)}`;
  const store = await openStore({ databaseUrl: process.env.DB, databaseSchema: schema, dataDir: dir });
  try {
    const fillStart = performance.now();
    // Orders i = 1..n, created a second apart, the oldest `expiredShare` of them past a one-day retention.
    await store.query(
      `INSERT INTO payment_orders (app_id, order_id, merchant_id, state, amount, currency, version, created_at, updated_at)
       SELECT 'pos', 'o-' || i, 'm-' || (i % 200), 'succeeded', 4, 'CNY', 3,
         now() - interval '1 day' - (i - $2::int) * interval '1 second',
         now() - interval '1 day' - (i - $2::int) * interval '1 second'
       FROM generate_series(1, $1::int) i`,
      [n, Math.round(n * (1 - expiredShare))],
    );
    await store.query(
      `INSERT INTO payment_events (app_id, event_id, order_id, merchant_id, device_id, type, outcome, from_state,
         to_state, amount, currency, source, occurred_at, received_at)
       SELECT 'pos', 'o-' || i || ':' || t, 'o-' || i, 'm-' || (i % 200), 'pos-' || (i % 2000), t, 'transition',
         NULL, t, 4, 'CNY', 'socket', now(), now()
       FROM generate_series(1, $1::int) i, unnest(ARRAY['created', 'paying', 'succeeded']) t`,
      [n],
    );
    if (store.kind === 'embedded') {
      await store.query('VACUUM payment_orders');
      await store.query('VACUUM payment_events');
    }
    const fillMs = performance.now() - fillStart;
    let t = performance.now();
    let chunks = 0;
    let longest = 0;
    let deleted = 0;
    for (;;) {
      const t1 = performance.now();
      const r = await deleteExpiredOrders(store, 'pos', DAY, 200);
      longest = Math.max(longest, performance.now() - t1);
      chunks++;
      deleted += r.orders.length;
      if (r.orders.length < 200) break;
    }
    const deleteMs = performance.now() - t;
    const vacuum: Record<string, number> = {};
    if (store.kind === 'embedded') {
      for (const table of ['payment_orders', 'payment_events']) {
        t = performance.now();
        await store.query(`VACUUM ${table}`);
        vacuum[table] = Math.round(performance.now() - t);
      }
    }
    console.log(
      JSON.stringify({
        store: store.kind,
        orders: n,
        fillS: Math.round(fillMs / 100) / 10,
        deleted,
        chunks,
        msPerChunk: Math.round((deleteMs / chunks) * 10) / 10,
        longestChunkMs: Math.round(longest),
        vacuumMs: vacuum,
      }),
    );
  } finally {
    if (store.kind === 'postgres') await store.query(`DROP SCHEMA "${schema}" CASCADE`);
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
process.exit(0);
