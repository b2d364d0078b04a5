import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { sleep, until } from '../helpers.js';
import { closeSockets, collect, connectTo, notify } from './failure-helpers.js';
import { cleanRedis, type NodeProcess, spawnNode, TEST_REDIS_URL, uniqueName, waitReady } from './harness.js';

after(closeSockets);

const SKEWED = fileURLToPath(new URL('./skewed-clock.mjs', import.meta.url));

/**
 * Nodes whose clocks disagree: liveness (heartbeats against PRESENCE_TTL) must not depend on the nodes'
 * clocks agreeing, or a node whose clock is a few seconds behind is taken for dead by the others.
 */
describe('cluster: clock skew between nodes', () => {
  it('counts and reaches the users of a node whose clock is behind by more than PRESENCE_TTL', async () => {
    const prefix = `${uniqueName('hskw')}:`;
    const env = {
      REDIS_URL: TEST_REDIS_URL,
      REDIS_PREFIX: prefix,
      PRESENCE_TTL: '3s',
      COUNT_INTERVAL: '20ms',
    };
    const nodes: NodeProcess[] = [];
    try {
      nodes.push(await spawnNode(env));
      nodes.push(
        await spawnNode({
          ...env,
          NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${SKEWED}`.trim(),
          HERALD_TEST_CLOCK_SKEW_MS: '-6000',
        }),
      );
      const [a, b] = nodes as [NodeProcess, NodeProcess];
      await Promise.all([waitReady(a), waitReady(b)]);
      const watcher = await connectTo(a.url, 'skw', 'dash');
      const latest: number[] = [];
      watcher.on('dataUpdate', (d: { type?: string; count: number }) => {
        if (d?.type === 'count') latest.push(d.count);
      });
      await watcher.emitWithAck('subscribeCount', ['room']);
      const sb = await connectTo(b.url, 'skw', 'ub');
      const got = collect(sb);
      await sb.emitWithAck('subscribe', 'room');
      await until(() => latest.at(-1) === 1, 5000, 'count 1');
      // Several heartbeat periods later, the node behind is still alive for the others.
      await sleep(4000);
      const res = await watcher.emitWithAck('subscribeCount', ['room']);
      assert.equal((res as { counts: Record<string, { count: number }> }).counts.room?.count, 1);
      assert.equal(latest.at(-1), 1);
      assert.equal(await notify(a.url, { appId: 'skw', users: ['ub'], data: { k: 1 } }), 202);
      await until(() => got.length === 1, 3000, 'a user-targeted notification reaches the node behind');
      assert.ok(!a.logs.some((l) => String(l.msg).includes('removed the presence')), 'nobody was reaped');
    } finally {
      await Promise.all(nodes.map((n) => n.kill()));
      await cleanRedis(TEST_REDIS_URL, prefix);
    }
  });
});
