import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { io, type Socket } from 'socket.io-client';
import { connectionCap } from '../../src/gateway/index.js';
import { closeAll, connect, refused, sleep, startTestHerald, type TestHerald, until } from '../helpers.js';

const APP = 'limits-app';

async function metric(herald: TestHerald, reason: string): Promise<number> {
  const text = await (await fetch(`${herald.url()}/metrics`)).text();
  const m = new RegExp(`^herald_connections_refused_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

describe('connection caps: MAX_CONNECTIONS_PER_CLIENT', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({ maxConnectionsPerClient: 2 });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('refuses a client id its third connection with too_many_connections; others and anonymous clients connect', async () => {
    const a1 = await connect(herald, APP, { clientId: 'alice' });
    const a2 = await connect(herald, APP, { clientId: 'alice', deviceId: 'tablet' });
    const err = await refused(connect(herald, APP, { clientId: 'alice', deviceId: 'phone' }));
    assert.equal(err.data?.code, 'too_many_connections');
    assert.match(err.message, /"alice" holds 2 connections to this node.*MAX_CONNECTIONS_PER_CLIENT/);
    assert.equal(await metric(herald, 'client'), 1);
    // Another client id, the same id in another app, and anonymous clients are not affected.
    const b = await connect(herald, APP, { clientId: 'bob' });
    const other = await connect(herald, `${APP}-2`, { clientId: 'alice' });
    const anons = await Promise.all([1, 2, 3].map(() => connect(herald, APP)));
    assert.equal(herald.gateway.clientConnections(APP, 'alice'), 2);
    // One closed: alice may connect again.
    a1.close();
    await until(() => herald.gateway.clientConnections(APP, 'alice') === 1, 3000, 'the count given back');
    const a3 = await connect(herald, APP, { clientId: 'alice' });
    assert.equal(herald.gateway.clientConnections(APP, 'alice'), 2);
    closeAll(a2, a3, b, other, ...anons);
    await until(() => herald.gateway.clientConnections(APP, 'alice') === 0, 3000, 'every count given back');
  });

  it('gives the count back for connections closed during their handshake (no leak)', async () => {
    // Clients that go away while connecting, some before and some after the server admits them.
    for (let round = 0; round < 5; round++) {
      const sockets: Socket[] = [];
      for (let i = 0; i < 6; i++) {
        sockets.push(
          io(`${herald.url()}/${APP}`, {
            extraHeaders: { 'x-client-id': 'carol' },
            transports: ['websocket'],
            forceNew: true,
            reconnection: false,
          }),
        );
      }
      await sleep(round * 3);
      closeAll(...sockets);
    }
    await until(() => herald.gateway.clientConnections(APP, 'carol') === 0, 5000, 'carol counted 0');
    // And carol can use her two connections.
    const c1 = await connect(herald, APP, { clientId: 'carol' });
    const c2 = await connect(herald, APP, { clientId: 'carol' });
    closeAll(c1, c2);
  });
});

describe('connection caps: MAX_CONNECTIONS', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({ maxConnections: 3 });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('refuses handshakes past the cap, keeps serving HTTP, and lets a retrying client in once one closes', async () => {
    assert.equal(herald.gateway.maxConnections, 3);
    const held = await Promise.all(['u1', 'u2', 'u3'].map((clientId) => connect(herald, APP, { clientId })));
    const err = await refused(connect(herald, APP, { clientId: 'u4' }));
    // Refused at the handshake (HTTP 403 with the code as its message): a transport error to the client.
    assert.equal(err.message, 'websocket error');
    assert.ok((await metric(herald, 'node')) >= 1);
    assert.equal((await fetch(`${herald.url()}/healthz`)).status, 200);
    assert.equal((await fetch(`${herald.url()}/readyz`)).status, 200);
    // A client with reconnection on (as the SDK) gets in once a connection closes.
    const retrying = io(`${herald.url()}/${APP}`, {
      extraHeaders: { 'x-client-id': 'u5' },
      transports: ['websocket'],
      forceNew: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 200,
    });
    let errors = 0;
    retrying.on('connect_error', () => errors++);
    await until(() => errors >= 1, 3000, 'the first refusal');
    held[0]?.close();
    await until(() => retrying.connected, 5000, 'the retrying client connected');
    closeAll(retrying, ...held);
  });

  it('polling handshakes get 403 with too_many_connections', async () => {
    await until(() => herald.gateway.io.engine.clientsCount === 0, 3000, 'the earlier connections closed');
    const held = await Promise.all(['p1', 'p2', 'p3'].map((clientId) => connect(herald, APP, { clientId })));
    const res = await fetch(`${herald.url()}/socket.io/?EIO=4&transport=polling`);
    assert.equal(res.status, 403);
    assert.deepEqual(await res.json(), { code: 4, message: 'too_many_connections' });
    closeAll(...held);
  });
});

describe('connectionCap', () => {
  it('is MAX_CONNECTIONS when set, else the open-files limit less 200, else none', () => {
    assert.equal(connectionCap(5, { soft: 1024, hard: 4096 }), 5);
    assert.equal(connectionCap(0, { soft: 1024, hard: 4096 }), 824);
    assert.equal(connectionCap(0, { soft: 100, hard: 100 }), 1);
    assert.equal(
      connectionCap(0, { soft: Number.POSITIVE_INFINITY, hard: Number.POSITIVE_INFINITY }),
      Infinity,
    );
    assert.equal(connectionCap(0, undefined), Infinity);
  });
});
