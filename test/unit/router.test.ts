import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Frame } from '../../src/router/frame.js';
import { type Conn, metaFor, type Notification, ONLINE_TOPIC, Router } from '../../src/router/index.js';
import { FIRST_STREAM, positionIn, setPosition } from '../../src/router/types.js';

/** A socket as the router sees it, recording what is written to it. */
class FakeConn implements Conn {
  readonly topics = new Set<string>();
  readonly watches = new Set<string>();
  readonly frames: Frame[] = [];
  open = true;
  constructor(
    readonly id: string,
    readonly appId: string,
    readonly clientId: string,
    readonly deviceId: string | undefined = undefined,
  ) {}
  write(frame: Frame): boolean {
    if (!this.open) return false;
    this.frames.push(frame);
    return true;
  }
  /** The `dataUpdate` events written, decoded from the Socket.IO packets. */
  events(): { data: unknown; meta: { id?: string; ts: number; topic?: string } }[] {
    return this.frames.map((f) => {
      const prefix = `2/${this.appId},`;
      assert.ok(f.packet.startsWith(prefix), f.packet);
      const [event, data, meta] = JSON.parse(f.packet.slice(prefix.length)) as [string, unknown, never];
      assert.equal(event, 'dataUpdate');
      return { data, meta };
    });
  }
}

let seq = 0;
function note(appId: string, target: Partial<Notification>, data: unknown = { n: ++seq }): Notification {
  return {
    v: 1,
    id: `id-${++seq}`,
    appId,
    ts: 1_700_000_000_000 + seq,
    data: JSON.stringify(data),
    ...target,
  };
}

function setup() {
  const changes: { appId: string; topic: string }[] = [];
  const router = new Router({
    onTopicChange: (c) => changes.push({ appId: c.appId, topic: c.topic }),
  });
  const alicePhone = new FakeConn('s1', 'app', 'alice', 'phone');
  const aliceWeb = new FakeConn('s2', 'app', 'alice', 'web');
  const bob = new FakeConn('s3', 'app', 'bob', 'bob-phone');
  const anon = new FakeConn('s4', 'app', 'anon:s4');
  const other = new FakeConn('s5', 'other-app', 'alice', 'phone');
  for (const c of [alicePhone, aliceWeb, bob, anon, other]) router.add(c);
  router.subscribe(alicePhone, ['news', 'order:1']);
  router.subscribe(aliceWeb, ['news']);
  router.subscribe(bob, ['order:2']);
  router.subscribe(anon, ['news']);
  router.subscribe(other, ['news', 'order:1']);
  const all = { alicePhone, aliceWeb, bob, anon, other };
  const counts = () => Object.fromEntries(Object.entries(all).map(([k, c]) => [k, c.frames.length]));
  const reset = () => {
    for (const c of Object.values(all)) c.frames.length = 0;
  };
  return { router, changes, counts, reset, ...all };
}

