import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { io, type Socket } from 'socket.io-client';
import {
  call,
  closeAll,
  collect,
  collectErrors,
  connect,
  connectWith,
  fence,
  next,
  post,
  refused,
  startTestHerald,
  type TestHerald,
  until,
} from '../helpers.js';

const APP = 'proto-app';
const CAP = 150;

type Ack = { ok: boolean; topics?: string[]; counts?: Record<string, unknown>; error?: { code: string } };

describe('gateway: client events, topic rules and identity', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({ maxTopicsPerConnection: CAP });
  });
  after(async () => {
    await herald.cleanup();
  });

  describe('subscribe / unsubscribe', () => {
    it('subscribe with ack: a string or an array, de-duplicated, then receives topic notifications', async () => {
      const s = await connect(herald, APP, { clientId: 'sub-1', deviceId: 'sub-1-d' });
      const got = collect(s);
      assert.deepEqual(await call(s, 'subscribe', 'a:1'), { ok: true, topics: ['a:1'] });
      assert.deepEqual(await call(s, 'subscribe', ['a:2', 'a:3', 'a:2']), {
        ok: true,
        topics: ['a:2', 'a:3'],
      });
      const r = await post(herald, '/notify', { appId: APP, eventTopics: ['a:3'], data: { n: 3 } });
      assert.equal(r.status, 202);
      await until(() => got.length === 1, 3000, 'a:3 notification');
      assert.deepEqual(got[0]?.data, { n: 3 });
      assert.equal(got[0]?.meta.topic, 'a:3');
      assert.equal(got[0]?.meta.id, r.body.id);
      assert.equal(got[0]?.meta.ts, r.body.ts);
      s.close();
    });

    it('subscribe without ack works (as the seed clients emit it)', async () => {
      const s = await connect(herald, APP, { clientId: 'sub-2' });
      const got = collect(s);
      const errors = collectErrors(s);
      s.emit('subscribe', ['noack:1', 'noack:2']);
      // The server handles events in order: once an acked call returns, the earlier emit was applied.
      await call(s, 'subscribe', 'noack:other');
      await post(herald, '/notify', { appId: APP, eventTopics: ['noack:2'], data: { x: 1 } });
      await until(() => got.length === 1, 3000, 'noack:2 notification');
      assert.equal(got[0]?.meta.topic, 'noack:2');
      assert.deepEqual(errors, []);
      s.close();
    });

    it('unsubscribe with ack stops delivery of that topic only', async () => {
      const s = await connect(herald, APP, { clientId: 'unsub-1' });
      const got = collect(s);
      await call(s, 'subscribe', ['u:1', 'u:2']);
      assert.deepEqual(await call(s, 'unsubscribe', 'u:1'), { ok: true, topics: ['u:1'] });
      await post(herald, '/notify', { appId: APP, eventTopics: ['u:1'], data: { t: 'u:1' } });
      await post(herald, '/notify', { appId: APP, eventTopics: ['u:2'], data: { t: 'u:2' } });
      await fence(herald, APP, s);
      assert.deepEqual(
        got.map((g) => g.data),
        [{ t: 'u:2' }],
      );
      s.close();
    });

    it('unsubscribe without ack, and of a topic never subscribed, is harmless', async () => {
      const s = await connect(herald, APP, { clientId: 'unsub-2' });
      const got = collect(s);
      const errors = collectErrors(s);
      await call(s, 'subscribe', ['v:1', 'v:2']);
      s.emit('unsubscribe', ['v:1', 'never:subscribed']);
      assert.deepEqual(await call(s, 'unsubscribe', 'never:subscribed:2'), {
        ok: true,
        topics: ['never:subscribed:2'],
      });
      await post(herald, '/notify', { appId: APP, eventTopics: ['v:1', 'v:2'], data: { n: 1 } });
      await fence(herald, APP, s);
      assert.equal(got.length, 1);
      assert.equal(got[0]?.meta.topic, 'v:2');
      assert.deepEqual(errors, []);
      s.close();
    });
  });

  describe('subscribeCount / unsubscribeCount', () => {
    it('subscribeCount with ack: ack has counts, and the current value arrives at once as dataUpdate', async () => {
      const a = await connect(herald, APP, { clientId: 'cnt-a' });
      await call(a, 'subscribe', 'room:c1');
      const w = await connect(herald, APP, { clientId: 'cnt-w' });
      const got = collect(w);
      const ack = await call<Ack>(w, 'subscribeCount', ['room:c1', 'room:empty']);
      assert.deepEqual(ack, {
        ok: true,
        topics: ['room:c1', 'room:empty'],
        counts: { 'room:c1': { count: 1, connections: 1 }, 'room:empty': { count: 0, connections: 0 } },
      });
      await until(() => got.length === 2, 3000, 'initial counts');
      assert.deepEqual(got[0]?.data, { type: 'count', topic: 'room:c1', count: 1, connections: 1 });
      assert.equal(got[0]?.meta.topic, 'room:c1');
      assert.equal(typeof got[0]?.meta.ts, 'number');
      assert.deepEqual(got[1]?.data, { type: 'count', topic: 'room:empty', count: 0, connections: 0 });
      closeAll(a, w);
    });

    it('subscribeCount without ack still sends the current value, then changes', async () => {
      const w = await connect(herald, APP, { clientId: 'cnt-w2' });
      const got = collect(w);
      w.emit('subscribeCount', 'room:c2');
      await until(() => got.length === 1, 3000, 'initial count');
      assert.deepEqual(got[0]?.data, { type: 'count', topic: 'room:c2', count: 0, connections: 0 });
      const a = await connect(herald, APP, { clientId: 'cnt-b' });
      await call(a, 'subscribe', 'room:c2');
      await until(() => got.length === 2, 3000, 'count change');
      assert.deepEqual(got[1]?.data, { type: 'count', topic: 'room:c2', count: 1, connections: 1 });
      closeAll(a, w);
    });

    it('unsubscribeCount (with and without ack) stops count updates', async () => {
      const w1 = await connect(herald, APP, { clientId: 'cnt-w3' });
      const w2 = await connect(herald, APP, { clientId: 'cnt-w4' });
      const got1 = collect(w1);
      const got2 = collect(w2);
      await call(w1, 'subscribeCount', 'room:c3');
      await call(w2, 'subscribeCount', 'room:c3');
      assert.deepEqual(await call(w1, 'unsubscribeCount', 'room:c3'), { ok: true, topics: ['room:c3'] });
      w2.emit('unsubscribeCount', ['room:c3']);
      await call(w2, 'subscribe', 'sync'); // the earlier emit has been applied
      const a = await connect(herald, APP, { clientId: 'cnt-c' });
      await call(a, 'subscribe', 'room:c3');
      // A third watcher proves an update was sent after the change.
      const w3 = await connect(herald, APP, { clientId: 'cnt-w5' });
      const got3 = collect(w3);
      await call(w3, 'subscribeCount', 'room:c3');
      await call(a, 'unsubscribe', 'room:c3');
      await until(
        () => got3.some((g) => (g.data as { count: number }).count === 0),
        3000,
        'the third watcher sees the change',
      );
      await fence(herald, APP, w1, w2);
      assert.equal(got1.length, 1, 'only the initial value before unsubscribeCount');
      assert.equal(got2.length, 1, 'only the initial value before unsubscribeCount');
      closeAll(a, w1, w2, w3);
    });
  });

  describe('errors', () => {
    const badArgs: [string, unknown, string][] = [
      ['a topic with a space', 'has space', 'invalid_topic'],
      ['a topic with a tab', 'tab\there', 'invalid_topic'],
      ['a topic with a newline', ['ok', 'new\nline'], 'invalid_topic'],
      ['a topic with a control character', 'nul\u0000x', 'invalid_topic'],
      ['a topic with DEL', 'del\u007f', 'invalid_topic'],
      ['an empty topic', '', 'invalid_topic'],
      ['a topic of 201 characters', 'x'.repeat(201), 'invalid_topic'],
      ['a number', 42, 'invalid_arguments'],
      ['a number in the list', ['ok', 7], 'invalid_topic'],
      ['null', null, 'invalid_arguments'],
      ['an object', { topic: 'x' }, 'invalid_arguments'],
      ['101 topics', Array.from({ length: 101 }, (_, i) => `many:${i}`), 'too_many_topics'],
    ];

    for (const event of ['subscribe', 'unsubscribe', 'subscribeCount', 'unsubscribeCount']) {
      it(`${event}: each invalid argument gets its code in the ack`, async () => {
        const s = await connect(herald, APP, { clientId: `err-${event}` });
        for (const [what, arg, code] of badArgs) {
          const ack = await call<Ack>(s, event, arg);
          assert.equal(ack.ok, false, what);
          assert.equal(ack.error?.code, code, what);
          assert.equal(typeof (ack.error as { message?: unknown }).message, 'string', what);
        }
        const none = await call<Ack>(s, event);
        assert.equal(none.error?.code, 'invalid_arguments', 'no argument at all');
        assert.ok(s.connected);
        s.close();
      });
    }

    it('without an ack, an error arrives as an `error` event naming the event, and the socket stays up', async () => {
      const s = await connect(herald, APP, { clientId: 'err-noack' });
      const got = collect(s);
      const e1 = next<[Record<string, unknown>]>(s, 'error');
      s.emit('subscribe', 'bad topic');
      const [body] = await e1;
      assert.equal(body.code, 'invalid_topic');
      assert.equal(body.event, 'subscribe');
      assert.equal(typeof body.message, 'string');
      const e2 = next<[Record<string, unknown>]>(s, 'error');
      s.emit('subscribeCount', 5);
      assert.equal((await e2)[0].code, 'invalid_arguments');
      assert.equal((await e2)[0].event, 'subscribeCount');
      const e3 = next<[Record<string, unknown>]>(s, 'error');
      s.emit(
        'unsubscribe',
        Array.from({ length: 101 }, (_, i) => `t${i}`),
      );
      assert.equal((await e3)[0].code, 'too_many_topics');
      const e4 = next<[Record<string, unknown>]>(s, 'error');
      s.emit('unsubscribeCount', '');
      assert.equal((await e4)[0].code, 'invalid_topic');
      assert.ok(s.connected);
      // Still fully usable.
      await call(s, 'subscribe', 'after:error');
      await post(herald, '/notify', { appId: APP, eventTopics: ['after:error'], data: { ok: 1 } });
      await until(() => got.length === 1, 3000, 'delivery after errors');
      s.close();
    });

    it('an unknown event gets unknown_event, in the ack or as an error event', async () => {
      const s = await connect(herald, APP, { clientId: 'err-unknown' });
      const ack = await call<Ack>(s, 'subscribeToEverything', ['x']);
      assert.deepEqual(ack.ok, false);
      assert.equal(ack.error?.code, 'unknown_event');
      const e = next<[Record<string, unknown>]>(s, 'error');
      s.emit('dance', 1, 2, 3);
      const [body] = await e;
      assert.equal(body.code, 'unknown_event');
      assert.equal(body.event, 'dance');
      assert.ok(s.connected);
      s.close();
    });

    it('accepts exactly 100 topics per call and 200-character topics', async () => {
      const s = await connect(herald, APP, { clientId: 'limits-ok' });
      const hundred = Array.from({ length: 100 }, (_, i) => `ok:${i}`);
      const ack = await call<Ack>(s, 'subscribe', hundred);
      assert.equal(ack.ok, true);
      assert.equal(ack.topics?.length, 100);
      const long = 'y'.repeat(200);
      assert.deepEqual(await call(s, 'subscribe', long), { ok: true, topics: [long] });
      assert.deepEqual(await call(s, 'subscribe', 'unicode:订单:✓'), {
        ok: true,
        topics: ['unicode:订单:✓'],
      });
      s.close();
    });

    it('a call that would pass the per-connection cap is refused with subscription_limit and applies nothing', async () => {
      const s = await connect(herald, APP, { clientId: 'cap-1' });
      const got = collect(s);
      const errors = collectErrors(s);
      const first = Array.from({ length: 100 }, (_, i) => `cap:a:${i}`);
      assert.equal((await call<Ack>(s, 'subscribe', first)).ok, true);
      // Re-subscribing held topics costs nothing.
      assert.equal((await call<Ack>(s, 'subscribe', first.slice(0, 60))).ok, true);
      const second = Array.from({ length: CAP - 100 + 1 }, (_, i) => `cap:b:${i}`);
      const ack = await call<Ack>(s, 'subscribe', second);
      assert.equal(ack.ok, false);
      assert.equal(ack.error?.code, 'subscription_limit');
      // Count watches share the cap.
      const watchAck = await call<Ack>(s, 'subscribeCount', second);
      assert.equal(watchAck.error?.code, 'subscription_limit');
      s.emit('subscribe', second);
      const [ev] = await next<[Record<string, unknown>]>(s, 'error');
      assert.equal(ev.code, 'subscription_limit');
      // Nothing of the refused calls was applied: no delivery, no subscriber counted, no count sent.
      await post(herald, '/notify', { appId: APP, eventTopics: [second[0]], data: { leaked: true } });
      const w = await connect(herald, APP, { clientId: 'cap-watcher' });
      const wAck = await call<Ack>(w, 'subscribeCount', second[0]);
      assert.deepEqual(wAck.counts, { [second[0] as string]: { count: 0, connections: 0 } });
      await fence(herald, APP, s);
      assert.deepEqual(got, []);
      assert.equal(errors.length, 1);
      // Exactly up to the cap is fine.
      const fill = second.slice(0, CAP - 100);
      assert.equal((await call<Ack>(s, 'subscribe', fill)).ok, true);
      assert.equal((await call<Ack>(s, 'subscribeCount', 'one:more')).error?.code, 'subscription_limit');
      // Unsubscribing frees room.
      await call(s, 'unsubscribe', fill[0]);
      assert.equal((await call<Ack>(s, 'subscribeCount', 'one:more')).ok, true);
      closeAll(s, w);
    });
  });

  describe('acks', () => {
    for (const transport of ['websocket', 'polling']) {
      it(`over ${transport}: every size of answer, non-ASCII text, and an answer never ahead of a notification sent before it`, async () => {
        const s = io(`${herald.url()}/${APP}`, {
          extraHeaders: { 'x-client-id': `ack-${transport}` },
          transports: [transport],
          forceNew: true,
          reconnection: false,
        });
        try {
          await new Promise<void>((resolve, reject) => {
            s.once('connect', resolve);
            s.once('connect_error', reject);
          });
          // Under 126 bytes, and between 126 and 65,535 (the WebSocket frame's two length forms).
          assert.deepEqual(await call(s, 'subscribe', 'ack:1'), { ok: true, topics: ['ack:1'] });
          const many = Array.from({ length: 100 }, (_, i) => `ack:many:${i}`);
          assert.deepEqual(await call(s, 'subscribe', many), { ok: true, topics: many });
          const unknown = await call<Ack & { error: { message: string } }>(s, '订单 ✓');
          assert.equal(unknown.error.code, 'unknown_event');
          assert.match(unknown.error.message, /订单 ✓/);
          // A notification delivered before the ack of a later event arrives first.
          const order: string[] = [];
          s.on('dataUpdate', () => order.push('dataUpdate'));
          await post(herald, '/notify', { appId: APP, eventTopics: ['ack:1'], data: { n: 1 } });
          await call(s, 'subscribe', 'ack:2');
          order.push('ack');
          assert.deepEqual(order, ['dataUpdate', 'ack']);
          assert.ok(s.connected);
        } finally {
          s.close();
        }
      });
    }
  });

  describe('identity', () => {
    it('x-client-id / x-device-id headers make the socket addressable by users and devices', async () => {
      const s = await connect(herald, APP, { clientId: 'id-hdr', deviceId: 'id-hdr-dev' });
      const got = collect(s);
      await post(herald, '/notify', { appId: APP, users: ['id-hdr'], data: { via: 'user' } });
      await post(herald, '/notify', { appId: APP, devices: ['id-hdr-dev'], data: { via: 'device' } });
      await until(() => got.length === 2, 3000, 'both notifications');
      assert.deepEqual(
        got.map((g) => g.data),
        [{ via: 'user' }, { via: 'device' }],
      );
      assert.equal(got[0]?.meta.topic, undefined);
      s.close();
    });

    it('auth: { clientId, deviceId } works (browsers)', async () => {
      const s = await connect(herald, APP, { clientId: 'id-auth', deviceId: 'id-auth-dev', viaAuth: true });
      const got = collect(s);
      await post(herald, '/notify', { appId: APP, users: ['id-auth'], data: { via: 'user' } });
      await post(herald, '/notify', { appId: APP, devices: ['id-auth-dev'], data: { via: 'device' } });
      await until(() => got.length === 2, 3000, 'both notifications');
      s.close();
    });

    it('the query string works', async () => {
      const s = await connectWith(herald, APP, { query: { clientId: 'id-query', deviceId: 'id-query-dev' } });
      const got = collect(s);
      await post(herald, '/notify', { appId: APP, users: ['id-query'], data: { via: 'user' } });
      await post(herald, '/notify', { appId: APP, devices: ['id-query-dev'], data: { via: 'device' } });
      await until(() => got.length === 2, 3000, 'both notifications');
      s.close();
    });

    it('headers win over auth, auth over the query string', async () => {
      const s = await connectWith(herald, APP, {
        extraHeaders: { 'x-client-id': 'prio-header' },
        auth: { clientId: 'prio-auth', deviceId: 'prio-auth-dev' },
        query: { clientId: 'prio-query', deviceId: 'prio-query-dev' },
      });
      const got = collect(s);
      for (const [key, id] of [
        ['users', 'prio-auth'],
        ['users', 'prio-query'],
        ['devices', 'prio-query-dev'],
      ] as const) {
        await post(herald, '/notify', { appId: APP, [key]: [id], data: { wrong: id } });
      }
      await post(herald, '/notify', { appId: APP, users: ['prio-header'], data: { right: 'user' } });
      await post(herald, '/notify', { appId: APP, devices: ['prio-auth-dev'], data: { right: 'device' } });
      await fence(herald, APP, s);
      assert.deepEqual(
        got.map((g) => g.data),
        [{ right: 'user' }, { right: 'device' }],
      );
      s.close();
    });

    it('a malformed id is refused at handshake with invalid_client_id / invalid_device_id', async () => {
      const e1 = await refused(connectWith(herald, APP, { auth: { clientId: 'x'.repeat(129) } }));
      assert.equal(e1.data?.code, 'invalid_client_id');
      const e2 = await refused(connectWith(herald, APP, { auth: { clientId: 'ok', deviceId: 12 } }));
      assert.equal(e2.data?.code, 'invalid_device_id');
      const e3 = await refused(connectWith(herald, APP, { query: { clientId: 'bad\u0001id' } }));
      assert.equal(e3.data?.code, 'invalid_client_id');
    });

    it('anonymous clients (open mode) can subscribe and watch counts; each counts once', async () => {
      const a1 = await connect(herald, APP);
      const a2 = await connect(herald, APP);
      const got1 = collect(a1);
      const got2 = collect(a2);
      assert.equal((await call<Ack>(a1, 'subscribe', 'anon:room')).ok, true);
      assert.equal((await call<Ack>(a2, 'subscribe', 'anon:room')).ok, true);
      const ack = await call<Ack>(a1, 'subscribeCount', 'anon:room');
      assert.deepEqual(ack.counts, { 'anon:room': { count: 2, connections: 2 } });
      await post(herald, '/notify', { appId: APP, eventTopics: ['anon:room'], data: { hello: 'anon' } });
      await until(() => got2.length === 1, 3000, 'delivery to the anonymous client');
      await until(() => got1.some((g) => (g.data as { hello?: string }).hello === 'anon'), 3000, 'a1');
      closeAll(a1, a2);
    });

    it('the main namespace and invalid app ids are refused', async () => {
      const e = await refused(connectWith(herald, ''));
      assert.equal(e.data?.code, 'invalid_app_id');
      const e2 = await refused(connectWith(herald, 'x'.repeat(65)));
      assert.match(e2.message, /namespace/i);
    });
  });

  it('a client message over MAX_CLIENT_MESSAGE_BYTES closes only that connection', async () => {
    const big = await connect(herald, APP, { clientId: 'big-sender' });
    const bystander = await connect(herald, APP, { clientId: 'bystander' });
    const gone = next<[string]>(big, 'disconnect', 5000);
    big.emit('subscribe', 'x'.repeat(herald.config.maxClientMessageBytes + 1));
    const [reason] = await gone;
    assert.match(reason, /transport (close|error)/);
    assert.ok(bystander.connected);
    assert.deepEqual(await call(bystander, 'subscribe', 'still:fine'), { ok: true, topics: ['still:fine'] });
    bystander.close();
  });

  it('a client event never crashes the server: odd payloads get errors, the socket stays', async () => {
    const s: Socket = await connect(herald, APP, { clientId: 'odd' });
    const odd: unknown[] = [undefined, true, [], [[]], [null], { length: 1 }, Buffer.from('abc')];
    for (const arg of odd) {
      const ack = await call<Ack>(s, 'subscribe', arg);
      if (Array.isArray(arg) && arg.length === 0) assert.deepEqual(ack, { ok: true, topics: [] });
      else assert.equal(ack.ok, false, `subscribe(${String(arg)})`);
    }
    assert.ok(s.connected);
    const r = await fetch(`${herald.url()}/healthz`);
    assert.equal(r.status, 200);
    s.close();
  });
});

describe('reserved anonymous ids', () => {
  it('refuses a client id that claims the anon: prefix', async () => {
    const { startTestHerald, refused, connectWith } = await import('../helpers.js');
    const h = await startTestHerald();
    try {
      const err = await refused(
        connectWith(h, 'anon-app', { extraHeaders: { 'x-client-id': 'anon:someone' } }),
      );
      assert.equal(err.data?.code, 'invalid_client_id');
    } finally {
      await h.cleanup();
    }
  });
});
