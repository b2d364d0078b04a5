import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { io } from 'socket.io-client';
import type { SocketConn } from '../../src/gateway/index.js';
import { type HeraldClient, type RecoveryResult, connect as sdkConnect } from '../../src/sdk/index.js';
import {
  cleanRedis,
  type NodeProcess,
  spawnReadyNodes,
  TEST_REDIS_URL,
  uniqueName,
} from '../cluster/harness.js';
import { call, connect, post, sleep, startTestHerald, type TestHerald, until } from '../helpers.js';

function drop(herald: TestHerald, clientId: string): void {
  for (const c of [...herald.router.allConns()])
    if (c.clientId === clientId) (c as SocketConn).socket.conn.close();
}

interface Got {
  data: Record<string, unknown>;
  meta: Record<string, unknown>;
}

describe('recovery after a reconnect (single node, memory history)', () => {
  let herald: TestHerald;
  const clients: HeraldClient[] = [];
  const open = (clientId: string, deviceId?: string, opts: { reconnect?: boolean } = {}) => {
    const c = sdkConnect({
      url: herald.url(),
      appId: 'rec',
      clientId,
      ...(deviceId ? { deviceId } : {}),
      reconnect: { initialDelayMs: opts.reconnect === false ? 60_000 : 300, maxDelayMs: 400, jitter: 0 },
      socketOptions: { transports: ['websocket'] },
    });
    clients.push(c);
    return c;
  };

  before(async () => {
    herald = await startTestHerald({ historySize: 300, historyTtl: 60_000 });
  });
  after(async () => {
    for (const c of clients) c.close();
    await herald.cleanup();
  });

  it('replays what was missed on topic and user streams, in order, before new messages, once each', async () => {
    const c = open('alice', 'alice-phone');
    const got: Got[] = [];
    c.on((data, meta) => got.push({ data: data as Record<string, unknown>, meta }));
    const recoveries: RecoveryResult[][] = [];
    c.onRecover((r) => recoveries.push(r));
    await c.subscribe(['chat:room-1']);
    await until(
      () => c.positions.has('t:chat:room-1') && c.positions.has('u:alice'),
      3000,
      'positions known',
    );
    await post(herald, '/notify', { appId: 'rec', eventTopics: ['chat:room-1'], data: { n: 1 } });
    await until(() => got.length === 1, 3000, 'first');

    drop(herald, 'alice');
    await until(() => c.status !== 'connected', 3000, 'disconnected');
    // Missed while offline: two on the topic, one to the user, one to both (must arrive once).
    await post(herald, '/notify', { appId: 'rec', eventTopics: ['chat:room-1'], data: { n: 2 } });
    await post(herald, '/notify', { appId: 'rec', users: ['alice'], data: { n: 3 } });
    await post(herald, '/notify', { appId: 'rec', eventTopics: ['chat:room-1'], data: { n: 4 } });
    await post(herald, '/notify', {
      appId: 'rec',
      users: ['alice'],
      eventTopics: ['chat:room-1'],
      data: { n: 5 },
    });

    await until(() => recoveries.length === 1, 5000, 'recovery result');
    await post(herald, '/notify', { appId: 'rec', eventTopics: ['chat:room-1'], data: { n: 6 } });
    await until(() => got.length >= 6, 3000, 'all six');
    await sleep(100);
    const ns = got.map((g) => g.data.n);
    assert.deepEqual(ns.slice(0, 1), [1]);
    assert.equal(ns.length, 6, `each notification once: ${JSON.stringify(ns)}`);
    assert.deepEqual([...ns].sort(), [1, 2, 3, 4, 5, 6]);
    assert.equal(ns.at(-1), 6, 'the new message comes after the replay');
    // Per stream, replayed notifications keep their order.
    const topicOrder = got.filter((g) => g.meta.stream === 't:chat:room-1').map((g) => g.data.n);
    assert.deepEqual(topicOrder, [...topicOrder].sort());
    const byStream = Object.fromEntries((recoveries[0] ?? []).map((r) => [r.stream, r]));
    assert.equal(byStream['t:chat:room-1']?.recovered, true);
    assert.equal(byStream['u:alice']?.recovered, true);
    assert.ok(got.some((g) => g.meta.replay === true));
  });

  it('forgets the position of a topic the app unsubscribed from (an app going through many topics)', async () => {
    const c = open('erin');
    await c.subscribe(['order:1', 'order:2']);
    await until(() => c.positions.has('t:order:1') && c.positions.has('t:order:2'), 3000, 'positions');
    await post(herald, '/notify', { appId: 'rec', eventTopics: ['order:1'], data: { n: 1 } });
    await c.unsubscribe('order:1');
    assert.equal(c.positions.has('t:order:1'), false, 'dropped on unsubscribe');
    // A notification already on its way, or a late position answer, does not bring it back.
    await post(herald, '/notify', { appId: 'rec', eventTopics: ['order:2'], data: { n: 2 } });
    await until(() => (c.positions.get('t:order:2')?.offset ?? 0) >= 1, 3000, 'order:2 moves on');
    assert.equal(c.positions.has('t:order:1'), false);
    assert.ok(c.positions.has('u:erin'), 'the user stream stays');
    for (let i = 3; i < 53; i++) {
      await c.subscribe(`order:${i}`);
      await c.unsubscribe(`order:${i}`);
    }
    assert.deepEqual(
      [...c.positions.keys()].filter((k) => k.startsWith('t:')),
      ['t:order:2'],
      'one position per followed topic, not per topic ever followed',
    );
  });

  it('reports recovered: false when the history no longer holds what was missed (size bound)', async () => {
    const small = await startTestHerald({ historySize: 2, historyTtl: 60_000 });
    try {
      const c = sdkConnect({
        url: small.url(),
        appId: 'rec',
        clientId: 'bob',
        reconnect: { initialDelayMs: 300, maxDelayMs: 400, jitter: 0 },
        socketOptions: { transports: ['websocket'] },
      });
      clients.push(c);
      const got: unknown[] = [];
      c.on((d) => got.push(d));
      const recoveries: RecoveryResult[][] = [];
      c.onRecover((r) => recoveries.push(r));
      await c.subscribe('news');
      await until(() => c.positions.has('t:news'), 3000, 'position');
      drop(small, 'bob');
      await until(() => c.status !== 'connected', 3000, 'disconnected');
      for (let i = 1; i <= 5; i++)
        await post(small, '/notify', { appId: 'rec', eventTopics: ['news'], data: { i } });
      await until(() => recoveries.length === 1, 5000, 'recovery');
      const r = recoveries[0]?.find((x) => x.stream === 't:news');
      assert.equal(r?.recovered, false, 'three of five are gone: the app must reload');
      assert.equal(r?.replayed, 2);
      await until(() => got.length === 2, 3000, 'the two held');
      assert.deepEqual(got, [{ i: 4 }, { i: 5 }]);
    } finally {
      await small.cleanup();
    }
  });

  it('reports recovered: false after the history expired and when the epoch changed', async () => {
    const short = await startTestHerald({ historySize: 100, historyTtl: 1000 });
    try {
      const s = await connect(short, 'rec', { clientId: 'carol' });
      const sub = await call<{ ok: true; streams: Record<string, { offset: number; epoch: string }> }>(
        s,
        'recover',
        {
          topics: ['t1'],
        },
      );
      const pos = sub.streams['t:t1'];
      assert.ok(pos && pos.offset === 0 && pos.epoch.length > 0);
      await post(short, '/notify', { appId: 'rec', eventTopics: ['t1'], data: 1 });
      await sleep(1200);
      await post(short, '/notify', { appId: 'rec', eventTopics: ['t1'], data: 2 });
      const r1 = await call<{ ok: true; streams: Record<string, { recovered: boolean; replayed: number }> }>(
        s,
        'recover',
        {
          streams: { 't:t1': pos },
        },
      );
      assert.equal(r1.streams['t:t1']?.recovered, false, 'offset 1 expired');
      assert.equal(r1.streams['t:t1']?.replayed, 1);
      const r2 = await call<{ ok: true; streams: Record<string, { recovered: boolean; replayed: number }> }>(
        s,
        'recover',
        {
          streams: { 't:t1': { offset: 1, epoch: 'not-the-epoch' } },
        },
      );
      assert.equal(r2.streams['t:t1']?.recovered, false);
      assert.equal(r2.streams['t:t1']?.replayed, 0);
      const r3 = await call<{ ok: true; streams: Record<string, { recovered: boolean; error?: string }> }>(
        s,
        'recover',
        {
          streams: { 'u:someone-else': { offset: 0, epoch: '' } },
        },
      );
      assert.equal(
        r3.streams['u:someone-else']?.error,
        'not_subscribed',
        'no reading of another user stream',
      );
      const bad = await call<{ ok: false; error: { code: string } }>(s, 'recover', {
        streams: { 't:x': { offset: -1 } },
      });
      assert.equal(bad.error.code, 'invalid_arguments');
      s.close();
    } finally {
      await short.cleanup();
    }
  });

  it('keeps working for a plain socket.io-client: data unchanged, meta carries stream and offset', async () => {
    const s = await connect(herald, 'rec', { clientId: 'plain' });
    const got: Got[] = [];
    s.on('dataUpdate', (data: Record<string, unknown>, meta: Record<string, unknown>) =>
      got.push({ data, meta }),
    );
    await call(s, 'subscribe', 'plain-topic');
    await post(herald, '/notify', {
      appId: 'rec',
      eventTopics: ['plain-topic'],
      data: { type: 'message', x: 1 },
    });
    await post(herald, '/notify', {
      appId: 'rec',
      eventTopics: ['plain-topic'],
      data: { type: 'message', x: 2 },
    });
    await until(() => got.length === 2, 3000, 'two');
    assert.deepEqual(got[0]?.data, { type: 'message', x: 1 });
    assert.equal(got[0]?.meta.topic, 'plain-topic');
    assert.equal(got[0]?.meta.stream, 't:plain-topic');
    assert.equal((got[1]?.meta.offset as number) - (got[0]?.meta.offset as number), 1);
    assert.equal(got[0]?.meta.epoch, got[1]?.meta.epoch);
    s.close();
  });

  it('tells a socket reached once through several of its streams its offsets in the others (meta.also), so the SDK sees no gap', async () => {
    const s = await connect(herald, 'rec', { clientId: 'both', deviceId: 'both-phone' });
    const got: Got[] = [];
    s.on('dataUpdate', (data: Record<string, unknown>, meta: Record<string, unknown>) =>
      got.push({ data, meta }),
    );
    await call(s, 'subscribe', 'both-topic');
    const other = await connect(herald, 'rec', { clientId: 'other' });
    const otherGot: Got[] = [];
    other.on('dataUpdate', (data: Record<string, unknown>, meta: Record<string, unknown>) =>
      otherGot.push({ data, meta }),
    );
    await call(other, 'subscribe', 'both-topic');
    await post(herald, '/notify', { appId: 'rec', users: ['both'], data: { x: 1 } });
    // To the topic, the user and the device: this socket matches all three and gets it once.
    await post(herald, '/notify', {
      appId: 'rec',
      eventTopics: ['both-topic'],
      users: ['both'],
      devices: ['both-phone'],
      data: { x: 2 },
    });
    await post(herald, '/notify', { appId: 'rec', users: ['both'], data: { x: 3 } });
    await until(() => got.length === 3 && otherGot.length === 1, 3000, 'three and one');
    const [first, both, third] = got as [Got, Got, Got];
    assert.equal(both.meta.stream, 't:both-topic');
    const also = both.meta.also as Record<string, [number, string]>;
    assert.deepEqual(Object.keys(also).sort(), ['d:both-phone', 'u:both']);
    assert.equal(also['u:both']?.[0], (first.meta.offset as number) + 1);
    assert.equal(third.meta.offset, (first.meta.offset as number) + 2, 'the user stream is consecutive');
    // A socket reached through one stream only gets no `also`.
    assert.equal(otherGot[0]?.meta.also, undefined);
    s.close();
    other.close();
  });

  it('records delivery receipts of ack: true notifications per device, readable at GET /notify/:id', async () => {
    const phone = open('dave', 'dave-phone');
    const web = open('dave', 'dave-web');
    const got: unknown[] = [];
    phone.on((d) => got.push(d));
    web.on((d) => got.push(d));
    await until(() => phone.status === 'connected' && web.status === 'connected', 3000, 'both connected');
    await sleep(50);
    const res = await post(herald, '/notify', {
      appId: 'rec',
      users: ['dave'],
      ack: true,
      data: { announce: '收款 4.00 元' },
    });
    assert.equal(res.status, 202);
    await until(() => got.length === 2, 3000, 'both devices');
    let report: { receipts: { clientId: string; deviceId: string; at: number }[] } | undefined;
    await until(
      () => {
        void fetch(`${herald.url()}/notify/${res.body.id}`)
          .then((r) => r.json())
          .then((j) => {
            report = j as typeof report;
          });
        return (report?.receipts?.length ?? 0) === 2;
      },
      3000,
      'two receipts',
    );
    assert.deepEqual(report?.receipts.map((r) => r.deviceId).sort(), ['dave-phone', 'dave-web']);
    assert.ok(report?.receipts.every((r) => r.clientId === 'dave' && r.at >= (res.body.ts as number)));
    const missing = await fetch(`${herald.url()}/notify/00000000-0000-0000-0000-000000000000`);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { error: { code: string } }).error.code, 'not_found');
  });
});

