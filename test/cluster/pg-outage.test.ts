import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { io, type Socket } from 'socket.io-client';
import { sleep, until } from '../helpers.js';
import { CuttableProxy, post } from './failure-helpers.js';
import {
  cleanRedis,
  dropSchema,
  type NodeProcess,
  spawnReadyNodes,
  TEST_DATABASE_URL,
  TEST_REDIS_URL,
  uniqueName,
} from './harness.js';

describe('cluster: PostgreSQL unavailable', () => {
  const prefix = `${uniqueName('hpg')}:`;
  const schema = uniqueName('t_pgout');
  const target = new URL(TEST_DATABASE_URL);
  const proxy = new CuttableProxy(target.hostname, Number(target.port || 5432));
  const nodes: NodeProcess[] = [];
  const sockets: Socket[] = [];

  before(async () => {
    const port = await proxy.start();
    const viaProxy = new URL(TEST_DATABASE_URL);
    viaProxy.port = String(port);
    nodes.push(
      ...(await spawnReadyNodes(
        {
          REDIS_URL: TEST_REDIS_URL,
          REDIS_PREFIX: prefix,
          DATABASE_URL: viaProxy.toString(),
          DATABASE_SCHEMA: schema,
          WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true',
        },
        2,
      )),
    );
  });
  after(async () => {
    for (const s of sockets) s.close();
    await Promise.all(nodes.map((n) => n.kill()));
    await proxy.close();
    await cleanRedis(TEST_REDIS_URL, prefix);
    await dropSchema(schema);
  });

  it('keeps realtime working, answers 503 store_unavailable for durable intake, and recovers', async () => {
    const [a, b] = nodes as [NodeProcess, NodeProcess];
    const s = io(`${b.url}/shop`, {
      auth: { clientId: 'merchant-1' },
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
    });
    sockets.push(s);
    const got: unknown[] = [];
    s.on('dataUpdate', (d: unknown) => got.push(d));
    await new Promise<void>((resolve, reject) => {
      s.once('connect', () => resolve());
      s.once('connect_error', reject);
    });
    await s.emitWithAck('subscribe', 'orders');

    const webhook = (orderNo: string) => ({
      orderNo,
      notifyUrl: 'http://127.0.0.1:9/notify',
      payload: { orderNo },
    });
    assert.equal((await post(a.url, '/merchant-notify', webhook('before-1'))).status, 202);

    await proxy.cut();

    // Realtime does not need PostgreSQL: a notification posted to node a reaches the socket on node b.
    const r = await post(a.url, '/notify', { appId: 'shop', eventTopics: ['orders'], data: { n: 1 } });
    assert.equal(r.status, 202);
    await until(() => got.length === 1, 5000, 'realtime delivery while PostgreSQL is down');

    // Intake that must be durable says so, with a stable code, and does not hang.
    const w = await post(a.url, '/merchant-notify', webhook('during-1'));
    assert.equal(w.status, 503, JSON.stringify(w.body));
    assert.equal(w.body.error?.code, 'store_unavailable');
    const p = await post(a.url, '/payments/events', {
      eventId: 'ev-during-1',
      orderId: 'o-during-1',
      appId: 'shop',
      merchantId: 'merchant-1',
      type: 'created',
      amount: 400,
      occurredAt: new Date().toISOString(),
    });
    assert.equal(p.status, 503, JSON.stringify(p.body));
    assert.equal(p.body.error?.code, 'store_unavailable');

    // Readiness: still serving (200), marked degraded, with the store named.
    const ready = (await (await fetch(`${a.url}/readyz`)).json()) as {
      status: string;
      checks: Record<string, { ok: boolean }>;
    };
    assert.equal(ready.status, 'degraded');
    assert.equal(ready.checks.store?.ok, false);

    // PostgreSQL returns: intake works again without a restart, and no node crashed meanwhile.
    await proxy.start();
    let status = 0;
    for (let i = 0; i < 100 && status !== 202; i++) {
      status = (await post(a.url, '/merchant-notify', webhook(`after-${i}`))).status;
      if (status !== 202) await sleep(200);
    }
    assert.equal(status, 202, 'durable intake recovered');
    const again = (await (await fetch(`${a.url}/readyz`)).json()) as { status: string };
    assert.equal(again.status, 'ready');
    for (const n of nodes) assert.equal(n.child.exitCode, null, 'no node exited');
  });
});