describe('Router.deliver', () => {
  it('users: every socket of the user in that app only', () => {
    const r = setup();
    assert.equal(r.router.deliver(note('app', { users: ['alice'] })), 2);
    assert.deepEqual(r.counts(), { alicePhone: 1, aliceWeb: 1, bob: 0, anon: 0, other: 0 });
    assert.equal(r.alicePhone.events()[0]?.meta.topic, undefined);
  });

  it('devices: only that device', () => {
    const r = setup();
    assert.equal(r.router.deliver(note('app', { devices: ['web', 'bob-phone', 'nope'] })), 2);
    assert.deepEqual(r.counts(), { alicePhone: 0, aliceWeb: 1, bob: 1, anon: 0, other: 0 });
  });

  it('topics: every subscriber, with meta.topic', () => {
    const r = setup();
    const n = note('app', { topics: ['news'] }, { hello: 'world' });
    assert.equal(r.router.deliver(n), 3);
    assert.deepEqual(r.counts(), { alicePhone: 1, aliceWeb: 1, bob: 0, anon: 1, other: 0 });
    const [e] = r.anon.events();
    assert.deepEqual(e?.data, { hello: 'world' });
    assert.equal(e?.meta.id, n.id);
    assert.equal(e?.meta.ts, n.ts);
    assert.equal(e?.meta.topic, 'news');
  });

  it('broadcast: every socket of the app once', () => {
    const r = setup();
    assert.equal(r.router.deliver(note('app', { broadcast: true, users: ['alice'], topics: ['news'] })), 4);
    assert.deepEqual(r.counts(), { alicePhone: 1, aliceWeb: 1, bob: 1, anon: 1, other: 0 });
  });

  it('union: each socket once however many targets match it; topic matches carry meta.topic', () => {
    const r = setup();
    const n = note('app', {
      users: ['alice', 'alice'],
      devices: ['phone', 'bob-phone'],
      topics: ['order:1', 'news', 'order:1'],
    });
    assert.equal(r.router.deliver(n), 4);
    assert.deepEqual(r.counts(), { alicePhone: 1, aliceWeb: 1, bob: 1, anon: 1, other: 0 });
    // alicePhone is subscribed to both topics: the first listed one it holds.
    assert.equal(r.alicePhone.events()[0]?.meta.topic, 'order:1');
    assert.equal(r.aliceWeb.events()[0]?.meta.topic, 'news');
    assert.equal(r.anon.events()[0]?.meta.topic, 'news');
    assert.equal(r.bob.events()[0]?.meta.topic, undefined);
    for (const c of [r.alicePhone, r.aliceWeb, r.bob, r.anon]) assert.equal(c.events()[0]?.meta.id, n.id);
  });

  it('several users and several devices without topics: once each', () => {
    const r = setup();
    assert.equal(r.router.deliver(note('app', { users: ['alice', 'bob'], devices: ['phone', 'web'] })), 3);
    assert.deepEqual(r.counts(), { alicePhone: 1, aliceWeb: 1, bob: 1, anon: 0, other: 0 });
  });

  it('encodes once and shares the frame among sockets with the same meta', () => {
    const r = setup();
    r.router.deliver(note('app', { topics: ['news'] }));
    assert.equal(r.alicePhone.frames[0], r.aliceWeb.frames[0]);
    assert.equal(r.alicePhone.frames[0], r.anon.frames[0]);
  });

  it('counts only sockets actually written, and nothing for unknown apps or targets', () => {
    const r = setup();
    r.aliceWeb.open = false;
    assert.equal(r.router.deliver(note('app', { users: ['alice'] })), 1);
    assert.equal(r.router.deliver(note('no-such-app', { broadcast: true })), 0);
    assert.equal(r.router.deliver(note('app', { topics: ['nobody'] })), 0);
    assert.equal(r.router.deliver(note('app', { users: ['nobody'] })), 0);
    assert.equal(r.router.deliver(note('app', { devices: ['nothing'] })), 0);
    assert.equal(
      r.router.deliver(note('app', { users: ['ghost'], devices: ['ghost'], topics: ['ghost'] })),
      0,
    );
  });

  it('a removed socket gets nothing more', () => {
    const r = setup();
    r.router.remove(r.alicePhone);
    assert.equal(
      r.router.deliver(note('app', { users: ['alice'], devices: ['phone'], topics: ['order:1'] })),
      1,
    );
    assert.equal(r.alicePhone.frames.length, 0);
    assert.equal(r.aliceWeb.frames.length, 1);
  });
});

