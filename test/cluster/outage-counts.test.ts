import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { sleep, until } from '../helpers.js';
import { closeSockets, connectTo, notify } from './failure-helpers.js';
import { type NodeProcess, spawnReadyNodes, startRedis, uniqueName } from './harness.js';

after(closeSockets);

/**
 * Counts after Redis restarted empty: what changed on another node during the outage must reach the
 * watchers, although no node remembers the counts from before and Redis kept nothing.
 */
describe('cluster: counts after a Redis restart', () => {
  it('converge to the exact value when a subscriber left another node during the outage', async () => {
    const redis = await startRedis();
    const prefix = `${uniqueName('hoc')}:`;
    const env = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, PRESENCE_TTL: '3s', COUNT_INTERVAL: '20ms' };
    const [a, b] = (await spawnReadyNodes(env, 2)) as [NodeProcess, NodeProcess];
    let again: Awaited<ReturnType<typeof startRedis>> | undefined;
    try {
      const watcher = await connectTo(a.url, 'oc', 'dash');
      const latest = new Map<string, number>();
      watcher.on('dataUpdate', (d: { type?: string; topic: string; count: number }) => {
        if (d?.type === 'count') latest.set(d.topic, d.count);
      });
      await watcher.emitWithAck('subscribeCount', ['x', 'y']);
      const leaving = await connectTo(b.url, 'oc', 'leaving');
      const staying = await connectTo(b.url, 'oc', 'staying');
      await leaving.emitWithAck('subscribe', 'x');
      await staying.emitWithAck('subscribe', 'y');
      await until(() => latest.get('x') === 1 && latest.get('y') === 1, 5000, 'counts before');
      await sleep(200);
      await redis.stop();
      await sleep(300);
      // During the outage: one subscriber leaves x on node b (b only knows it locally).
      await leaving.emitWithAck('unsubscribe', 'x');
      await sleep(300);
      again = await startRedis(redis.port);

      // The watcher on node a must end with x = 0 (and y still 1), without any further change.
      await until(() => latest.get('x') === 0, 15_000, 'x back to 0 after Redis returned');
      await sleep(1500);
      assert.equal(latest.get('x'), 0);
      const y = await watcher.emitWithAck('subscribeCount', ['y']);
      assert.equal((y as { counts?: Record<string, { count: number }> }).counts?.y?.count ?? -1, 1);
    } finally {
      await Promise.all([a.kill(), b.kill()]);
      await again?.stop();
      await redis.stop();
    }
  });

  it('converge when the subscriber connections dropped while a count changed (Redis stayed up)', async () => {
    const redis = await startRedis();
    const prefix = `${uniqueName('hsd')}:`;
    const env = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, PRESENCE_TTL: '3s', COUNT_INTERVAL: '20ms' };
    const [a, b] = (await spawnReadyNodes(env, 2)) as [NodeProcess, NodeProcess];
    const { Redis } = await import('ioredis');
    const admin = new Redis(redis.url);
    try {
      const watcher = await connectTo(a.url, 'sd', 'dash');
      const latest = new Map<string, number>();
      watcher.on('dataUpdate', (d: { type?: string; topic: string; count: number }) => {
        if (d?.type === 'count') latest.set(d.topic, d.count);
      });
      await watcher.emitWithAck('subscribeCount', ['x']);
      const leaving = await connectTo(b.url, 'sd', 'leaving');
      await leaving.emitWithAck('subscribe', 'x');
      await until(() => latest.get('x') === 1, 5000, 'count 1');

      // The pub/sub connections keep being dropped (CLIENT KILL TYPE pubsub: what Redis does to a
      // subscriber past client-output-buffer-limit, or a proxy restarting) while the subscriber leaves:
      // node b must still write the change (its command connection is fine), and node a, which did not
      // listen when it was announced, must read the count again once it listens.
      let killing = true;
      const killer = (async () => {
        while (killing) {
          await admin.client('KILL', 'TYPE', 'pubsub').catch(() => undefined);
          await sleep(5);
        }
      })();
      await sleep(300);
      await leaving.emitWithAck('unsubscribe', 'x');
      await sleep(300);
      killing = false;
      await killer;

      await until(() => latest.get('x') === 0, 10_000, 'x back to 0 once node a listens again');
    } finally {
      admin.disconnect();
      await Promise.all([a.kill(), b.kill()]);
      await redis.stop();
    }
  });

  it('delivers to a topic (of an app new to the node) subscribed during a long outage, once Redis is back', async () => {
    const redis = await startRedis();
    const prefix = `${uniqueName('hlo')}:`;
    const env = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, PRESENCE_TTL: '3s', COUNT_INTERVAL: '20ms' };
    const [a, b] = (await spawnReadyNodes(env, 2)) as [NodeProcess, NodeProcess];
    let again: Awaited<ReturnType<typeof startRedis>> | undefined;
    try {
      const watcher = await connectTo(a.url, 'lo', 'dash');
      const latest = new Map<string, number>();
      watcher.on('dataUpdate', (d: { type?: string; topic: string; count: number }) => {
        if (d?.type === 'count') latest.set(d.topic, d.count);
      });
      await watcher.emitWithAck('subscribeCount', ['late']);
      await redis.stop();
      await sleep(300);
      // Node b has no socket of the app yet: its channel subscription is asked for while Redis is away,
      // and the outage outlasts the subscriber connection's retries (its queued commands are failed).
      const late = await connectTo(b.url, 'lo', 'late-user');
      const got: unknown[] = [];
      late.on('dataUpdate', (d: { type?: string }) => {
        if (d?.type !== 'count') got.push(d);
      });
      await late.emitWithAck('subscribe', 'late');
      await sleep(23_000);
      again = await startRedis(redis.port);

      await until(() => latest.get('late') === 1, 15_000, 'the late subscriber counted on node a');
      let delivered = false;
      const deadline = Date.now() + 10_000;
      while (!delivered && Date.now() < deadline) {
        await notify(a.url, { appId: 'lo', eventTopics: ['late'], data: { k: 1 } });
        await sleep(300);
        delivered = got.length > 0;
      }
      assert.ok(
        delivered,
        'a notification posted to node a reaches the topic subscribed on b during the outage',
      );
    } finally {
      await Promise.all([a.kill(), b.kill()]);
      await again?.stop();
      await redis.stop();
    }
  });
});
