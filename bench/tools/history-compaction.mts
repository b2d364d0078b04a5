/**
 * What the single node's history arena compaction costs in a workload made to fragment it: 1,000,000 notifications, one in five
 * to one of 40,000 quiet streams that keep theirs (300 entries, an hour), the rest to 1,000 busy streams
 * that keep their last 50, so that every buffer keeps a few live records amid dropped ones; a turn of the
 * event loop every 300 appends, as a server has between requests. Prints the compactions, their slices,
 * the longest slice and their total time. Usage: npx tsx bench/tools/history-compaction.mts
 */

import { HistoryPolicy, MemoryHistory } from '../../src/history/index.js';
import type { Notification } from '../../src/router/types.js';

const h = new MemoryHistory(
  new HistoryPolicy([{ prefix: 't:busy', size: 50, ttlMs: 3_600_000 }], 300, 3_600_000),
  { maxEntries: 200_000, maxStreams: 200_000 },
);
let worst = 0,
  total = 0,
  steps = 0;
const orig = h.compactStep.bind(h);
h.compactStep = (b?: number) => {
  const t = performance.now();
  const r = orig(b);
  const d = performance.now() - t;
  steps++;
  total += d;
  worst = Math.max(worst, d);
  return r;
};
const data = JSON.stringify({
  s: 1,
  t: Date.now() * 1000,
  type: 'payment',
  status: 'success',
  orderId: 'order-1234567',
});
const t0 = performance.now();
let maxHeld = 0;
for (let i = 0; i < 1_000_000; i++) {
  const quiet = i % 5 === 0;
  h.appendNow({
    v: 1,
    id: crypto.randomUUID(),
    appId: 'a',
    ts: Date.now(),
    data,
    topics: [quiet ? `quiet-${i % 40000}` : `busy-${i % 1000}`],
  } as Notification);
  if (i % 300 === 0) {
    await new Promise((r) => setImmediate(r));
    maxHeld = Math.max(maxHeld, h.bytes.held);
  }
}
console.log(
  JSON.stringify({
    ms: Math.round(performance.now() - t0),
    compactions: h.compactions,
    steps,
    worstStepMs: worst.toFixed(2),
    totalMs: total.toFixed(0),
    entries: h.size.entries,
    bytes: h.bytes,
    maxHeldMB: (maxHeld / 1e6).toFixed(1),
  }),
);
await h.close();