describe('recovery on another node (cluster history in Redis)', () => {
  it('replays on node B what a client missed after leaving node A', async () => {
    const prefix = `${uniqueName('hrec')}:`;
    const env = { REDIS_URL: TEST_REDIS_URL, REDIS_PREFIX: prefix };
    const [a, b] = (await spawnReadyNodes(env, 2)) as [NodeProcess, NodeProcess];
    try {
      const s1 = io(`${a.url}/rc`, {
        auth: { clientId: 'erin' },
        transports: ['websocket'],
        forceNew: true,
        reconnection: false,
      });
      await new Promise<void>((r) => s1.once('connect', () => r()));
      const first = (await s1.emitWithAck('recover', { topics: ['orders'] })) as {
        streams: Record<string, { offset: number; epoch: string }>;
      };
      const pos = first.streams['t:orders'];
      assert.ok(pos);
      s1.close();
      for (let i = 1; i <= 3; i++) {
        await fetch(`${a.url}/notify`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ appId: 'rc', eventTopics: ['orders'], data: { i } }),
        });
      }
      const s2 = io(`${b.url}/rc`, {
        auth: { clientId: 'erin' },
        transports: ['websocket'],
        forceNew: true,
        reconnection: false,
      });
      const got: { i: number }[] = [];
      s2.on('dataUpdate', (d: { i: number }) => got.push(d));
      await new Promise<void>((r) => s2.once('connect', () => r()));
      const res = (await s2.emitWithAck('recover', { topics: ['orders'], streams: { 't:orders': pos } })) as {
        streams: Record<string, { recovered: boolean; replayed: number }>;
      };
      assert.equal(res.streams['t:orders']?.recovered, true);
      assert.equal(res.streams['t:orders']?.replayed, 3);
      await until(() => got.length === 3, 3000, 'replayed on node B');
      assert.deepEqual(
        got.map((g) => g.i),
        [1, 2, 3],
      );
      s2.close();
    } finally {
      await Promise.all([a.kill(), b.kill()]);
      await cleanRedis(TEST_REDIS_URL, prefix);
    }
  });
});

