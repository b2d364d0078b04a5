import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { sleep, until } from '../helpers.js';
import { closeSockets, collect, connectTo, notify, watchCounts } from './failure-helpers.js';
import { cleanRedis, type NodeProcess, spawnReadyNodes, TEST_REDIS_URL, uniqueName } from './harness.js';

after(closeSockets);

/**
 * Failure semantics of cluster mode beyond a clean kill or restart: a node that freezes (SIGSTOP) past
 * the presence TTL.
 */
describe('cluster: a node frozen past the presence TTL', () => {
  it('re-asserts its presence when it wakes: exact counts, and its users reachable again', async () => {
    const prefix = `${uniqueName('hfrz')}:`;
    const env = {
      REDIS_URL: TEST_REDIS_URL,
      REDIS_PREFIX: prefix,
      PRESENCE_TTL: '2s',
      COUNT_INTERVAL: '20ms',
    };
    const [a, b] = (await spawnReadyNodes(env, 2)) as [NodeProcess, NodeProcess];
    try {
      const watcher = await connectTo(a.url, 'frz', 'dash');
      const counts = watchCounts(watcher);
      await watcher.emitWithAck('subscribeCount', ['room']);
      const sb = await connectTo(b.url, 'frz', 'ub');
      const got = collect(sb);
      await sb.emitWithAck('subscribe', 'room');
      await until(() => counts.at(-1)?.count === 1, 5000, 'count 1');

      // b stops (a VM pause, a long GC, SIGSTOP) long enough for a to declare it dead and reap it.
      b.child.kill('SIGSTOP');
      await until(() => counts.at(-1)?.count === 0, 10_000, 'frozen node reaped');
      await sleep(500);
      b.child.kill('SIGCONT');

      // b wakes up with its socket still connected: it must be counted again, exactly once.
      await until(
        () => counts.at(-1)?.count === 1 && counts.at(-1)?.connections === 1,
        8000,
        'count back to 1 after the node woke up',
      );
      // And a notification to its user, routed by the online sets, reaches it.
      let delivered = false;
      const deadline = Date.now() + 8000;
      while (!delivered && Date.now() < deadline) {
        assert.equal(await notify(a.url, { appId: 'frz', users: ['ub'], data: { k: 1 } }), 202);
        await sleep(300);
        delivered = got.length > 0;
      }
      assert.ok(delivered, 'a user-targeted notification reaches the node that woke up');
      await sleep(1000);
      assert.deepEqual(counts.at(-1), { count: 1, connections: 1 });
    } finally {
      await Promise.all([a.kill(), b.kill()]);
      await cleanRedis(TEST_REDIS_URL, prefix);
    }
  });
});
