import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type HeraldClient, connect as heraldClient, type RecoveryResult } from '../../src/sdk/index.js';
import { sleep, until } from '../helpers.js';
import {
  CuttableProxy,
  closeSockets,
  collect,
  connectTo,
  post,
  readiness,
  untilAsync,
} from './failure-helpers.js';
import { type NodeProcess, spawnNode, startRedis, uniqueName, waitReady } from './harness.js';

after(closeSockets);

interface Payment {
  type: 'payment';
  orderId: string;
  status: string;
  announcement: string;
}

const payments = (got: unknown[], orderId: string): Payment[] =>
  (got as Payment[]).filter((d) => d?.type === 'payment' && d.orderId === orderId);

/**
 * One node cut off from Redis while Redis and the other nodes are fine (a network partition: node `a`
 * reaches Redis through a proxy the test cuts). By default such a node delivers to its own sockets only
 * (test/cluster/receipts-outage.test.ts); here:
 * - `REDIS_DOWN_NOTIFY=reject`: its producers get 503 `cluster_unavailable` and nobody gets the
 *   notification, so a producer that retries reaches every node's clients, each once;
 * - payment notifications committed on it meanwhile are published to no one until Redis is back, then
 *   to every node's clients, each once (the payment outbox keeps them; before, they reached only the
 *   committing node's sockets and the merchant's app on another node never heard "收款");
 * - its SDK clients get what other nodes published meanwhile once it is back: the node asks them to
 *   catch up (`resync`) and they recover it from the streams' history in Redis.
 */
