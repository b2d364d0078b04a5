/**
 * The embedded store's pauses under a steady payment intake, without sockets or HTTP: order lifecycles
 * (created, paying, succeeded) written through the intake in batches of --batch events, one batch at a
 * time, for --seconds. Reports the batch times (p50, p99, max), every batch over 25 ms with its time
 * from the start, and the WAL folder's size at the end, so that pauses of the store's own (new WAL
 * segments, checkpoints) can be told from the rest.
 * The store checkpoints by its own policy (DEFAULT_CHECKPOINTS) unless --checkpoint-mb sets another WAL
 * size (0: never, as before the store had a checkpointer); --settings "k=v k=v" adds PostgreSQL settings
 * to EMBEDDED_SETTINGS (e.g. "wal_init_zero=on full_page_writes=on" for PGlite's defaults).
 * Usage: npx tsx bench/tools/wal-cost.mts [--seconds 60] [--batch 12] [--over 25] [--checkpoint-mb N]
 *   [--settings "k=v …"]
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_CHECKPOINTS, EmbeddedStore } from '../../src/store/embedded.js';
import { migrate } from '../../src/store/migrations.js';
import { paymentEvent } from '../../test/payments/helpers.js';
import { toolIntake } from './intake.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    batch: { type: 'string', default: '12' },
    over: { type: 'string', default: '25' },
    'checkpoint-mb': { type: 'string' },
    settings: { type: 'string', default: '' },
  },
});
const seconds = Number(values.seconds);
const batch = Number(values.batch);
const over = Number(values.over);
const checkpointMb = values['checkpoint-mb'];
const settings = Object.fromEntries(
  values.settings
    .split(' ')
    .filter(Boolean)
    .map((kv) => kv.split('=') as [string, string]),
);
const dir = mkdtempSync(join(tmpdir(), 'wal-cost-'));
const opened = performance.now();
const store = await EmbeddedStore.open(dir, 'herald', {
  settings,
  checkpoints:
    checkpointMb === undefined
      ? DEFAULT_CHECKPOINTS
      : // 0: never (a size no run reaches, and no timed checkpoint within it)
        {
          walBytes: Number(checkpointMb) > 0 ? Number(checkpointMb) * 2 ** 20 : Number.MAX_SAFE_INTEGER,
          intervalMs: Number(checkpointMb) > 0 ? DEFAULT_CHECKPOINTS.intervalMs : Number.MAX_SAFE_INTEGER,
          checkMs: 1000,
        },
});
await migrate(store);
const openMs = Math.round(performance.now() - opened);
const intake = toolIntake(store);
const walBytes = () => {
  const wal = join(dir, 'pg', 'pg_wal');
  let bytes = 0;
  let files = 0;
  for (const f of readdirSync(wal)) {
    const st = statSync(join(wal, f));
    if (st.isFile()) {
      bytes += st.blocks * 512;
      files++;
    }
  }
  return { mb: Math.round(bytes / 1e5) / 10, files };
};
try {
  const open: string[] = [];
  const types = ['created', 'paying', 'succeeded'] as const;
  const stage = new Map<string, number>();
  const times: number[] = [];
  const stalls: [number, number][] = [];
  const start = performance.now();
  const checkpoints: [number, number][] = [];
  while (performance.now() - start < seconds * 1000) {
    const events = [];
    for (let i = 0; i < batch; i++) {
      // A third of each batch starts new orders; the rest move open ones on.
      if (open.length < 300 || i % 3 === 0) {
        const id = randomUUID();
        open.push(id);
        stage.set(id, 0);
        events.push(paymentEvent('app', id, 'created'));
      } else {
        const id = open[Math.floor(Math.random() * open.length)] as string;
        const next = (stage.get(id) ?? 0) + 1;
        if (next >= types.length) continue;
        stage.set(id, next);
        if (next === types.length - 1) {
          open.splice(open.indexOf(id), 1);
          stage.delete(id);
        }
        events.push(paymentEvent('app', id, types[next] as (typeof types)[number]));
      }
    }
    const t = performance.now();
    await Promise.all(events.map((e) => intake.submit(e, 'http')));
    const ms = performance.now() - t;
    times.push(ms);
    if (ms > over) stalls.push([Math.round((t - start) / 100) / 10, Math.round(ms)]);
    if (store.checkpointStats.checkpoints > checkpoints.length) {
      checkpoints.push([Math.round((t - start) / 100) / 10, Math.round(store.checkpointStats.lastMs)]);
    }
  }
  times.sort((a, b) => a - b);
  const at = (q: number) => Math.round((times[Math.floor(q * (times.length - 1))] ?? 0) * 100) / 100;
  console.log(
    JSON.stringify({
      settings: values.settings,
      checkpointMb: checkpointMb ?? DEFAULT_CHECKPOINTS.walBytes / 2 ** 20,
      openMs,
      batches: times.length,
      batchMs: { p50: at(0.5), p99: at(0.99), max: at(1) },
      over: [over, stalls.length],
      stalls: stalls.slice(0, 40),
      checkpoints,
      wal: walBytes(),
    }),
  );
} finally {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
