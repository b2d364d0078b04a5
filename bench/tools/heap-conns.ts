/**
 * Where a connection's memory goes: starts Herald with --heapsnapshot-signal, takes a heap snapshot,
 * connects N subscribed clients, takes another, and prints the growth per connection by object kind.
 * Usage: tsx bench/tools/heap-conns.ts [n] [--herald-dir <dir>] [--server herald|baseline|limit]
 */
import { mkdtempSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type ServerKind, startServer } from '../lib/proc.js';
import { parseArgs, sleep, str } from '../lib/util.js';
import { LoadGen } from '../loadgen.js';

const args = parseArgs(process.argv.slice(2));
const n = Number(args._[0] ?? 5000);
const kind = str(args, 'server', 'herald') as ServerKind;
const dir = mkdtempSync(join(tmpdir(), 'heap-'));
const heraldDir = str(args, 'herald-dir', '');
const server = await startServer(kind, {
  nodeFlags: ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${dir}`],
  ...(heraldDir ? { heraldDir } : {}),
});
const snap = async () => {
  const before = new Set(readdirSync(dir));
  process.kill(server.pid, 'SIGUSR2');
  for (let i = 0; i < 600; i++) {
    await sleep(500);
    const f = readdirSync(dir).find((x) => !before.has(x) && x.endsWith('.heapsnapshot'));
    if (f) {
      const p = join(dir, f);
      // Written in one go by the server; wait until it ends with the closing bracket of the JSON.
      let last = -1;
      for (let k = 0; k < 240; k++) {
        const size = statSync(p).size;
        if (size === last && size > 0) return p;
        last = size;
        await sleep(2000);
      }
    }
  }
  throw new Error('no heap snapshot');
};
const gen = new LoadGen({ url: server.url, appId: 'bench' });
try {
  await sleep(2000);
  const a = await snap();
  const r = await gen.connect(n, (i) => ({ clientId: `c${i}`, topics: [`order:${i}:status`] }), {
    rate: 2000,
  });
  console.error(`connected ${r.connected}`);
  await sleep(3000);
  const b = await snap();
  console.log(`${a}\n${b}\nnpx tsx bench/tools/heap-diff.ts ${a} ${b} ${r.connected}`);
} finally {
  await gen.closeAll();
  await server.stop();
}
process.exit(0);
