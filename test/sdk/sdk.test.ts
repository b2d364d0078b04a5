import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import type { SocketConn } from '../../src/gateway/index.js';
import { type HeraldClient, HeraldClientError, connect as sdkConnect } from '../../src/sdk/index.js';
import { connect as connectRaw, post, sleep, startTestHerald, type TestHerald, until } from '../helpers.js';

/** Closes the server side transport of every socket of a client id, as a network drop would. */
function dropTransport(herald: TestHerald, clientId: string): number {
  let n = 0;
  for (const c of [...herald.router.allConns()]) {
    if (c.clientId === clientId) {
      (c as SocketConn).socket.conn.close();
      n++;
    }
  }
  return n;
}

describe('SDK', () => {
  let herald: TestHerald;
  const clients: HeraldClient[] = [];
  const open = (clientId: string, deviceId?: string) => {
    const c = sdkConnect({
      url: herald.url(),
      appId: 'sdk-app',
      clientId,
      ...(deviceId ? { deviceId } : {}),
      reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
      socketOptions: { transports: ['websocket'] },
    });
    clients.push(c);
    return c;
  };

  before(async () => {
    herald = await startTestHerald({ countInterval: 20 });
  });
  after(async () => {
    for (const c of clients) c.close();
    await herald.cleanup();
  });

  it('subscribes, dispatches per topic, and identifies through auth', async () => {
    const c = open('sdk-user-1', 'sdk-dev-1');
    const all: unknown[] = [];
    const onTopic: unknown[] = [];
    c.on((d) => all.push(d));
    c.on('news', (d) => onTopic.push(d));
    assert.deepEqual(await c.subscribe(['news', 'other']), ['news', 'other']);
    await post(herald, '/notify', { appId: 'sdk-app', eventTopics: ['news'], data: { n: 1 } });
    await post(herald, '/notify', { appId: 'sdk-app', eventTopics: ['other'], data: { n: 2 } });
    await post(herald, '/notify', { appId: 'sdk-app', devices: ['sdk-dev-1'], data: { n: 3 } });
    await until(() => all.length === 3, 3000, 'three notifications');
    assert.deepEqual(onTopic, [{ n: 1 }]);
  });

  it('rejects with the server error code', async () => {
    const c = open('sdk-user-2');
    await assert.rejects(c.subscribe('has space'), (err: unknown) => {
      assert.ok(err instanceof HeraldClientError);
      assert.equal(err.code, 'invalid_topic');
      return true;
    });
    assert.equal(c.topics.has('has space'), false);
  });

  it('re-subscribes topics and count watches after the transport drops', async () => {
    const watcher = open('sdk-watcher');
    const member = open('sdk-member');
    const counts: number[] = [];
    watcher.onCount((u) => counts.push(u.count), 'room');
    const initial = await watcher.subscribeCount('room');
    assert.deepEqual(initial.room, { count: 0, connections: 0 });
    await member.subscribe('room');
    await until(() => counts.at(-1) === 1, 3000, 'count 1');

    const got: unknown[] = [];
    member.on('room', (d) => got.push(d));
    const statuses: string[] = [];
    member.onStatus((s) => statuses.push(s));
    assert.equal(dropTransport(herald, 'sdk-member'), 1);
    // While it is gone the count falls to 0; after the SDK reconnects and re-subscribes it is 1 again.
    await until(() => statuses.includes('disconnected'), 3000, 'disconnect seen');
    await until(
      () => member.status === 'connected' && herald.router.localCount('sdk-app', 'room').count === 1,
      5000,
      'resubscribed',
    );
    await until(() => counts.at(-1) === 1 && counts.includes(0), 3000, 'count back to 1');

    assert.equal(dropTransport(herald, 'sdk-watcher'), 1);
    await until(
      () => watcher.status === 'connected' && herald.router.watchersOf('sdk-app', 'room').size === 1,
      5000,
      'watch restored',
    );
    const before = counts.length;
    const third = open('sdk-third');
    await third.subscribe('room');
    await until(() => counts.length > before && counts.at(-1) === 2, 3000, 'watcher sees the new member');

    await post(herald, '/notify', { appId: 'sdk-app', eventTopics: ['room'], data: { after: 'reconnect' } });
    await until(() => got.length === 1, 3000, 'notification after reconnect');
    assert.deepEqual(got[0], { after: 'reconnect' });
  });

  it('unsubscribe stops delivery and is not restored on reconnect', async () => {
    const c = open('sdk-user-3');
    const got: unknown[] = [];
    c.on((d) => got.push(d));
    await c.subscribe(['a1', 'a2']);
    await c.unsubscribe('a1');
    dropTransport(herald, 'sdk-user-3');
    await until(
      () => c.status === 'connected' && herald.router.localCount('sdk-app', 'a2').connections === 1,
      5000,
      'reconnected',
    );
    assert.equal(herald.router.localCount('sdk-app', 'a1').connections, 0);
    await post(herald, '/notify', { appId: 'sdk-app', eventTopics: ['a1', 'a2'], data: 'x' });
    await until(() => got.length === 1, 3000, 'one');
    assert.deepEqual([...c.topics], ['a2']);
  });
});

