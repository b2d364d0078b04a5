/**
 * What the single node's history holds in memory when full: `n` notifications (HISTORY_MAX_ENTRIES is
 * 200,000) to `users` users, each with the notify bench's data (~110 bytes of JSON), appended to a
 * MemoryHistory with the default rules (300 per stream, 5 minutes); then a full GC and the process's
 * heap and off-heap (array buffers) use against the same before appending. Usage:
 *   node --expose-gc --import tsx bench/tools/history-memory.mts [n=200000] [users=10000]
 */
import { HistoryPolicy, MemoryHistory } from '../../src/history/index.js';

const n = Number(process.argv[2] ?? 200_000);
const users = Number(process.argv[3] ?? 10_000);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');

const h = new MemoryHistory(new HistoryPolicy([], 300, 300_000), {
  maxEntries: 200_000,
  maxStreams: 200_000,
});
gc();
const before = process.memoryUsage();
for (let s = 0; s < n; s++) {
  h.appendNow({
    v: 1,
    id: crypto.randomUUID(),
    appId: 'bench',
    ts: Date.now(),
    // As NotifyService.prepare makes it: JSON.stringify of the parsed body's data (a flat string).
    data: JSON.stringify({
      s,
      t: Date.now() * 1000,
      type: 'payment',
      status: 'success',
      orderId: `order-${s}`,
    }),
    users: [`u${s % users}`],
  });
}
gc();
const after = process.memoryUsage();
const mb = (x: number) => Math.round((x / 1e6) * 10) / 10;
console.log(
  JSON.stringify({
    entries: h.size.entries,
    heapUsedMB: mb(after.heapUsed - before.heapUsed),
    arrayBuffersMB: mb(after.arrayBuffers - before.arrayBuffers),
    heapBytesPerEntry: Math.round((after.heapUsed - before.heapUsed) / h.size.entries),
    offHeapBytesPerEntry: Math.round((after.arrayBuffers - before.arrayBuffers) / h.size.entries),
  }),
);
await h.close();
