/**
 * What the machine-presence tick costs the store (payments/presence.ts `tick`: every
 * MACHINE_PRESENCE_INTERVAL a node stamps `last_seen_at` on every machine it holds), without sockets:
 * fills `payment_machines` with N online machines of one node, then times the tick's UPDATE as one
 * statement and as keyset chunks of 500 (the longest chunk is how long the embedded store's intake would
 * wait behind it). Usage: npx tsx bench/tools/presence-cost.mts [machines, "2000,20000"] [runs, 3]
 * (`DB=postgres://…` for PostgreSQL, `CHUNK=2000` for another chunk size).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../src/store/index.js';

const sizes = (process.argv[2] ?? '2000,20000').split(',').map(Number);
const runs = Number(process.argv[3] ?? 3);
const dir = mkdtempSync(join(tmpdir(), 'presence-cost-'));
const schema = `presence_cost_${Date.now().toString(36)}`;
const store = await openStore({ databaseUrl: process.env.DB, databaseSchema: schema, dataDir: dir });
const CHUNK = Number(process.env.CHUNK ?? 500);
try {
  for (const n of sizes) {
    await store.query('DELETE FROM payment_machines');
    await store.query(
      `INSERT INTO payment_machines (app_id, device_id, merchant_id, online, node_id, connected_at, last_seen_at)
       SELECT 'pos', 'dev-' || i, 'm-' || (i % 200), true, 'node-a', now(), now() FROM generate_series(1, $1::int) i`,
      [n],
    );
    for (let r = 0; r < runs; r++) {
      let t = performance.now();
      await store.query('UPDATE payment_machines SET last_seen_at = now() WHERE node_id = $1 AND online', [
        'node-a',
      ]);
      const oneMs = performance.now() - t;
      t = performance.now();
      let after = ['', ''];
      let chunks = 0;
      let longest = 0;
      for (;;) {
        const t1 = performance.now();
        const { rows } = await store.query<{ app_id: string; device_id: string }>(
          `UPDATE payment_machines m SET last_seen_at = now() FROM (
             SELECT app_id, device_id FROM payment_machines
             WHERE node_id = $1 AND online AND (app_id, device_id) > ($2, $3)
             ORDER BY app_id, device_id LIMIT ${CHUNK}) k
           WHERE m.app_id = k.app_id AND m.device_id = k.device_id RETURNING m.app_id, m.device_id`,
          ['node-a', after[0], after[1]],
        );
        longest = Math.max(longest, performance.now() - t1);
        chunks++;
        if (rows.length < CHUNK) break;
        const last = rows.reduce((a, b) =>
          a.app_id > b.app_id || (a.app_id === b.app_id && a.device_id > b.device_id) ? a : b,
        );
        after = [last.app_id, last.device_id];
      }
      console.log(
        JSON.stringify({
          store: store.kind,
          machines: n,
          oneStatementMs: Math.round(oneMs),
          chunkedMs: Math.round(performance.now() - t),
          chunks,
          longestChunkMs: Math.round(longest),
        }),
      );
    }
  }
} finally {
  if (store.kind === 'postgres') await store.query(`DROP SCHEMA "${schema}" CASCADE`);
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
