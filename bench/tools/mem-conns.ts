/**
 * Where an idle connection's RSS goes: starts a server, connects N subscribed clients (in steps), and
 * after each step prints RSS next to the V8 heap (used / committed per space) and external memory,
 * read from the server's own `GET /metrics` (Herald only) and /proc.
 * Usage: tsx bench/tools/mem-conns.ts [n1,n2,...] [--herald-dir <dir>] [--node-flags=...] [--settle ms]
 */
import { startServer } from '../lib/proc.js';
import { list, num, parseArgs, sleep, str } from '../lib/util.js';
import { LoadGen } from '../loadgen.js';

const args = parseArgs(process.argv.slice(2));
const sizes = (args._[0] ? String(args._[0]).split(',') : ['10000', '19000']).map(Number);
const heraldDir = str(args, 'herald-dir', '');
const settle = num(args, 'settle', 12_000);
const nodeFlags = list(args, 'node-flags', []);
const server = await startServer('herald', {
  nodeFlags,
  ...(heraldDir ? { heraldDir } : {}),
});
const mb = (b: number) => Math.round((b / 2 ** 20) * 10) / 10;
async function reading(label: string) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const metric = (name: string, space?: string) => {
    const re = new RegExp(`^${name}${space ? `\\{space="${space}"\\}` : ''} (\\S+)$`, 'm');
    return Number(re.exec(text)?.[1] ?? Number.NaN);
  };
  const spaces = ['new', 'old', 'code', 'map', 'large_object'];
  const row: Record<string, number | string> = { label, rssMB: mb(server.rssBytes()) };
  row.heapUsedMB = mb(metric('nodejs_heap_size_used_bytes'));
  row.heapTotalMB = mb(metric('nodejs_heap_size_total_bytes'));
  row.externalMB = mb(metric('nodejs_external_memory_bytes'));
  for (const s of spaces) {
    row[`${s}UsedMB`] = mb(metric('nodejs_heap_space_size_used_bytes', s));
    row[`${s}CommittedMB`] = mb(metric('nodejs_heap_space_size_total_bytes', s));
  }
  console.log(JSON.stringify(row));
  return row;
}
const gen = new LoadGen({ url: server.url, appId: 'bench' });
try {
  await sleep(settle);
  await reading('0');
  let total = 0;
  for (const size of sizes) {
    const r = await gen.connect(
      size - total,
      (i) => ({ clientId: `c${total + i}`, topics: [`order:${total + i}:status`] }),
      { rate: num(args, 'connect-rate', 5000), concurrency: 300 },
    );
    total += r.connected;
    await sleep(settle);
    await reading(String(total));
  }
} finally {
  await gen.closeAll();
  await server.stop();
}
process.exit(0);
