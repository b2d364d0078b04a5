import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { sleep, until } from '../helpers.js';
import { closeSockets, collect, connectTo, notify, readiness, untilAsync } from './failure-helpers.js';
import { type NodeProcess, spawnReadyNodes, startRedis, uniqueName } from './harness.js';

after(closeSockets);

/** A Redis that stops answering without closing its connections (a stalled host, a dead network path). */
describe('cluster: Redis stalls without closing its connections', () => {
  it('keeps answering POST /notify and delivering locally, and reports degraded', async () => {
    const redis = await startRedis();
    const prefix = `${uniqueName('hstl')}:`;
    // The default stall timeout (the harness gives other tests a longer one).
    const env = {
      REDIS_URL: redis.url,
      REDIS_PREFIX: prefix,
      PRESENCE_TTL: '3s',
      COUNT_INTERVAL: '20ms',
      REDIS_STALL_TIMEOUT: '2s',
    };
    const [a, b] = (await spawnReadyNodes(env, 2)) as [NodeProcess, NodeProcess];
    try {
      const sa = await connectTo(a.url, 'st', 'ua');
      const sb = await connectTo(b.url, 'st', 'ub');
      const ga = collect(sa);
      const gb = collect(sb);
      await sa.emitWithAck('subscribe', 'x');
      await sb.emitWithAck('subscribe', 'x');
      assert.equal(await notify(a.url, { appId: 'st', eventTopics: ['x'], data: { n: 1 } }), 202);
      await until(() => ga.length === 1 && gb.length === 1, 5000, 'both before the stall');

      // The Redis host stalls: TCP stays up, nothing answers (as behind a dead network path).
      redis.pause();
      const started = Date.now();
      const status = await notify(a.url, { appId: 'st', eventTopics: ['x'], data: { n: 2 } }, 15_000);
      assert.equal(status, 202);
      await until(() => ga.length === 2, 3000, 'local delivery while Redis stalls');
      assert.ok(Date.now() - started < 5000, `answered after ${Date.now() - started} ms`);
      // Once the stall is noticed, notifications do not wait for Redis at all.
      await untilAsync(async () => (await readiness(a.url)) === 'degraded', 8000, 'degraded readiness');
      const t0 = Date.now();
      assert.equal(await notify(a.url, { appId: 'st', eventTopics: ['x'], data: { n: 3 } }), 202);
      await until(() => ga.length === 3, 2000, 'local delivery, fast');
      assert.ok(Date.now() - t0 < 1000, `answered after ${Date.now() - t0} ms`);

      // Redis answers again: fan-out recovers by itself.
      redis.resume();
      await untilAsync(async () => (await readiness(a.url)) === 'ready', 15_000, 'ready again');
      let delivered = false;
      const deadline = Date.now() + 10_000;
      while (!delivered && Date.now() < deadline) {
        const before = gb.length;
        await notify(a.url, { appId: 'st', eventTopics: ['x'], data: { n: 4 } });
        await sleep(300);
        delivered = gb.length > before;
      }
      assert.ok(delivered, 'cross-node delivery recovered');
    } finally {
      redis.resume();
      await Promise.all([a.kill(), b.kill()]);
      await redis.stop();
    }
  });

  it('REDIS_STALL_TIMEOUT: a stall shorter than it is waited out, and the notification still reaches every node', async () => {
    const redis = await startRedis();
    const prefix = `${uniqueName('hstl')}:`;
    const env = {
      REDIS_URL: redis.url,
      REDIS_PREFIX: prefix,
      PRESENCE_TTL: '30s',
      REDIS_STALL_TIMEOUT: '10s',
    };
    const [a, b] = (await spawnReadyNodes(env, 2)) as [NodeProcess, NodeProcess];
    try {
      const sa = await connectTo(a.url, 'st', 'ua');
      const sb = await connectTo(b.url, 'st', 'ub');
      const gb = collect(sb);
      await sa.emitWithAck('subscribe', 'x');
      await sb.emitWithAck('subscribe', 'x');
      assert.equal(await notify(a.url, { appId: 'st', eventTopics: ['x'], data: { n: 1 } }), 202);
      await until(() => gb.length === 1, 5000, 'cross-node before the stall');

      // A 4 s pause (a failover, say): with the default 2 s the connection would be dropped and this
      // notification delivered on node a only.
      redis.pause();
      const pending = notify(a.url, { appId: 'st', eventTopics: ['x'], data: { n: 2 } }, 20_000);
      await sleep(4000);
      assert.equal(
        await readiness(a.url),
        'ready',
        'a stall shorter than REDIS_STALL_TIMEOUT is not an outage',
      );
      redis.resume();
      assert.equal(await pending, 202);
      await until(() => gb.length === 2, 5000, 'the notification sent during the stall reached node b');
    } finally {
      redis.resume();
      await Promise.all([a.kill(), b.kill()]);
      await redis.stop();
    }
  });
});
