/**
 * What one targeted notification costs Herald's own code on one node, without sockets or HTTP: the
 * batch item's steps (schema check, NotifyService.publishNow: prepare, history append, router delivery,
 * frame encoding, the connection's queue) for `users` users with one connection each, whose writes are
 * counted and dropped. Prints the CPU ns (user + system) per notification for each of `rounds` runs of `n`, in this one process
 * (compare builds by running this before and after, alternated). Usage:
 *   npx tsx bench/tools/publish-cost.mts [n=200000] [users=10000] [rounds=7] [historySize=300]
 * (`historySize` 0: no history, as HISTORY_SIZE=0, to see what the history append costs).
 * Runs the TypeScript sources through tsx.
 */
import { MemoryBus } from '../../src/bus/memory.js';
import { HistoryPolicy, MemoryHistory } from '../../src/history/index.js';
import { Router } from '../../src/router/index.js';
import { NotifyService } from '../../src/router/notify.js';
import type { Conn } from '../../src/router/types.js';

const n = Number(process.argv[2] ?? 200_000);
const users = Number(process.argv[3] ?? 10_000);
const rounds = Number(process.argv[4] ?? 7);
const historySize = Number(process.argv[5] ?? 300);

const router = new Router();
let written = 0;
let bytes = 0;
for (let i = 0; i < users; i++) {
  const conn: Conn = {
    id: `c${i}`,
    appId: 'bench',
    clientId: `u${i}`,
    deviceId: undefined,
    topics: new Set(),
    watches: new Set(),
    write(frame) {
      written++;
      bytes += frame.ws[0].length;
      return true;
    },
  };
  router.add(conn);
}
const history = new MemoryHistory(new HistoryPolicy([], historySize, 300_000), {
  maxEntries: 200_000,
  maxStreams: 200_000,
  follows: (appId, stream) => router.follows(appId, stream),
});
const metrics = { published: { inc: () => undefined } } as never;
const notify = new NotifyService({
  bus: new MemoryBus((x) => router.deliver(x)),
  metrics,
  maxPayloadBytes: 65_536,
  history,
});

let seq = 0;
/** One batch item as `POST /notify/batch` parses it (the bench's body, parsed from JSON each time). */
const item = () => {
  const s = seq++;
  return JSON.parse(
    `{"appId":"bench","users":["u${s % users}"],"data":{"s":${s},"t":${Date.now()},"type":"payment","status":"success","orderId":"order-${s}"}}`,
  );
};

const times: number[] = [];
for (let r = 0; r < rounds; r++) {
  const items = Array.from({ length: n }, item);
  const c0 = process.cpuUsage();
  for (let i = 0; i < n; i++) notify.publishNow(items[i]);
  const c = process.cpuUsage(c0);
  times.push(((c.user + c.system) * 1000) / n);
}
const sorted = [...times].sort((a, b) => a - b);
console.log(
  JSON.stringify({
    cpuNsPerNotification: {
      min: Math.round(sorted[0] as number),
      median: Math.round(sorted[sorted.length >> 1] as number),
    },
    rounds: times.map(Math.round),
    written,
    bytes,
  }),
);
await history.close();
