import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { sleep, until } from '../helpers.js';
import { closeSockets, collect, connectTo, notify } from './failure-helpers.js';
import { type NodeProcess, spawnReadyNodes, startRedis, uniqueName } from './harness.js';

after(closeSockets);

/**
 * Receipts live in Redis in a cluster. While Redis is away a notification that asks for receipts
 * (`ack: true`, as the payment announcements do) must still reach this node's sockets, like any other.
 */
describe('cluster: a notification with ack: true while Redis is away', () => {
  it('is delivered to local sockets and answered 202; receipts answer 503 until Redis is back', async () => {
    const redis = await startRedis();
    const prefix = `${uniqueName('hra')}:`;
    const env = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, PRESENCE_TTL: '3s' };
    const [a] = (await spawnReadyNodes(env, 1)) as [NodeProcess];
    try {
      const s = await connectTo(a.url, 'ra', 'u1');
      const got = collect(s);
      await s.emitWithAck('subscribe', 'x');
      const first = await fetch(`${a.url}/notify`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ appId: 'ra', eventTopics: ['x'], ack: true, data: { n: 1 } }),
      });
      assert.equal(first.status, 202);
      const { id } = (await first.json()) as { id: string };
      await until(() => got.length === 1, 3000, 'delivered with Redis up');

      await redis.stop();
      await sleep(300);
      assert.equal(await notify(a.url, { appId: 'ra', eventTopics: ['x'], ack: true, data: { n: 2 } }), 202);
      await until(() => got.length === 2, 3000, 'delivered locally with Redis away');
      const metrics = await (await fetch(`${a.url}/metrics`)).text();
      assert.match(metrics, /^herald_receipts_unrecorded_total 1$/m, 'the unrecorded receipt is counted');
      assert.match(metrics, /^herald_cluster_local_only_total 1$/m, 'the local-only delivery is counted');

      // Reading receipts needs Redis: a retryable 503, not an internal error.
      const report = await fetch(`${a.url}/notify/${id}`);
      assert.equal(report.status, 503);
      assert.equal(((await report.json()) as { error: { code: string } }).error.code, 'store_unavailable');
    } finally {
      await a.kill();
      await redis.stop();
    }
  });
});
