import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Socket } from 'socket.io-client';
import { sleep, until } from '../helpers.js';
import {
  cleanRedis,
  connectClient,
  type NodeProcess,
  spawnReadyNodes,
  TEST_REDIS_URL,
  uniqueName,
} from './harness.js';

const sockets: Socket[] = [];

async function connectTo(url: string, appId: string, clientId: string): Promise<Socket> {
  const s = await connectClient(url, appId, clientId);
  sockets.push(s);
  return s;
}

interface Got {
  data: unknown;
  meta: { stream?: string; offset?: number; epoch?: string };
}

function collect(s: Socket): Got[] {
  const got: Got[] = [];
  s.on('dataUpdate', (data: unknown, meta: Got['meta']) => got.push({ data, meta }));
  return got;
}

async function notify(url: string, body: unknown): Promise<void> {
  const res = await fetch(`${url}/notify`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  await res.arrayBuffer();
  assert.equal(res.status, 202);
}

/** The node's cluster counters from /metrics. */
async function stats(
  url: string,
): Promise<{ sentUser: number; sentApp: number; received: number; routed: number; calls: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const read = (re: RegExp) => Number(re.exec(text)?.[1] ?? Number.NaN);
  return {
    sentUser: read(/^herald_cluster_notifications_total\{direction="sent",route="user"\} (\d+)/m),
    sentApp: read(/^herald_cluster_notifications_total\{direction="sent",route="app"\} (\d+)/m),
    received: read(/^herald_cluster_notifications_total\{direction="received",route="any"\} (\d+)/m),
    routed: read(/^herald_cluster_routed_nodes_total (\d+)/m),
    calls: read(/^herald_cluster_publish_calls_total (\d+)/m),
  };
}

describe('cluster: notifications to users go only to the nodes holding them', () => {
  const prefix = `${uniqueName('hroute')}:`;
  const nodes: NodeProcess[] = [];

  before(async () => {
    nodes.push(
      ...(await spawnReadyNodes({ REDIS_URL: TEST_REDIS_URL, REDIS_PREFIX: prefix, PRESENCE_TTL: '3s' }, 3)),
    );
  });
  after(async () => {
    for (const s of sockets) s.close();
    await Promise.all(nodes.map((n) => n.kill()));
    await cleanRedis(TEST_REDIS_URL, prefix);
  });

  it('reaches a user on another node as soon as its socket is connected, once, and no other node', async () => {
    const [a, b, c] = nodes as [NodeProcess, NodeProcess, NodeProcess];
    const before = await Promise.all([a, b, c].map((n) => stats(n.url)));
    // A fresh user (and, the first time, a fresh app) per round: connect on one node, post at once on
    // another. Admission puts the user in the node's online set before `connect` is answered.
    const rounds = 12;
    for (let i = 0; i < rounds; i++) {
      const on = nodes[i % 3] as NodeProcess;
      const from = nodes[(i + 1) % 3] as NodeProcess;
      const s = await connectTo(on.url, `route-${i % 4}`, `user-${i}`);
      const got = collect(s);
      await notify(from.url, { appId: `route-${i % 4}`, users: [`user-${i}`], data: { i } });
      await until(() => got.length === 1, 5000, `round ${i}: delivery right after connect`);
      s.close();
    }
    await sleep(200);
    const afterStats = await Promise.all([a, b, c].map((n) => stats(n.url)));
    const sum = (f: (s: Awaited<ReturnType<typeof stats>>) => number, list: typeof before) =>
      list.reduce((t, s) => t + f(s), 0);
    assert.equal(sum((s) => s.sentUser, afterStats) - sum((s) => s.sentUser, before), rounds);
    assert.equal(sum((s) => s.sentApp, afterStats) - sum((s) => s.sentApp, before), 0);
    // Each notification went to exactly one other node, which received it; nobody else did.
    assert.equal(sum((s) => s.routed, afterStats) - sum((s) => s.routed, before), rounds);
    assert.equal(sum((s) => s.received, afterStats) - sum((s) => s.received, before), rounds);
  });

  it('a user on two nodes gets it on both, once each; a user on the posting node costs no message', async () => {
    const [a, b, c] = nodes as [NodeProcess, NodeProcess, NodeProcess];
    const sb = await connectTo(b.url, 'multi', 'both');
    const sc = await connectTo(c.url, 'multi', 'both');
    const sa = await connectTo(a.url, 'multi', 'local');
    const gb = collect(sb);
    const gc = collect(sc);
    const ga = collect(sa);
    const s0 = await stats(a.url);
    await notify(a.url, { appId: 'multi', users: ['both'], data: { k: 1 } });
    await until(() => gb.length === 1 && gc.length === 1, 5000, 'both devices');
    const s1 = await stats(a.url);
    assert.equal(s1.routed - s0.routed, 2);
    // History offsets were assigned in the same Redis call and travel with the routed message.
    for (const g of [gb, gc]) {
      assert.equal(g[0]?.meta.stream, 'u:both');
      assert.equal(g[0]?.meta.offset, 1);
      assert.equal(typeof g[0]?.meta.epoch, 'string');
    }
    assert.equal(gb[0]?.meta.epoch, gc[0]?.meta.epoch);

    await notify(a.url, { appId: 'multi', users: ['local'], data: { k: 2 } });
    await until(() => ga.length === 1, 5000, 'local user');
    const s2 = await stats(a.url);
    assert.equal(s2.sentUser - s1.sentUser, 1);
    assert.equal(s2.routed - s1.routed, 0, 'no other node holds the user');

    // A user with no socket anywhere: nothing is sent.
    await notify(a.url, { appId: 'multi', users: ['nobody'], data: { k: 3 } });
    const s3 = await stats(a.url);
    assert.equal(s3.routed - s2.routed, 0);
    await sleep(150);
    assert.deepEqual([ga.length, gb.length, gc.length], [1, 1, 1], 'nothing else was delivered');
  });

  it('stops sending to a node once the user left it, and topics still reach every node', async () => {
    const [a, b, c] = nodes as [NodeProcess, NodeProcess, NodeProcess];
    const sb = await connectTo(b.url, 'leave', 'gone');
    const watcherC = await connectTo(c.url, 'leave', 'stays');
    const gc = collect(watcherC);
    await watcherC.emitWithAck('subscribe', 'news');
    const s0 = await stats(a.url);
    await notify(a.url, { appId: 'leave', users: ['gone'], data: { k: 1 } });
    const s1 = await stats(a.url);
    assert.equal(s1.routed - s0.routed, 1);
    sb.close();
    // The departure reaches Redis within a moment; until then a notification may still go to b.
    const deadline = Date.now() + 5000;
    for (;;) {
      const before = await stats(a.url);
      await notify(a.url, { appId: 'leave', users: ['gone'], data: { k: 2 } });
      if ((await stats(a.url)).routed === before.routed) break;
      assert.ok(Date.now() < deadline, 'the user left the online set of node b within 5 s');
      await sleep(50);
    }
    // A topic notification is not user-routed: it goes over the app channel.
    await notify(a.url, { appId: 'leave', eventTopics: ['news'], data: { k: 3 } });
    await until(() => gc.length === 1, 5000, 'topic delivery on node c');
    const s2 = await stats(a.url);
    assert.ok(s2.sentApp > s1.sentApp);
  });
  it('a burst from one node arrives on the others in order, once each, with consecutive offsets, in few Redis calls', async () => {
    const [a, b, c] = nodes as [NodeProcess, NodeProcess, NodeProcess];
    const app = 'burst';
    const clients = { ub: b, uc: c } as const;
    const got: Record<string, Got[]> = {};
    for (const [id, node] of Object.entries(clients)) {
      const s = await connectTo(node.url, app, id);
      got[id] = collect(s);
      await s.emitWithAck('subscribe', 'news');
    }
    const both = [await connectTo(b.url, app, 'both'), await connectTo(c.url, app, 'both')];
    const gotBoth = both.map(collect);
    // Routed (users only), app channel (a topic; users with a topic) and a user on two nodes, interleaved,
    // so the batch script must keep the order each receiver can see across its channels.
    const kinds = [
      { users: ['ub'] },
      { users: ['uc'] },
      { eventTopics: ['news'] },
      { users: ['both'] },
      { users: ['ub'], eventTopics: ['news'] },
      { users: ['ub', 'uc'] },
    ];
    const total = 600;
    const items = Array.from({ length: total }, (_, i) => ({
      appId: app,
      ...kinds[i % kinds.length],
      data: { i },
    }));
    const expect = (client: string, subscribed: boolean) =>
      items
        .filter(
          (x) =>
            ((x as { users?: string[] }).users ?? []).includes(client) ||
            (subscribed && ((x as { eventTopics?: string[] }).eventTopics ?? []).includes('news')),
        )
        .map((x) => x.data.i);
    const s0 = await stats(a.url);
    const res = await fetch(`${a.url}/notify/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ notifications: items }),
    });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as { accepted: number }).accepted, total);
    const want = { ub: expect('ub', true), uc: expect('uc', true), both: expect('both', false) };
    const seq = (list: Got[]) => list.map((g) => (g.data as { i: number }).i);
    await until(
      () =>
        (got.ub?.length ?? 0) >= want.ub.length &&
        (got.uc?.length ?? 0) >= want.uc.length &&
        gotBoth.every((g) => g.length >= want.both.length),
      10_000,
      'every delivery of the burst',
    );
    await sleep(200);
    assert.deepEqual(seq(got.ub ?? []), want.ub, 'ub: every notification once, in order');
    assert.deepEqual(seq(got.uc ?? []), want.uc, 'uc: every notification once, in order');
    for (const g of gotBoth) assert.deepEqual(seq(g), want.both, 'both: once per device, in order');
    // The user stream's offsets follow the order of delivery with no gap.
    const offsets = gotBoth[0]?.map((g) => g.meta.offset) ?? [];
    assert.deepEqual(
      offsets,
      offsets.map((_, k) => (offsets[0] as number) + k),
      'u:both offsets are consecutive',
    );
    const s1 = await stats(a.url);
    assert.equal(s1.sentUser + s1.sentApp - (s0.sentUser + s0.sentApp), total);
    // /notify/batch publishes 100 items per loop turn: a handful of script calls, not 600.
    assert.ok(
      s1.calls - s0.calls <= total / 50,
      `${s1.calls - s0.calls} Redis calls for ${total} notifications`,
    );
  });
});

describe('cluster: routing without history (HISTORY_SIZE=0)', () => {
  const prefix = `${uniqueName('hroute0')}:`;
  const nodes: NodeProcess[] = [];
  before(async () => {
    nodes.push(
      ...(await spawnReadyNodes(
        { REDIS_URL: TEST_REDIS_URL, REDIS_PREFIX: prefix, PRESENCE_TTL: '3s', HISTORY_SIZE: '0' },
        2,
      )),
    );
  });
  after(async () => {
    for (const s of sockets) s.close();
    await Promise.all(nodes.map((n) => n.kill()));
    await cleanRedis(TEST_REDIS_URL, prefix);
  });

  it('routes a notification to the one node holding the user, with no offsets', async () => {
    const [a, b] = nodes as [NodeProcess, NodeProcess];
    const s = await connectTo(b.url, 'plain', 'u1');
    const got = collect(s);
    const s0 = await stats(a.url);
    await notify(a.url, { appId: 'plain', users: ['u1'], data: { k: 1 } });
    await until(() => got.length === 1, 5000, 'delivery on node b');
    const s1 = await stats(a.url);
    assert.equal(s1.routed - s0.routed, 1);
    assert.equal(s1.sentApp - s0.sentApp, 0);
    assert.equal(got[0]?.meta.offset, undefined);
  });
});