describe('stream positions (setPosition, positionIn)', () => {
  it('the first stream read through its shortcut and any other through pos give the same positions', () => {
    const n = note('app', { users: ['alice'], topics: ['news'] });
    setPosition(n, 't:news', [7, 'e1']);
    setPosition(n, 'u:alice', [3, 'e2']);
    // The router makes its stream names up anew: equal text, another string.
    const made = (prefix: string, name: string) => `${prefix}:${name}`;
    assert.deepEqual(positionIn(n, made('t', 'news')), [7, 'e1']);
    assert.deepEqual(positionIn(n, made('u', 'alice')), [3, 'e2']);
    assert.equal(positionIn(n, 'd:phone'), undefined);
    assert.equal(n[FIRST_STREAM], 't:news');
    // The shortcut never travels: what another node receives has only `pos`, and reads the same.
    const sent = JSON.parse(JSON.stringify(n)) as Notification;
    assert.equal(sent[FIRST_STREAM], undefined);
    assert.deepEqual(positionIn(sent, 't:news'), [7, 'e1']);
    assert.deepEqual(positionIn(sent, 'u:alice'), [3, 'e2']);
    assert.deepEqual(metaFor(sent, 'u:alice', undefined), metaFor(n, made('u', 'alice'), undefined));
  });

  it('a stream given a new position (a notification appended again) answers the new one', () => {
    const n = note('app', { users: ['bob'] });
    setPosition(n, 'u:bob', [1, 'e1']);
    setPosition(n, 'u:bob', [2, 'e2']);
    assert.deepEqual(positionIn(n, 'u:bob'), [2, 'e2']);
    assert.deepEqual(n.pos?.['u:bob'], [2, 'e2']);
    const meta = metaFor(n, 'u:bob', undefined);
    assert.equal(meta.offset, 2);
    assert.equal(meta.epoch, 'e2');
    assert.equal(meta.stream, 'u:bob');
  });

  it('a notification without positions has none, and its meta names no stream', () => {
    const n = note('app', { users: ['bob'] });
    assert.equal(positionIn(n, 'u:bob'), undefined);
    const meta = metaFor(n, 'u:bob', undefined);
    assert.equal(meta.stream, undefined);
    assert.equal(meta.offset, undefined);
  });
});

describe('Router.follows (which history streams a single node keeps)', () => {
  it('says whether a socket follows a topic, user, device or broadcast stream, per app', () => {
    const r = setup();
    const yes = ['t:news', 't:order:1', 'u:alice', 'u:anon:s4', 'd:phone', 'd:bob-phone', 'b'];
    for (const s of yes) assert.equal(r.router.follows('app', s), true, s);
    const no = ['t:order:3', 'u:carol', 'd:tablet', 'x:news', 't:', ''];
    for (const s of no) assert.equal(r.router.follows('app', s), false, s);
    assert.equal(r.router.follows('other-app', 't:order:2'), false);
    assert.equal(r.router.follows('no-such-app', 'b'), false);
    // Leaving ends it: bob's topic, user and device.
    r.router.remove(r.bob);
    for (const s of ['t:order:2', 'u:bob', 'd:bob-phone']) assert.equal(r.router.follows('app', s), false, s);
    r.router.unsubscribe(r.alicePhone, ['order:1']);
    assert.equal(r.router.follows('app', 't:order:1'), false);
  });
});

