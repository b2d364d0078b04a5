/**
 * What a node does with messages on its Redis channels that no Herald node of this version would send
 * (a node of another version, another deployment sharing REDIS_PREFIX by mistake): it drops them and
 * goes on. Each one used to throw inside ioredis's socket handler, an uncaught exception that ended the
 * process. One node in this process, the real Redis.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { call, closeAll, collect, connect, startTestHerald, type TestHerald, until } from '../helpers.js';
import { cleanRedis, TEST_REDIS_URL, uniqueName } from './harness.js';

const APP = 'bus-msg-app';

describe('cluster bus: malformed messages from Redis', () => {
  const prefix = `${uniqueName('hbusmsg')}:`;
  let herald: TestHerald;
  let redis: Redis;
  before(async () => {
    herald = await startTestHerald({ redisUrl: TEST_REDIS_URL, redisPrefix: prefix, presenceTtl: 3000 });
    redis = new Redis(TEST_REDIS_URL);
  });
  after(async () => {
    await herald.cleanup();
    redis.disconnect();
    await cleanRedis(TEST_REDIS_URL, prefix);
  });

  it('drops them without ending the process, and still delivers what is well formed', async () => {
    const s = await connect(herald, APP, { clientId: 'bus-msg-user' });
    const got = collect(s);
    await call(s, 'subscribe', 'bus-msg-topic');
    const [nodeId] = await redis.zrange(`${prefix}nodes`, 0, -1);
    assert.ok(nodeId, 'the node is in the nodes zset');
    const notification = (extra: Record<string, unknown>) => ({
      v: 1,
      id: 'n-1',
      appId: APP,
      ts: Date.now(),
      topics: ['bus-msg-topic'],
      data: '{"k":1}',
      ...extra,
    });
    const bad: unknown[] = [
      null,
      42,
      [],
      { v: 1, t: 'batch', node: 'other' },
      { v: 1, t: 'batch', node: 'other', ms: [null, 5, { t: 'notify' }] },
      { v: 1, t: 'count', node: 'other' },
      { v: 1, t: 'count', node: 'other', topics: 'x' },
      { v: 1, t: 'notify', node: 'other' },
      { v: 1, t: 'notify', node: 'other', n: notification({ ts: undefined }) },
      { v: 1, t: 'notify', node: 'other', n: notification({ data: { k: 1 } }) },
      { v: 1, t: 'notify', node: 'other', n: notification({ topics: 'bus-msg-topic' }) },
      { v: 1, t: 'rpc', node: 'other' },
      { v: 1, t: 'rpc', node: 'other', id: 'r1', kind: 'payments.command', appId: APP, payload: null },
      { v: 1, t: 'rpc-reply', node: 'other' },
      { v: 1, t: 'rpc-reply', node: 'other', id: 'unknown', ok: true },
    ];
    let exits = 0;
    const onUncaught = () => {
      exits++;
    };
    process.on('uncaughtException', onUncaught);
    try {
      for (const channel of [`${prefix}app:${APP}`, `${prefix}node:${nodeId}`]) {
        for (const m of bad) await redis.publish(channel, JSON.stringify(m));
        await redis.publish(channel, 'not json at all');
      }
      // A well-formed message from another node is delivered as before.
      await redis.publish(
        `${prefix}app:${APP}`,
        JSON.stringify({ v: 1, t: 'notify', node: 'other', n: notification({ id: 'n-good' }) }),
      );
      await until(() => got.length === 1, 3000, 'the well-formed notification');
      assert.deepEqual(got[0]?.data, { k: 1 });
      // And the node still serves its own traffic.
      const res = await fetch(`${herald.url()}/notify`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ appId: APP, eventTopics: ['bus-msg-topic'], data: { k: 2 } }),
      });
      assert.equal(res.status, 202);
      await until(() => got.length === 2, 3000, 'a notification posted after them');
      assert.deepEqual(got[1]?.data, { k: 2 });
      assert.equal(exits, 0, 'no uncaught exception');
    } finally {
      process.off('uncaughtException', onUncaught);
      closeAll(s);
    }
  });

  it('gives the history meta key of a stream only ever recovered the lifetime an append gives it', async () => {
    const s = await connect(herald, APP, { clientId: 'bus-msg-recover' });
    try {
      // recover() answers the position of every stream of the call; none of these was ever written.
      const topic = `never-written-${Date.now()}`;
      const res = (await call(s, 'recover', { topics: [topic] })) as { ok: boolean };
      assert.equal(res.ok, true, JSON.stringify(res));
      const key = `${prefix}h:${APP}|t:${topic}|m`;
      assert.equal(await redis.exists(key), 1, 'the epoch was started');
      const ttl = await redis.pttl(key);
      assert.ok(ttl > 0, `the meta key expires (pttl ${ttl})`);
      const own = await redis.pttl(`${prefix}h:${APP}|u:bus-msg-recover|m`);
      assert.ok(own > 0, `the user stream's meta key expires too (pttl ${own})`);
    } finally {
      closeAll(s);
    }
  });

  it('lists a node whose heartbeat info is not an object, without its details', async () => {
    await redis.zadd(`${prefix}nodes`, Date.now() + 60_000, 'ghost-node');
    await redis.hset(`${prefix}nodeinfo`, 'ghost-node', 'null');
    const res = await fetch(`${herald.url()}/admin/api/nodes`);
    assert.equal(res.status, 200, await res.clone().text());
    const body = (await res.json()) as { nodes: { id: string }[] };
    assert.ok(
      body.nodes.some((n) => n.id === 'ghost-node'),
      JSON.stringify(body),
    );
    await redis.zrem(`${prefix}nodes`, 'ghost-node');
  });
});