describe('cluster: a node cut off from Redis', () => {
  let redis: Awaited<ReturnType<typeof startRedis>>;
  let proxy: CuttableProxy;
  let a: NodeProcess;
  let b: NodeProcess;

  before(async () => {
    redis = await startRedis();
    proxy = new CuttableProxy('127.0.0.1', redis.port);
    const port = await proxy.start();
    const env = {
      REDIS_PREFIX: `${uniqueName('hrp')}:`,
      PRESENCE_TTL: '3s',
      REDIS_DOWN_NOTIFY: 'reject',
      // The outbox sweep takes rows older than 5 sweep intervals (2 s at least).
      PAYMENT_SWEEP_INTERVAL: '1s',
    };
    [a, b] = await Promise.all([
      spawnNode({ ...env, REDIS_URL: `redis://127.0.0.1:${port}` }),
      spawnNode({ ...env, REDIS_URL: redis.url }),
    ]);
    await Promise.all([waitReady(a), waitReady(b)]);
  });

  after(async () => {
    await Promise.all([a?.kill(), b?.kill()]);
    await proxy?.close();
    await redis?.stop();
  });

  async function cut(): Promise<void> {
    await proxy.cut();
    // The node notices at once (its connections were reset); readiness says so.
    await untilAsync(async () => (await readiness(a.url)) === 'degraded', 5000, 'node a degraded');
  }

  async function restore(): Promise<void> {
    await proxy.start();
    await untilAsync(async () => (await readiness(a.url)) === 'ready', 10_000, 'node a ready again');
  }

  it('REDIS_DOWN_NOTIFY=reject: 503 cluster_unavailable and delivered nowhere; a retry after Redis is back reaches everyone once', async () => {
    const onA = await connectTo(a.url, 'rp', 'ua');
    const onB = await connectTo(b.url, 'rp', 'ub');
    const gotA = collect(onA);
    const gotB = collect(onB);
    await onA.emitWithAck('subscribe', 'x');
    await onB.emitWithAck('subscribe', 'x');

    const first = await post(a.url, '/notify', { appId: 'rp', eventTopics: ['x'], data: { n: 1 } });
    assert.equal(first.status, 202);
    await until(() => gotA.length === 1 && gotB.length === 1, 5000, 'delivered on both nodes');

    await cut();
    const refused = await post(a.url, '/notify', { appId: 'rp', eventTopics: ['x'], data: { n: 2 } });
    assert.equal(refused.status, 503, JSON.stringify(refused.body));
    assert.equal(refused.body.error?.code, 'cluster_unavailable');
    const batch = (await post(a.url, '/notify/batch', {
      notifications: [
        { appId: 'rp', eventTopics: ['x'], data: { n: 3 } },
        { appId: 'rp', users: ['ua'], data: { n: 4 } },
      ],
    })) as unknown as {
      status: number;
      body: { accepted: number; results: { ok: boolean; error?: { code: string } }[] };
    };
    assert.equal(batch.status, 200);
    assert.equal(batch.body.accepted, 0);
    assert.deepEqual(
      batch.body.results.map((r) => r.error?.code),
      ['cluster_unavailable', 'cluster_unavailable'],
    );
    // Node b, which still reaches Redis, accepts and delivers as usual.
    assert.equal((await post(b.url, '/notify', { appId: 'rp', users: ['ub'], data: { n: 5 } })).status, 202);
    await until(() => gotB.length === 2, 5000, 'node b still delivers');
    await sleep(300);
    assert.deepEqual(
      gotA.map((d) => (d as { n: number }).n),
      [1],
      'nothing refused reached the local socket',
    );

    await restore();
    const retried = await post(a.url, '/notify', { appId: 'rp', eventTopics: ['x'], data: { n: 2 } });
    assert.equal(retried.status, 202, JSON.stringify(retried.body));
    await until(() => gotA.length === 2 && gotB.length === 3, 5000, 'the retry reached both nodes');
    await sleep(300);
    assert.deepEqual(
      gotA.map((d) => (d as { n: number }).n),
      [1, 2],
    );
    assert.deepEqual(
      gotB.map((d) => (d as { n: number }).n),
      [1, 5, 2],
    );
    const metrics = await (await fetch(`${a.url}/metrics`)).text();
    assert.match(metrics, /^herald_cluster_local_only_total 0$/m, 'nothing went to local sockets only');
  });

  it('payment notifications committed while cut off reach the merchant app on another node once Redis is back, each client once', async () => {
    // The merchant's app (user = merchant id) on node b, a second app of the merchant on node a.
    const appB = await connectTo(b.url, 'pay', 'm-7');
    const appA = await connectTo(a.url, 'pay', 'm-7');
    const gotB = collect(appB);
    const gotA = collect(appA);
    const event = (orderId: string, type: string) => ({
      eventId: `${orderId}-${type}`,
      orderId,
      appId: 'pay',
      merchantId: 'm-7',
      type,
      amount: 4,
      currency: 'CNY',
      occurredAt: new Date().toISOString(),
    });

    const before = await post(a.url, '/payments/events', event('o-1', 'succeeded'));
    assert.equal(before.status, 200, JSON.stringify(before.body));
    await until(
      () => payments(gotB, 'o-1').length === 1 && payments(gotA, 'o-1').length === 1,
      5000,
      'announced on both nodes',
    );

    await cut();
    // The store (embedded, node a's own) still takes the events: they are committed and answered.
    const during = (await post(a.url, '/payments/events', event('o-2', 'succeeded'))) as unknown as {
      status: number;
      body: {
        results?: { ok: boolean; result?: { state: string } }[];
        ok?: boolean;
        result?: { state: string };
      };
    };
    assert.equal(during.status, 200, JSON.stringify(during.body));
    // Delivered nowhere while node a cannot reach Redis (not to its own sockets only).
    await sleep(1500);
    assert.equal(payments(gotA, 'o-2').length, 0, 'not delivered to the local socket alone');
    assert.equal(payments(gotB, 'o-2').length, 0);

    // Long enough for the node's own retries to give up: the outbox sweep publishes it afterwards.
    await sleep(2000);
    await restore();
    await until(
      () => payments(gotB, 'o-2').length === 1 && payments(gotA, 'o-2').length === 1,
      15_000,
      'announced on both nodes after Redis is back',
    );
    const [announced] = payments(gotB, 'o-2') as [Payment];
    assert.equal(announced.status, 'succeeded');
    assert.equal(announced.announcement, '收款 4.00 元');
    // Once each: the node's retries and the sweep do not both publish it.
    await sleep(3000);
    assert.equal(payments(gotB, 'o-2').length, 1);
    assert.equal(payments(gotA, 'o-2').length, 1);
    assert.equal(a.child.exitCode, null, 'node a kept running');
  });

  it("the node's SDK clients recover what other nodes published while it was cut off", async () => {
    const sdk: HeraldClient = heraldClient({
      url: a.url,
      appId: 'rs',
      clientId: 'sdk-1',
      socketOptions: { transports: ['websocket'] },
    });
    try {
      const got: number[] = [];
      const recovered: RecoveryResult[][] = [];
      sdk.on((data) => got.push((data as { n: number }).n));
      sdk.onRecover((r) => recovered.push(r));
      await until(() => sdk.status === 'connected', 5000, 'sdk connected');
      await sdk.subscribe('y');
      assert.equal(
        (await post(b.url, '/notify', { appId: 'rs', eventTopics: ['y'], data: { n: 1 } })).status,
        202,
      );
      await until(() => got.length === 1, 5000, 'live before the cut');

      await cut();
      // Published by node b (which reaches Redis: kept in the topic's history), missed by node a.
      for (const n of [2, 3]) {
        assert.equal(
          (await post(b.url, '/notify', { appId: 'rs', eventTopics: ['y'], data: { n } })).status,
          202,
        );
      }
      await sleep(300);
      assert.deepEqual(got, [1], 'node a cannot pass them on while cut off');

      await restore();
      await until(() => got.length === 3, 10_000, 'recovered after the resync');
      assert.deepEqual(got, [1, 2, 3]);
      assert.ok(
        recovered.some((r) => r.some((x) => x.stream === 't:y' && x.recovered && x.replayed === 2)),
        JSON.stringify(recovered),
      );
      assert.equal(
        (await post(b.url, '/notify', { appId: 'rs', eventTopics: ['y'], data: { n: 4 } })).status,
        202,
      );
      await until(() => got.length === 4, 5000, 'live again');
      await sleep(300);
      assert.deepEqual(got, [1, 2, 3, 4], 'each once');
      const metrics = await (await fetch(`${a.url}/metrics`)).text();
      assert.match(metrics, /^herald_cluster_resyncs_total [1-9]\d*$/m, 'the resync is counted');
    } finally {
      sdk.close();
    }
  });
});
