/**
 * What folding the payment counter deltas costs (the sweep's foldCounts), without sockets or HTTP:
 * inserts the delta rows a node writes in one sweep interval at 3,000 events/s (default 1,900 rows of 11
 * events over 200 merchants, in the compact format of the batch write), then folds them with a given
 * number of 200-row chunks per transaction, and again, alternating. Reports wall time and, on PostgreSQL
 * (`DB=postgres://…`), the CPU of the PostgreSQL processes; on the embedded store this process's CPU.
 * `longestHoldMs` is the longest single store call (statement or transaction) of a fold: on the embedded
 * store, how long the payment intake, which takes turns with the fold, may have to wait behind it.
 * `FOLD_DEBUG=1` prints what each fold returned.
 * Usage: npx tsx bench/tools/fold-cost.mts [rows, 1900] [runs, 5] [chunks per transaction to compare, "1,25"]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  encodeMinutes,
  encodeStates,
  foldCounts,
  type MinuteDelta,
  type StateDelta,
} from '../../src/payments/ledger.js';
import { openStore } from '../../src/store/index.js';
import { postgresCpu, postgresCpuSince } from '../lib/proc.js';

const rowsN = Number(process.argv[2] ?? 1900);
const runs = Number(process.argv[3] ?? 5);
const variants = (process.argv[4] ?? '1,25').split(',').map(Number);
const dir = mkdtempSync(join(tmpdir(), 'fold-cost-'));
const schema = `fold_cost_${Date.now().toString(36)}`;
const base = await openStore({ databaseUrl: process.env.DB, databaseSchema: schema, dataDir: dir });
/** The longest store call (query or transaction) since it was last reset. */
let longest = 0;
const store = new Proxy(base, {
  get(target, prop) {
    const v = Reflect.get(target, prop, target) as unknown;
    if (typeof v !== 'function') return v;
    if (prop !== 'query' && prop !== 'transaction') return v.bind(target);
    return (...a: unknown[]) => {
      const t = performance.now();
      return (v.apply(target, a) as Promise<unknown>).finally(() => {
        longest = Math.max(longest, performance.now() - t);
      });
    };
  },
});

/** One batch's deltas: 11 events of random merchants moving orders along created -> paying -> succeeded. */
function row(i: number): [string, string] {
  const states: StateDelta[] = [];
  const minutes: MinuteDelta[] = [];
  for (let e = 0; e < 11; e++) {
    const m = `merchant-${(i * 11 + e * 37) % 200}`;
    const step = (i + e) % 3;
    const h = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000).toISOString().slice(0, 23);
    if (step === 0) states.push({ a: 'pos', m, h: null, s: 'created', d: 1 });
    else if (step === 1) {
      states.push({ a: 'pos', m, h, s: 'created', d: -1 });
      states.push({ a: 'pos', m, h, s: 'paying', d: 1 });
    } else {
      states.push({ a: 'pos', m, h, s: 'paying', d: -1 });
      states.push({ a: 'pos', m, h, s: 'succeeded', d: 1 });
    }
    minutes.push({ a: 'pos', m, e: 1, t: 1 });
  }
  return [encodeStates(states), encodeMinutes(minutes)];
}
const rows = Array.from({ length: rowsN }, (_, i) => row(i));

async function fill(): Promise<void> {
  for (let i = 0; i < rows.length; i += 500) {
    const part = rows.slice(i, i + 500);
    await store.query(
      'INSERT INTO payment_count_deltas (states, minutes) SELECT * FROM unnest($1::text[], $2::text[])',
      [part.map((r) => r[0]), part.map((r) => r[1])],
    );
  }
}

const results: Record<
  string,
  { wallMs: number[]; longestHoldMs: number[]; storeCpuMs: number[]; counters: number[] }
> = {};
try {
  for (let run = 0; run <= runs; run++) {
    for (const chunks of variants) {
      await fill();
      const pg = store.kind === 'postgres' ? postgresCpu() : undefined;
      const cpu = process.cpuUsage();
      const t = performance.now();
      longest = 0;
      let counters = 0;
      for (;;) {
        const r = await foldCounts(store, 200, chunks);
        if (process.env.FOLD_DEBUG) console.error(r);
        counters += r.counters;
        if (!r.more) break;
      }
      const wall = performance.now() - t;
      const used = process.cpuUsage(cpu);
      const storeCpu = pg ? postgresCpuSince(pg) : (used.user + used.system) / 1000;
      if (run === 0) continue; // warm-up
      const key = `${chunks} chunk(s) per fold`;
      const r = results[key] ?? { wallMs: [], longestHoldMs: [], storeCpuMs: [], counters: [] };
      results[key] = r;
      r.wallMs.push(Math.round(wall));
      r.longestHoldMs.push(Math.round(longest));
      r.storeCpuMs.push(Math.round(storeCpu));
      r.counters.push(counters);
    }
  }
  console.log(JSON.stringify({ store: store.kind, rows: rowsN, runs, results }));
} finally {
  if (store.kind === 'postgres') await store.query(`DROP SCHEMA "${schema}" CASCADE`);
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
