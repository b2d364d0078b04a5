import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Socket } from 'socket.io-client';
import { sleep, until } from '../helpers.js';
import {
  cleanRedis,
  connectClient,
  dropSchema,
  type NodeProcess,
  spawnReadyNodes,
  startRedis,
  TEST_DATABASE_URL,
  TEST_REDIS_URL,
  uniqueName,
} from './harness.js';

interface Got {
  data: Record<string, unknown>;
  meta: Record<string, unknown>;
}

const sockets: Socket[] = [];

async function connectTo(url: string, appId: string, clientId: string, deviceId?: string): Promise<Socket> {
  const s = await connectClient(url, appId, clientId, deviceId);
  sockets.push(s);
  return s;
}

function collect(s: Socket): Got[] {
  const got: Got[] = [];
  s.on('dataUpdate', (data: Record<string, unknown>, meta: Record<string, unknown>) =>
    got.push({ data, meta }),
  );
  return got;
}

async function notify(url: string, body: unknown): Promise<number> {
  const res = await fetch(`${url}/notify`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  await res.arrayBuffer();
  return res.status;
}

describe('cluster: 3 nodes on Redis and PostgreSQL', () => {
  const prefix = `${uniqueName('htest')}:`;
  const schema = uniqueName('t_cluster');
  const nodes: NodeProcess[] = [];
  const env = {
    REDIS_URL: TEST_REDIS_URL,
    REDIS_PREFIX: prefix,
    DATABASE_URL: TEST_DATABASE_URL,
    DATABASE_SCHEMA: schema,
    PRESENCE_TTL: '3s',
    COUNT_INTERVAL: '20ms',
  };

  before(async () => {
    // Started together: migrations must be applied once even when nodes race.
    nodes.push(...(await spawnReadyNodes(env, 3)));
  });
  after(async () => {
    for (const s of sockets) s.close();
    await Promise.all(nodes.map((n) => n.kill()));
    await cleanRedis(TEST_REDIS_URL, prefix);
    await dropSchema(schema);
  });

  it('applies migrations once although three nodes started at once', async () => {
    const { default: pg } = await import('pg');
    const c = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await c.connect();
    const rows = (
      await c.query(`SELECT id, count(*)::int AS n FROM "${schema}".schema_migrations GROUP BY id`)
    ).rows;
    await c.end();
    assert.ok(rows.length > 0);
    for (const r of rows) assert.equal(r.n, 1, `migration ${r.id} applied ${r.n} times`);
  });

  it('delivers a notification posted to one node to sockets on every node, each once', async () => {
    const [a, b, c] = nodes as [NodeProcess, NodeProcess, NodeProcess];
    const s1 = await connectTo(a.url, 'shop', 'u1', 'u1-phone');
    const s2 = await connectTo(b.url, 'shop', 'u1', 'u1-web');
    const s3 = await connectTo(c.url, 'shop', 'u2', 'u2-phone');
    const g1 = collect(s1);
    const g2 = collect(s2);
    const g3 = collect(s3);
    // No pause here: a node answers connect only once it listens to the app's channel (admission).
    for (const s of [s1, s2, s3]) await s.emitWithAck('subscribe', ['order:1']);

    // users + devices + topic: every socket matches more than once but must get it once.
    assert.equal(
      await notify(b.url, {
        appId: 'shop',
        users: ['u1'],
        devices: ['u2-phone'],
        eventTopics: ['order:1'],
        data: { k: 1 },
      }),
      202,
    );
    await until(() => g1.length >= 1 && g2.length >= 1 && g3.length >= 1, 5000, 'cross-node delivery');
    await sleep(200);
    assert.deepEqual(
      [g1.length, g2.length, g3.length],
      [1, 1, 1],
      'each socket receives the notification exactly once',
    );
    assert.deepEqual(g3[0]?.data, { k: 1 });
    assert.equal(g1[0]?.meta.id, g3[0]?.meta.id);

    // Apps stay isolated across nodes.
    const other = await connectTo(c.url, 'other-app', 'u1');
    const gOther = collect(other);
    await other.emitWithAck('subscribe', ['order:1']);
    await notify(a.url, { appId: 'shop', eventTopics: ['order:1'], data: { k: 2 } });
    await until(() => g3.length === 2, 5000, 'second');
    await sleep(150);
    assert.equal(gOther.length, 0);
  });

  it('keeps counts exact across nodes and drops a SIGKILLed node within the presence TTL', async () => {
    const [a, b, c] = nodes as [NodeProcess, NodeProcess, NodeProcess];
    const watcher = await connectTo(a.url, 'live', 'dashboard');
    const counts: { count: number; connections: number }[] = [];
    watcher.on('dataUpdate', (d: { type: string; count: number; connections: number }) => {
      if (d.type === 'count') counts.push({ count: d.count, connections: d.connections });
    });
    await watcher.emitWithAck('subscribeCount', ['room']);

    // One user on two nodes counts once with two connections; a second user on a third node.
    const x1 = await connectTo(b.url, 'live', 'viewer-1', 'd1');
    const x2 = await connectTo(c.url, 'live', 'viewer-1', 'd2');
    const y = await connectTo(c.url, 'live', 'viewer-2', 'd3');
    await x1.emitWithAck('subscribe', 'room');
    await x2.emitWithAck('subscribe', 'room');
    await y.emitWithAck('subscribe', 'room');
    await until(() => counts.at(-1)?.count === 2 && counts.at(-1)?.connections === 3, 5000, 'count 2 / 3');

    // Unsubscribe on one node: still one user (other device), one connection fewer.
    await x1.emitWithAck('unsubscribe', 'room');
    await until(() => counts.at(-1)?.count === 2 && counts.at(-1)?.connections === 2, 5000, 'count 2 / 2');

    // Node c dies without saying goodbye: its two sockets leave the count within the TTL (3s here).
    const killedAt = Date.now();
    await c.kill();
    await until(
      () => counts.at(-1)?.count === 0 && counts.at(-1)?.connections === 0,
      15_000,
      'dead node reaped',
    );
    assert.ok(Date.now() - killedAt < 15_000);
    nodes.splice(2, 1);
  });

  it('hands clients over on SIGTERM and leaves no stale counts', async () => {
    const [a, b] = nodes as [NodeProcess, NodeProcess];
    const watcher = await connectTo(a.url, 'handover', 'dash');
    const counts: number[] = [];
    watcher.on('dataUpdate', (d: { type: string; count: number }) => {
      if (d.type === 'count') counts.push(d.count);
    });
    await watcher.emitWithAck('subscribeCount', ['t']);
    const s = await connectTo(b.url, 'handover', 'leaving');
    const shutdown: unknown[] = [];
    s.on('serverShutdown', (x: unknown) => shutdown.push(x));
    const reasons: string[] = [];
    s.on('disconnect', (r) => reasons.push(r));
    await s.emitWithAck('subscribe', 't');
    await until(() => counts.at(-1) === 1, 5000, 'count 1');
    const code = await b.stop();
    assert.equal(code, 0);
    assert.equal(shutdown.length, 1);
    assert.deepEqual(reasons, ['transport close']);
    await until(() => counts.at(-1) === 0, 5000, 'count back to 0 right after the graceful stop');
    nodes.splice(1, 1);
  });
});

describe('cluster: Redis restarted mid-test', () => {
  it('keeps serving local sockets while Redis is down and recovers fan-out and counts when it returns', async () => {
    const redis = await startRedis();
    const prefix = `${uniqueName('hr')}:`;
    const env = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, PRESENCE_TTL: '3s', COUNT_INTERVAL: '20ms' };
    const [a, b] = (await spawnReadyNodes(env, 2)) as [NodeProcess, NodeProcess];
    try {
      const sa = await connectTo(a.url, 'r', 'ua');
      const sb = await connectTo(b.url, 'r', 'ub');
      const ga = collect(sa);
      const gb = collect(sb);
      await sa.emitWithAck('subscribe', 'x');
      await sb.emitWithAck('subscribe', 'x');
      const watcher = await connectTo(a.url, 'r', 'w');
      const counts: number[] = [];
      watcher.on('dataUpdate', (d: { type: string; count: number }) => {
        if (d.type === 'count') counts.push(d.count);
      });
      await watcher.emitWithAck('subscribeCount', 'x');
      await until(() => counts.at(-1) === 2, 5000, 'count 2 before the outage');
      await sleep(100);
      await notify(a.url, { appId: 'r', eventTopics: ['x'], data: { n: 1 } });
      await until(() => ga.length === 1 && gb.length === 1, 5000, 'both before outage');

      await redis.stop();
      await sleep(300);
      // Local delivery keeps working and nothing crashes; readiness shows the degraded dependency.
      assert.equal(await notify(a.url, { appId: 'r', eventTopics: ['x'], data: { n: 2 } }), 202);
      await until(() => ga.length === 2, 5000, 'local delivery while redis is down');
      const ready = (await (await fetch(`${a.url}/readyz`)).json()) as {
        status: string;
        checks: Record<string, { ok: boolean }>;
      };
      assert.equal(ready.status, 'degraded');
      assert.equal(ready.checks.bus?.ok, false);

      // Redis returns empty (it kept nothing): nodes re-publish presence and resubscribe by themselves.
      const again = await startRedis(redis.port);
      try {
        await until(() => true, 0);
        let delivered = false;
        const deadline = Date.now() + 15_000;
        while (!delivered && Date.now() < deadline) {
          const before = gb.length;
          await notify(a.url, { appId: 'r', eventTopics: ['x'], data: { n: 3 } });
          await sleep(300);
          delivered = gb.length > before;
        }
        assert.ok(delivered, 'cross-node delivery recovered');
        // Notifications to a user are routed by the online sets, which Redis lost: they reach the
        // user on the other node again once the nodes re-published their presence.
        delivered = false;
        while (!delivered && Date.now() < deadline + 15_000) {
          const before = gb.length;
          await notify(a.url, { appId: 'r', users: ['ub'], data: { n: 4 } });
          await sleep(300);
          delivered = gb.length > before;
        }
        assert.ok(delivered, 'user-targeted cross-node delivery recovered');
        const sc = await connectTo(b.url, 'r', 'uc');
        await sc.emitWithAck('subscribe', 'x');
        await until(() => counts.at(-1) === 3, 15_000, 'cluster count recovered to 3');
        const readyAgain = (await (await fetch(`${a.url}/readyz`)).json()) as { status: string };
        assert.equal(readyAgain.status, 'ready');
      } finally {
        await again.stop();
      }
    } finally {
      await Promise.all([a.kill(), b.kill()]);
    }
  });
});
