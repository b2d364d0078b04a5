/**
 * What a payment batch costs the embedded store (or PostgreSQL, `DB=postgres://…`) once N finished orders
 * exist: batches of `size` new orders (`created`), and the same orders' `succeeded` batch after them
 * (`pair`: both batches), with an order cache too small to help, so the orders are read from the store.
 * Usage: npx tsx bench/tools/plan-cost.mts <orders, 10000> [runs per figure, 40]
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../src/store/index.js';
import { paymentEvent } from '../../test/payments/helpers.js';
import { toolIntake } from './intake.js';

const n = Number(process.argv[2] ?? 10000);
const runs = Number(process.argv[3] ?? 40);
const dir = mkdtempSync(join(tmpdir(), 'plan-cost-'));
const schema = `plan_cost_${Date.now().toString(36)}`;
const store = await openStore({ databaseUrl: process.env.DB, databaseSchema: schema, dataDir: dir });
const mk = (cacheSize: number) => toolIntake(store, cacheSize);
try {
  let intake = mk(100);
  const t0 = performance.now();
  for (let i = 0; i < n; i += 500) {
    const ids = Array.from({ length: Math.min(500, n - i) }, () => randomUUID());
    await Promise.all(ids.map((id) => intake.submit(paymentEvent('app', id, 'created'), 'http')));
    await Promise.all(ids.map((id) => intake.submit(paymentEvent('app', id, 'succeeded'), 'http')));
  }
  const fillMs = performance.now() - t0;
  const figures: Record<string, number> = {};
  for (const cacheSize of [1, 100_000]) {
    intake = mk(cacheSize);
    for (const size of [1, 20]) {
      for (const kind of ['created', 'pair'] as const) {
        const one = async () => {
          const ids = Array.from({ length: size }, () => randomUUID());
          await Promise.all(ids.map((id) => intake.submit(paymentEvent('app', id, 'created'), 'http')));
          if (kind === 'pair')
            await Promise.all(ids.map((id) => intake.submit(paymentEvent('app', id, 'succeeded'), 'http')));
        };
        await one();
        const t = performance.now();
        for (let i = 0; i < runs; i++) await one();
        figures[`${kind} x${size}${cacheSize > 1 ? ' cached' : ''}`] =
          Math.round(((performance.now() - t) / runs) * 100) / 100;
      }
    }
  }
  console.log(
    JSON.stringify({ store: store.kind, orders: n, fillS: Math.round(fillMs / 100) / 10, ms: figures }),
  );
} finally {
  if (store.kind === 'postgres') await store.query(`DROP SCHEMA "${schema}" CASCADE`);
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