describe('Router subscriptions and counts', () => {
  it('counts distinct client ids and connections per topic and app', () => {
    const r = setup();
    assert.deepEqual(r.router.localCount('app', 'news'), { count: 2, connections: 3 });
    assert.deepEqual(r.router.localCount('other-app', 'news'), { count: 1, connections: 1 });
    assert.deepEqual(r.router.localCount('app', 'order:1'), { count: 1, connections: 1 });
    assert.deepEqual(r.router.localCount('app', 'nothing'), { count: 0, connections: 0 });
    assert.deepEqual(r.router.localCount('no-app', 'news'), { count: 0, connections: 0 });
    assert.deepEqual([...r.router.localClients('app', 'news')].sort(), [
      ['alice', 2],
      ['anon:s4', 1],
    ]);
  });

  it('subscribe and unsubscribe are idempotent and report what changed', () => {
    const r = setup();
    r.changes.length = 0;
    assert.deepEqual(r.router.subscribe(r.bob, ['news', 'order:2', 'news']), ['news']);
    assert.deepEqual(r.router.localCount('app', 'news'), { count: 3, connections: 4 });
    assert.deepEqual(r.changes, [{ appId: 'app', topic: 'news' }]);
    assert.deepEqual(r.router.unsubscribe(r.bob, ['news', 'never']), ['news']);
    assert.deepEqual(r.router.unsubscribe(r.bob, ['news']), []);
    assert.deepEqual(r.router.localCount('app', 'news'), { count: 2, connections: 3 });
    assert.deepEqual(r.changes, [
      { appId: 'app', topic: 'news' },
      { appId: 'app', topic: 'news' },
    ]);
  });

  it('one user on several sockets: the count drops only when the last one leaves', () => {
    const r = setup();
    r.router.unsubscribe(r.alicePhone, ['news']);
    assert.deepEqual(r.router.localCount('app', 'news'), { count: 2, connections: 2 });
    r.router.remove(r.aliceWeb);
    assert.deepEqual(r.router.localCount('app', 'news'), { count: 1, connections: 1 });
    r.router.remove(r.anon);
    assert.deepEqual(r.router.localCount('app', 'news'), { count: 0, connections: 0 });
  });

  it('a topic, user or device going from one socket to several and back keeps counts and delivery exact', () => {
    // One socket is held without a Set (memory per connection); these are the transitions around it.
    const router = new Router();
    const a1 = new FakeConn('a1', 'g', 'ann', 'dev');
    const a2 = new FakeConn('a2', 'g', 'ann', 'dev');
    const b1 = new FakeConn('b1', 'g', 'ben', 'dev');
    const tally = (topic: string) =>
      Object.fromEntries(
        [...router.allTopics()].filter((t) => t.topic === topic).flatMap((t) => [...t.clients]),
      );
    router.add(a1);
    router.subscribe(a1, ['t']);
    assert.deepEqual(router.localCount('g', 't'), { count: 1, connections: 1 });
    assert.deepEqual([...router.localClients('g', 't')], [['ann', 1]]);
    assert.deepEqual(tally('t'), { ann: 1 });
    assert.deepEqual(router.connsOfDevice('g', 'dev'), [a1]);
    router.add(a2);
    router.add(b1);
    router.subscribe(a2, ['t']);
    router.subscribe(b1, ['t']);
    assert.deepEqual(router.localCount('g', 't'), { count: 2, connections: 3 });
    assert.deepEqual(tally('t'), { ann: 2, ben: 1 });
    assert.deepEqual(tally(ONLINE_TOPIC), { ann: 2, ben: 1 });
    // The most recently connected last.
    assert.deepEqual(router.connsOfDevice('g', 'dev'), [a1, a2, b1]);
    assert.equal(router.deliver(note('g', { topics: ['t'] })), 3);
    assert.equal(router.deliver(note('g', { users: ['ann'] })), 2);
    assert.equal(router.deliver(note('g', { devices: ['dev'], users: ['ben'] })), 3);
    // Back to one socket of another client than the first.
    router.unsubscribe(a1, ['t']);
    router.remove(a2);
    assert.deepEqual(router.localCount('g', 't'), { count: 1, connections: 1 });
    assert.deepEqual([...router.localClients('g', 't')], [['ben', 1]]);
    assert.deepEqual(router.connsOfDevice('g', 'dev'), [a1, b1]);
    assert.equal(router.deliver(note('g', { topics: ['t'] })), 1);
    assert.equal(router.deliver(note('g', { users: ['ann'] })), 1);
    // And up again: the tally starts from the remaining socket's client.
    router.subscribe(a1, ['t']);
    assert.deepEqual(router.localCount('g', 't'), { count: 2, connections: 2 });
    assert.deepEqual(tally('t'), { ben: 1, ann: 1 });
    router.remove(b1);
    router.remove(a1);
    assert.deepEqual(router.localCount('g', 't'), { count: 0, connections: 0 });
    assert.deepEqual(router.connsOfDevice('g', 'dev'), []);
    assert.equal(router.hasUser('g', 'ann'), false);
    assert.equal(router.connectionCount(), 0);
    assert.deepEqual(
      [a1, a2, b1].map((c) => c.frames.length),
      [4, 3, 3],
    );
  });

  it('remove drops every subscription and watch, reports the topics, and forgets empty apps', () => {
    const r = setup();
    r.router.watch(r.other, ['news']);
    r.changes.length = 0;
    r.router.remove(r.other);
    assert.deepEqual(
      r.changes
        .map((c) => c.topic)
        .filter((t) => t !== ONLINE_TOPIC)
        .sort(),
      ['news', 'order:1'],
    );
    assert.equal(r.router.watchersOf('other-app', 'news').size, 0);
    assert.deepEqual(r.router.localCount('other-app', 'news'), { count: 0, connections: 0 });
    assert.equal(
      r.router.stats().some((s) => s.appId === 'other-app'),
      false,
    );
    // Removing twice is harmless.
    r.router.remove(r.other);
    assert.equal(r.router.connectionCount(), 4);
  });

  it('a socket that left (or never came) subscribes and watches nothing, and its app stays forgotten', () => {
    const router = new Router();
    const gone = new FakeConn('g1', 'gone-app', 'ghost');
    router.add(gone);
    router.remove(gone);
    // An event of the socket that ran after its removal (Socket.IO runs listeners on the next tick).
    assert.deepEqual(router.subscribe(gone, ['t']), []);
    assert.deepEqual(router.watch(gone, ['t']), []);
    assert.deepEqual(router.localCount('gone-app', 't'), { count: 0, connections: 0 });
    assert.equal(router.watchersOf('gone-app', 't').size, 0);
    assert.deepEqual(router.stats(), []);
    assert.equal(router.follows('gone-app', 't:t'), false);
  });

  it('watch / unwatch track watchers per app and topic', () => {
    const r = setup();
    assert.deepEqual(r.router.watch(r.bob, ['news', 'x', 'news']), ['news', 'x']);
    assert.deepEqual(r.router.watch(r.bob, ['news']), []);
    assert.deepEqual([...r.router.watchersOf('app', 'news')], [r.bob]);
    assert.equal(r.router.watchersOf('other-app', 'news').size, 0);
    assert.deepEqual(r.router.unwatch(r.bob, ['news', 'y']), ['news']);
    assert.equal(r.router.watchersOf('app', 'news').size, 0);
    // Watching does not subscribe.
    assert.deepEqual(r.router.localCount('app', 'x'), { count: 0, connections: 0 });
  });

  it('stats, connectionCount and allConns', () => {
    const r = setup();
    const stats = Object.fromEntries(r.router.stats().map((s) => [s.appId, s]));
    assert.deepEqual(stats.app, { appId: 'app', connections: 4, subscriptions: 5, topics: 3 });
    assert.deepEqual(stats['other-app'], { appId: 'other-app', connections: 1, subscriptions: 2, topics: 2 });
    assert.equal(r.router.connectionCount(), 5);
    assert.equal([...r.router.allConns()].length, 5);
  });
  it('a large fan-out is written in slices across turns, once per socket, in publish order', async () => {
    const router = new Router();
    const conns: FakeConn[] = [];
    for (let i = 0; i < 6000; i++) {
      const c = new FakeConn(`big-${i}`, 'big', `user-${i}`);
      router.add(c);
      router.subscribe(c, ['wide']);
      conns.push(c);
    }
    const first = note('big', { topics: ['wide'] }, { k: 1 });
    const second = note('big', { users: ['user-5999'] }, { k: 2 });
    const third = note('big', { topics: ['wide'] }, { k: 3 });
    // Writes that take a little time, so that the sweep needs several turns (the outcome below must
    // be the same however many it takes).
    for (const c of conns) {
      const write = c.write.bind(c);
      c.write = (f: Frame) => {
        const until = performance.now() + 0.002;
        while (performance.now() < until);
        return write(f);
      };
    }
    // Addressed now; written over the next turns.
    assert.equal(router.deliver(first), 6000);
    // A socket that subscribes after the publish does not receive it.
    const late = new FakeConn('late', 'big', 'late-user');
    router.add(late);
    router.subscribe(late, ['wide']);
    assert.equal(router.deliver(second), 1);
    assert.equal(router.deliver(third), 6001);
    const deadline = Date.now() + 10_000;
    while (conns.some((c) => c.frames.length < (c.clientId === 'user-5999' ? 3 : 2)) && Date.now() < deadline)
      await new Promise((r) => setImmediate(r));
    for (const c of conns) {
      const ks = c.events().map((e) => (e.data as { k: number }).k);
      assert.deepEqual(ks, c.clientId === 'user-5999' ? [1, 2, 3] : [1, 3], c.id);
    }
    assert.deepEqual(
      late.events().map((e) => (e.data as { k: number }).k),
      [3],
    );
  });
});
