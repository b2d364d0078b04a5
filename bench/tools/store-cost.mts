/**
 * What one payment batch costs the store, by batch size, without sockets or HTTP: the intake of one
 * node writing batches of new orders, one batch at a time, on the embedded store (default) or on
 * PostgreSQL (`DB=postgres://…`). Also a round trip (`SELECT 1`), a transaction and a one-row insert, to
 * tell the fixed part of a batch from the part that grows with it.
 * Usage: npx tsx bench/tools/pglite-cost.mts [runs per figure, 30]
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../src/store/index.js';
import { paymentEvent } from '../../test/payments/helpers.js';
import { toolIntake } from './intake.js';

const runs = Number(process.argv[2] ?? 30);
const dir = mkdtempSync(join(tmpdir(), 'store-cost-'));
const schema = `store_cost_${Date.now().toString(36)}`;
const store = await openStore({ databaseUrl: process.env.DB, databaseSchema: schema, dataDir: dir });
const intake = toolIntake(store);
const figures: Record<string, number> = {};
const time = async (label: string, f: () => Promise<unknown>) => {
  await f();
  const t = performance.now();
  for (let i = 0; i < runs; i++) await f();
  figures[label] = Math.round(((performance.now() - t) / runs) * 100) / 100;
};
try {
  await time('SELECT 1', () => store.query('SELECT 1'));
  await time('transaction (SELECT 1)', () => store.transaction((tx) => tx.query('SELECT 1')));
  await store.query('CREATE TABLE store_cost_probe (a int)');
  await time('insert one row', () => store.query('INSERT INTO store_cost_probe VALUES (1)'));
  for (const size of [1, 5, 20, 50]) {
    await time(`batch of ${size} new orders`, () =>
      Promise.all(
        Array.from({ length: size }, () =>
          intake.submit(paymentEvent('app', randomUUID(), 'created'), 'http'),
        ),
      ),
    );
  }
  console.log(JSON.stringify({ store: store.kind, runs, ms: figures }));
} finally {
  if (store.kind === 'postgres') await store.query(`DROP SCHEMA "${schema}" CASCADE`);
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
