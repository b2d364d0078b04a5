/**
 * What one script call costs this process with ioredis, by the way it is made (CPU µs per call, one call
 * in flight at a time, as the batch publisher makes them). Usage: tsx bench/tools/redis-call.mts [calls] [args]
 */
import { Command, Redis } from 'ioredis';

const calls = Number(process.argv[2] ?? 5000);
const nargs = Number(process.argv[3] ?? 80);
const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const lua = 'return #ARGV';
const args: string[] = [];
for (let i = 0; i < nargs; i++)
  args.push(i % 8 === 0 ? `{"v":1,"t":"notify","data":"${'x'.repeat(200)}","id":"${i}"` : `arg-${i}`);

async function measure(name: string, make: () => Redis, call: (r: Redis, sha: string) => Promise<unknown>) {
  const r = make();
  await r.connect?.().catch(() => undefined);
  const sha = (await r.script('LOAD', lua)) as string;
  for (let i = 0; i < 500; i++) await call(r, sha);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < calls; i++) await call(r, sha);
  const c = process.cpuUsage(c0);
  const ms = performance.now() - t0;
  console.log(
    `${name}: ${((c.user + c.system) / calls).toFixed(1)} µs CPU per call (user ${(c.user / calls).toFixed(1)}, system ${(c.system / calls).toFixed(1)}), ${((ms * 1000) / calls).toFixed(1)} µs wall`,
  );
  r.disconnect();
}

const auto = () =>
  new Redis(url, {
    lazyConnect: true,
    enableAutoPipelining: true,
    socketTimeout: 5000,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
  });
const plain = () => new Redis(url, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0 });
for (let round = 0; round < 2; round++) {
  await measure('autopipelined evalsha(...args), socketTimeout', auto, (r, sha) =>
    r.evalsha(sha, 0, ...args),
  );
  await measure(
    'sendCommand(new Command), socketTimeout',
    auto,
    (r, sha) => r.sendCommand(new Command('evalsha', [sha, 0, ...args])) as Promise<unknown>,
  );
  await measure(
    'sendCommand(new Command), no socketTimeout',
    plain,
    (r, sha) => r.sendCommand(new Command('evalsha', [sha, 0, ...args])) as Promise<unknown>,
  );
  await measure(
    'sendCommand(new Command), one joined arg',
    plain,
    (r, sha) => r.sendCommand(new Command('evalsha', [sha, 0, args.join('\u0001')])) as Promise<unknown>,
  );
}
