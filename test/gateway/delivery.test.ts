import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Manager, type Socket } from 'socket.io-client';
import {
  call,
  closeAll,
  collect,
  connect,
  fence,
  post,
  startTestHerald,
  type TestHerald,
  until,
} from '../helpers.js';

type Got = ReturnType<typeof collect>;

let herald: TestHerald;
before(async () => {
  herald = await startTestHerald();
});
after(async () => {
  await herald.cleanup();
});

describe('gateway: targeting modes of POST /notify and once-only delivery', () => {
  const APP = 'deliver-app';
  // alice on three devices, bob on one, carol (no device id), an anonymous watcher.
  let alicePhone: Socket;
  let aliceWeb: Socket;
  let aliceTablet: Socket;
  let bob: Socket;
  let carol: Socket;
  let anon: Socket;
  const got: Record<string, Got> = {};
  let all: Socket[];

  before(async () => {
    alicePhone = await connect(herald, APP, { clientId: 'alice', deviceId: 'alice-phone' });
    aliceWeb = await connect(herald, APP, { clientId: 'alice', deviceId: 'alice-web' });
    aliceTablet = await connect(herald, APP, { clientId: 'alice', deviceId: 'alice-tablet' });
    bob = await connect(herald, APP, { clientId: 'bob', deviceId: 'bob-phone' });
    carol = await connect(herald, APP, { clientId: 'carol' });
    anon = await connect(herald, APP);
    all = [alicePhone, aliceWeb, aliceTablet, bob, carol, anon];
    const names = ['alicePhone', 'aliceWeb', 'aliceTablet', 'bob', 'carol', 'anon'];
    all.forEach((s, i) => {
      got[names[i] as string] = collect(s);
    });
    await call(alicePhone, 'subscribe', ['news', 'order:1']);
    await call(aliceWeb, 'subscribe', ['news']);
    await call(bob, 'subscribe', ['news', 'order:2']);
    await call(anon, 'subscribe', ['news', 'order:1']);
  });
  after(() => {
    closeAll(...all);
  });

  /** Sends one notification, waits until every socket has had the chance to receive it, returns who got what. */
  async function send(body: Record<string, unknown>): Promise<{ id: string; who: Record<string, Got> }> {
    for (const g of Object.values(got)) g.length = 0;
    const res = await post(herald, '/notify', { appId: APP, ...body });
    assert.equal(res.status, 202, res.text);
    await fence(herald, APP, ...all);
    return { id: res.body.id as string, who: got };
  }

  function receivers(who: Record<string, Got>): string[] {
    return Object.entries(who)
      .filter(([, g]) => g.length > 0)
      .map(([name]) => name)
      .sort();
  }

  it('users: every socket of each user, once each, without meta.topic', async () => {
    const { id, who } = await send({ users: ['alice'], data: { to: 'alice' } });
    assert.deepEqual(receivers(who), ['alicePhone', 'aliceTablet', 'aliceWeb']);
    for (const name of ['alicePhone', 'aliceTablet', 'aliceWeb']) {
      assert.equal(who[name]?.length, 1, name);
      assert.deepEqual(who[name]?.[0]?.data, { to: 'alice' });
      assert.equal(who[name]?.[0]?.meta.id, id);
      assert.equal('topic' in (who[name]?.[0]?.meta ?? {}), false);
    }
    const two = await send({ users: ['alice', 'bob', 'nobody', 'bob'], data: 2 });
    assert.deepEqual(receivers(two.who), ['alicePhone', 'aliceTablet', 'aliceWeb', 'bob']);
    for (const g of Object.values(two.who)) assert.ok(g.length <= 1);
  });

  it('devices: only those sockets', async () => {
    const { who } = await send({ devices: ['alice-web'], data: { to: 'web' } });
    assert.deepEqual(receivers(who), ['aliceWeb']);
    const two = await send({ devices: ['alice-tablet', 'bob-phone', 'unknown-device'], data: 'x' });
    assert.deepEqual(receivers(two.who), ['aliceTablet', 'bob']);
    assert.equal(two.who.bob?.[0]?.data, 'x');
  });

  it('eventTopics: every subscriber (anonymous ones too), with meta.topic', async () => {
    const { who } = await send({ eventTopics: ['order:1'], data: { o: 1 } });
    assert.deepEqual(receivers(who), ['alicePhone', 'anon']);
    assert.equal(who.alicePhone?.[0]?.meta.topic, 'order:1');
    assert.equal(who.anon?.[0]?.meta.topic, 'order:1');
    const many = await send({ eventTopics: ['order:1', 'order:2', 'news'], data: { o: 'all' } });
    assert.deepEqual(receivers(many.who), ['alicePhone', 'aliceWeb', 'anon', 'bob']);
    for (const g of Object.values(many.who)) assert.ok(g.length <= 1, 'subscribed to several: once');
    // meta.topic is a topic of the notification the socket is subscribed to.
    assert.ok(['order:1', 'news'].includes(many.who.alicePhone?.[0]?.meta.topic as string));
    assert.equal(many.who.aliceWeb?.[0]?.meta.topic, 'news');
    assert.ok(['order:2', 'news'].includes(many.who.bob?.[0]?.meta.topic as string));
    const none = await send({ eventTopics: ['nobody:listens'], data: {} });
    assert.deepEqual(receivers(none.who), []);
  });

  it('broadcast: every socket of the app once, even when also targeted', async () => {
    const { who } = await send({ broadcast: true, data: { all: true } });
    assert.deepEqual(receivers(who), ['alicePhone', 'aliceTablet', 'aliceWeb', 'anon', 'bob', 'carol']);
    const also = await send({ broadcast: true, users: ['alice'], eventTopics: ['news'], data: { all: 2 } });
    for (const [name, g] of Object.entries(also.who)) assert.equal(g.length, 1, name);
  });

  it('union: a socket matched by user + device + topic receives exactly one dataUpdate, with meta.topic', async () => {
    const res = await send({
      users: ['alice'],
      devices: ['alice-phone', 'bob-phone'],
      eventTopics: ['order:1'],
      data: { type: 'payment', status: 'success' },
    });
    assert.deepEqual(receivers(res.who), ['alicePhone', 'aliceTablet', 'aliceWeb', 'anon', 'bob']);
    for (const [name, g] of Object.entries(res.who)) assert.ok(g.length <= 1, `${name} got ${g.length}`);
    // Matched through the topic (and user and device): meta.topic tells which topic.
    assert.equal(res.who.alicePhone?.[0]?.meta.topic, 'order:1');
    assert.equal(res.who.anon?.[0]?.meta.topic, 'order:1');
    // Matched only as a user or device: no topic.
    assert.equal(res.who.aliceWeb?.[0]?.meta.topic, undefined);
    assert.equal(res.who.bob?.[0]?.meta.topic, undefined);
    // Every recipient has the same id and the data exactly as published.
    const ids = new Set(Object.values(res.who).flatMap((g) => g.map((x) => x.meta.id)));
    assert.deepEqual([...ids], [res.id]);
    for (const g of Object.values(res.who))
      for (const x of g) assert.deepEqual(x.data, { type: 'payment', status: 'success' });
  });

  it('union: user + device of the same socket (no topic) is still one delivery', async () => {
    const res = await send({ users: ['bob'], devices: ['bob-phone'], data: 1 });
    assert.deepEqual(receivers(res.who), ['bob']);
    assert.equal(res.who.bob?.length, 1);
  });

  it('reports delivered sockets and counts them in herald_deliveries_total', async () => {
    const before = await deliveries();
    const r = await post(herald, '/notify', { appId: APP, users: ['alice'], eventTopics: ['news'], data: 1 });
    assert.equal(r.status, 202);
    assert.equal(r.body.delivered, 5); // 3 of alice, bob and anon via news
    await fence(herald, APP, ...all);
    // The fence itself reaches all six sockets.
    assert.equal((await deliveries()) - before, 5 + 6);
  });

  async function deliveries(): Promise<number> {
    const text = await (await fetch(`${herald.url()}/metrics`)).text();
    const m = new RegExp(`^herald_deliveries_total\\{app="${APP}"\\} (\\d+)`, 'm').exec(text);
    return m ? Number(m[1]) : 0;
  }

  it('data is delivered exactly as published: any JSON value, unicode, nested', async () => {
    const values: unknown[] = [
      { nested: { deep: [1, 2, { x: null }] }, text: '支付成功 ✓', emoji: '🎉', n: 99.99, neg: -1, b: false },
      'a string',
      0,
      null,
      [1, 'two'],
      { quote: '"\\</script>' },
    ];
    for (const data of values) {
      const { who } = await send({ devices: ['bob-phone'], data });
      assert.deepEqual(who.bob?.[0]?.data, data);
    }
  });

  it('a disconnected socket receives nothing and is no longer counted as delivered', async () => {
    const extra = await connect(herald, APP, { clientId: 'dave', deviceId: 'dave-1' });
    const r1 = await post(herald, '/notify', { appId: APP, users: ['dave'], data: 1 });
    assert.equal(r1.body.delivered, 1);
    extra.close();
    const start = Date.now();
    let delivered = 1;
    while (delivered !== 0 && Date.now() - start < 3000) {
      const r = await post(herald, '/notify', { appId: APP, users: ['dave'], data: 1 });
      delivered = r.body.delivered as number;
    }
    assert.equal(delivered, 0);
  });
});