describe('SDK under CLIENT_EVENT_RATE', () => {
  let herald: TestHerald;
  const clients: HeraldClient[] = [];
  before(async () => {
    // 4 events a second, 2 at once.
    herald = await startTestHerald({ clientEventRate: 4, clientEventBurst: 2 });
  });
  after(async () => {
    for (const c of clients) c.close();
    await herald.cleanup();
  });

  it('sends a refused subscribe again after retryAfterMs: every call resolves, every topic delivers', async () => {
    const c = sdkConnect({
      url: herald.url(),
      appId: 'sdk-app',
      clientId: 'sdk-limited',
      socketOptions: { transports: ['websocket'] },
    });
    clients.push(c);
    await until(() => c.status === 'connected', 5000, 'connected');
    const got: unknown[] = [];
    c.on((d) => got.push(d));
    // Five calls at once: two pass, three are refused with slots 250, 500 and 750 ms ahead.
    const topics = ['r1', 'r2', 'r3', 'r4', 'r5'];
    const answers = await Promise.all(topics.map((t) => c.subscribe(t)));
    assert.deepEqual(
      answers,
      topics.map((t) => [t]),
    );
    const metrics = await (await fetch(`${herald.url()}/metrics`)).text();
    const refused = Number(/^herald_client_events_refused_total (\S+)$/m.exec(metrics)?.[1] ?? 0);
    assert.ok(refused >= 3, `refused ${refused}`);
    assert.equal(c.status, 'connected');
    await post(herald, '/notify', { appId: 'sdk-app', eventTopics: topics, data: { all: true } });
    await until(() => got.length === 1, 3000, 'the notification');
  });
});

describe('SDK: connects the server refused', () => {
  const SHOP = {
    id: 'sdk-shop',
    secret: 'a-long-random-secret-for-the-sdk-shop',
    apiKeys: ['sdk-shop-key-0001'],
  };
  let herald: TestHerald;
  const clients: HeraldClient[] = [];
  const statuses = (c: HeraldClient) => {
    const seen: string[] = [];
    c.onStatus((s, reason) => seen.push(reason ? `${s}:${reason}` : s));
    return seen;
  };
  const token = (claims: { sub: string; exp?: number }) =>
    new SignJWT({})
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(claims.sub)
      .setIssuedAt(Math.floor(Date.now() / 1000) - 120)
      .setExpirationTime(claims.exp ?? Math.floor(Date.now() / 1000) + 300)
      .sign(new TextEncoder().encode(SHOP.secret));

  before(async () => {
    herald = await startTestHerald({ apps: [SHOP], maxConnectionsPerClient: 1 });
  });
  after(async () => {
    for (const c of clients) c.close();
    await herald.cleanup();
  });

  it('reports too_many_connections and connects once the client has a connection free', async () => {
    const holder = await connectRaw(herald, SHOP.id, { token: await token({ sub: 'capped' }) });
    const c = sdkConnect({
      url: herald.url(),
      appId: SHOP.id,
      token: () => token({ sub: 'capped' }),
      reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
      socketOptions: { transports: ['websocket'] },
    });
    clients.push(c);
    const seen = statuses(c);
    await until(() => seen.includes('disconnected:too_many_connections'), 3000, 'the refusal reported');
    holder.close();
    await until(() => c.status === 'connected', 5000, 'connected once the other connection closed');
    assert.deepEqual(await c.subscribe('after-cap'), ['after-cap']);
  });

  it('asks the token function again after invalid_token (an expired token is refreshed)', async () => {
    let calls = 0;
    const c = sdkConnect({
      url: herald.url(),
      appId: SHOP.id,
      token: () => {
        calls++;
        return calls === 1
          ? token({ sub: 'refresh', exp: Math.floor(Date.now() / 1000) - 60 })
          : token({ sub: 'refresh' });
      },
      reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
      socketOptions: { transports: ['websocket'] },
    });
    clients.push(c);
    const seen = statuses(c);
    await until(() => c.status === 'connected', 5000, 'connected with the refreshed token');
    assert.ok(seen.includes('disconnected:invalid_token'), seen.join());
    assert.ok(calls >= 2);
  });

  it('does not try again a refusal that would repeat (a fixed token refused, an unknown app)', async () => {
    for (const [appId, tok, code] of [
      [SHOP.id, 'not.a.jwt', 'invalid_token'],
      ['no-such-app', await token({ sub: 'x' }), 'unknown_app'],
    ] as const) {
      const c = sdkConnect({
        url: herald.url(),
        appId,
        token: tok,
        reconnect: { initialDelayMs: 20, maxDelayMs: 50 },
        socketOptions: { transports: ['websocket'] },
      });
      clients.push(c);
      const seen = statuses(c);
      let refused = 0;
      c.socket.on('connect_error', () => refused++);
      await until(() => seen.includes(`disconnected:${code}`), 3000, `${code} reported`);
      await sleep(300);
      assert.equal(refused, 1, `${code}: tried once`);
      assert.equal(c.status, 'disconnected');
    }
  });
});
