/**
 * A heartbeat that is re-publishing this node's presence when the node closes must not write it again
 * after close() removed it: those keys have no TTL and no node would ever reap them (this node has left
 * the nodes set). Real Redis (127.0.0.1:6379 or TEST_REDIS_URL), a key prefix of its own.
 *
 * A guard, not a reproduction: the window (the heartbeat's write sent between close()'s removal and its
 * disconnect, one round trip) is too narrow to hit on purpose; without the `closed` checks in beat()
 * and resync() this test still passes here, as traced with MONITOR.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Redis } from 'ioredis';
import pino from 'pino';
import { RedisCluster } from '../../src/bus/redis.js';
import { uniqueName } from './harness.js';

const url = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

describe('cluster: close() during a heartbeat', () => {
  it('leaves no presence key behind when a heartbeat re-publishing presence is in flight', async () => {
    const prefix = `${uniqueName('hcr')}:`;
    const cluster = new RedisCluster({
      url,
      prefix,
      presenceTtlMs: 10_000,
      deliver: () => 0,
      onCountChange: () => undefined,
      hasUser: () => false,
      hasApp: () => true,
      localCount: () => ({ count: 1, connections: 1 }),
      nodeInfo: () => ({ v: 1 }),
      localTopics: () => [{ appId: 'a', topic: 't', clients: new Map([['c1', 1]]), connections: 1 }],
      logger: pino({ level: 'silent' }),
    });
    const redis = new Redis(url);
    try {
      assert.equal(await cluster.start(), true);
      const internals = cluster as unknown as { beat(): Promise<void>; resyncNeeded: boolean };
      // A heartbeat that will publish the whole presence again (as after a Redis outage), and the node
      // closing while its first command is on the wire.
      internals.resyncNeeded = true;
      const beat = internals.beat();
      await cluster.close();
      await beat;
      await new Promise((r) => setTimeout(r, 200));
      const left: string[] = [];
      let cursor = '0';
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
        cursor = next;
        left.push(...keys);
      } while (cursor !== '0');
      const withoutTtl: string[] = [];
      for (const k of left) if ((await redis.pttl(k)) === -1) withoutTtl.push(k);
      assert.deepEqual(withoutTtl, [], `keys left without a TTL: ${withoutTtl.join(', ')}`);
    } finally {
      await cluster.close();
      redis.disconnect();
    }
  });
});