describe('gateway: apps are isolated (open mode)', () => {
  it('same topic, same client id and device id in two apps: each gets only its own app', async () => {
    const a1 = await connect(herald, 'app1', { clientId: 'user1', deviceId: 'dev1' });
    const a2 = await connect(herald, 'app2', { clientId: 'user1', deviceId: 'dev1' });
    const g1 = collect(a1);
    const g2 = collect(a2);
    await call(a1, 'subscribe', ['common:event']);
    await call(a2, 'subscribe', ['common:event']);
    for (const target of [
      { eventTopics: ['common:event'] },
      { users: ['user1'] },
      { devices: ['dev1'] },
      { broadcast: true },
    ]) {
      const r = await post(herald, '/notify', { appId: 'app1', ...target, data: { for: 'app1' } });
      assert.equal(r.status, 202);
      assert.equal(r.body.delivered, 1, JSON.stringify(target));
    }
    await fence(herald, 'app1', a1);
    await fence(herald, 'app2', a2);
    assert.equal(g1.length, 4);
    assert.deepEqual(g2, []);
    closeAll(a1, a2);
  });

  it('counts are per app', async () => {
    const s1 = await connect(herald, 'crm-system', { clientId: 'sales-rep-001' });
    const s2 = await connect(herald, 'erp-system', { clientId: 'sales-rep-001' });
    const s3 = await connect(herald, 'erp-system', { clientId: 'other' });
    await call(s1, 'subscribe', 'shared:topic');
    await call(s2, 'subscribe', 'shared:topic');
    await call(s3, 'subscribe', 'shared:topic');
    const w1 = await connect(herald, 'crm-system', { clientId: 'w' });
    const w2 = await connect(herald, 'erp-system', { clientId: 'w' });
    const c1 = await call<{ counts: unknown }>(w1, 'subscribeCount', 'shared:topic');
    const c2 = await call<{ counts: unknown }>(w2, 'subscribeCount', 'shared:topic');
    assert.deepEqual(c1.counts, { 'shared:topic': { count: 1, connections: 1 } });
    assert.deepEqual(c2.counts, { 'shared:topic': { count: 2, connections: 2 } });
    closeAll(s1, s2, s3, w1, w2);
  });

  it('an app whose last socket left works again for new sockets (its namespace is re-created)', async () => {
    const first = await connect(herald, 'short-lived', { clientId: 'x' });
    first.close();
    await until(() => !herald.router.stats().some((s) => s.appId === 'short-lived'), 3000, 'app forgotten');
    const again = await connect(herald, 'short-lived', { clientId: 'x' });
    const got = collect(again);
    assert.deepEqual(await call(again, 'subscribe', 't'), { ok: true, topics: ['t'] });
    const r = await post(herald, '/notify', {
      appId: 'short-lived',
      users: ['x'],
      eventTopics: ['t'],
      data: 1,
    });
    assert.equal(r.body.delivered, 1);
    await until(() => got.length === 1, 3000, 'delivery');
    again.close();
  });

  it('one client multiplexing two apps over one connection still gets each app on its own socket', async () => {
    const manager = new Manager(herald.url(), {
      transports: ['websocket'],
      reconnection: false,
      extraHeaders: { 'x-client-id': 'mux-user' },
    });
    const m1 = manager.socket('/mux-a');
    const m2 = manager.socket('/mux-b');
    await Promise.all([m1, m2].map((s) => new Promise((r) => s.once('connect', () => r(undefined)))));
    const g1 = collect(m1);
    const g2 = collect(m2);
    await post(herald, '/notify', { appId: 'mux-b', users: ['mux-user'], data: { app: 'b' } });
    await fence(herald, 'mux-a', m1);
    await fence(herald, 'mux-b', m2);
    assert.deepEqual(g1, []);
    assert.deepEqual(
      g2.map((g) => g.data),
      [{ app: 'b' }],
    );
    m1.close();
    m2.close();
  });
});