describe('offline fallback', () => {
  it('forwards a notification for a user with no connected device to OFFLINE_WEBHOOK_URL, once, and not for online users', async () => {
    const { createServer } = await import('node:http');
    const received: { userId: string; data: unknown; id: string }[] = [];
    const headers: Record<string, string | string[] | undefined>[] = [];
    const server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => {
        body += c.toString();
      });
      req.on('end', () => {
        received.push(JSON.parse(body));
        headers.push(req.headers);
        res.end('success');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as { port: number }).port;
    const herald = await startTestHerald({
      offlineWebhookUrl: `http://127.0.0.1:${port}/push`,
      webhookAllowPrivateNetworks: true,
      webhookPollInterval: 50,
    });
    try {
      const s = await connect(herald, 'push-app', { clientId: 'online-user' });
      const got: unknown[] = [];
      s.on('dataUpdate', (d: unknown) => got.push(d));
      const res = await post(herald, '/notify', {
        appId: 'push-app',
        users: ['online-user', 'offline-user'],
        data: { title: 'New order' },
      });
      assert.equal(res.status, 202);
      await until(() => received.length === 1 && got.length === 1, 10_000, 'live delivery and one forward');
      await sleep(300);
      assert.equal(received.length, 1);
      assert.equal(received[0]?.userId, 'offline-user');
      assert.equal(received[0]?.id, res.body.id);
      assert.deepEqual(received[0]?.data, { title: 'New order' });
      assert.ok(headers[0]?.['webhook-signature'], 'forwarded through the signed webhook path');

      // data as deep as MAX_JSON_DEPTH (128) is accepted, and forwarded although the payload wraps it
      // once more (it was refused by the webhook engine's own depth check and only logged).
      let deep: unknown = 1;
      for (let i = 0; i < 128; i++) deep = [deep];
      const deepRes = await post(herald, '/notify', {
        appId: 'push-app',
        users: ['offline-user'],
        data: deep,
      });
      assert.equal(deepRes.status, 202, JSON.stringify(deepRes.body));
      await until(() => received.length === 2, 10_000, 'the deep notification forwarded');
      assert.equal(received[1]?.id, deepRes.body.id);
      assert.deepEqual(received[1]?.data, deep);
      const metrics = await (await fetch(`${herald.url()}/metrics`)).text();
      assert.match(metrics, /^herald_offline_forwards_total\{result="forwarded"\} 2$/m);
      s.close();
    } finally {
      await herald.cleanup();
      server.close();
    }
  });
});
