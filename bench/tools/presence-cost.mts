/**
 * What the machine-presence tick costs the store (payments/presence.ts `tick`, every
 * MACHINE_PRESENCE_INTERVAL), without sockets: fills `payment_machines` with N online machines of one
 * node, held by the node, then times the node's tick (its heartbeat row, the reclaim of its machines the
 * store shows offline, the look for silent nodes' machines and for nodes of an earlier version) and, for comparison, the stamp of every machine row that nodes did before the
 * heartbeat (and still do while an older node holds machines). `longestStatementMs` is how long the
 * embedded store's intake would wait behind the tick at most.
 * Usage: npx tsx bench/tools/presence-cost.mts [machines, "2000,20000"] [runs, 3]
 * (`DB=postgres://…` for PostgreSQL).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../src/logger.js';
import { MachinePresence } from '../../src/payments/presence.js';
import { openStore, type Store } from '../../src/store/index.js';

const sizes = (process.argv[2] ?? '2000,20000').split(',').map(Number);
const runs = Number(process.argv[3] ?? 3);
const dir = mkdtempSync(join(tmpdir(), 'presence-cost-'));
const schema = `presence_cost_${Date.now().toString(36)}`;
const store = await openStore({ databaseUrl: process.env.DB, databaseSchema: schema, dataDir: dir });

/** The store, with each statement's duration recorded. */
const timings: number[] = [];
const timed: Store = Object.create(store, {
  query: {
    value: async (...args: Parameters<Store['query']>) => {
      const t = performance.now();
      try {
        return await store.query(...args);
      } finally {
        timings.push(performance.now() - t);
      }
    },
  },
});
const presence = new MachinePresence({
  store: timed,
  logger: createLogger('silent'),
  intervalMs: 30_000,
  publish: () => {},
});
const ms = (x: number) => Math.round(x * 10) / 10;
try {
  for (const n of sizes) {
    await store.query('DELETE FROM payment_machines');
    await store.query(
      `INSERT INTO payment_machines (app_id, device_id, merchant_id, online, node_id, connected_at, last_seen_at)
       SELECT 'pos', 'dev-' || i, 'm-' || (i % 200), true, $2, now(), now() FROM generate_series(1, $1::int) i`,
      [n, presence.nodeId],
    );
    // The node holds them (the tick's reclaim looks for any of its machines the store shows offline).
    for (let i = 1; i <= n; i++) presence.connected('pos', `dev-${i}`, `m-${i % 200}`, `s-${i}`);
    await presence.flush();
    for (let r = 0; r < runs; r++) {
      timings.length = 0;
      let t = performance.now();
      await presence.tick();
      const tickMs = performance.now() - t;
      const statements = timings.length;
      const longest = Math.max(...timings);
      t = performance.now();
      await store.query('UPDATE payment_machines SET last_seen_at = now() WHERE node_id = $1 AND online', [
        presence.nodeId,
      ]);
      console.log(
        JSON.stringify({
          store: store.kind,
          machines: n,
          tickMs: ms(tickMs),
          statements,
          longestStatementMs: ms(longest),
          stampEveryRowMs: ms(performance.now() - t),
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
