import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import { io, type Socket } from 'socket.io-client';
import type { Herald } from '../../src/server.js';
import { post } from '../helpers.js';
import { cleanupSpots, ev, get, newOrderId, newSpot, report, startNode } from './helpers.js';

const SHOP = { id: 'shop', secret: 'shop-secret-0123456789abcdef', apiKeys: ['shop-key-0123456789'] };
const OTHER = { id: 'other', secret: 'other-secret-0123456789abcdef', apiKeys: ['other-key-0123456789'] };
const auth = (key: string) => ({ authorization: `Bearer ${key}` });

after(cleanupSpots);

describe('payments in apps mode', () => {
  let herald: Herald;
  before(async () => {
    // Access control does not depend on the store; PostgreSQL starts fastest.
    herald = await startNode(newSpot('postgres'), { apps: [SHOP, OTHER] });
  });
  after(async () => {
    await herald.stop();
  });

  it("requires the API key of each event's app on POST /payments/events", async () => {
    const e = ev({ appId: 'shop', merchantId: 'm-1', orderId: newOrderId(), type: 'created', amount: 1 });
    assert.equal((await post(herald, '/payments/events', e)).status, 401);
    assert.equal((await post(herald, '/payments/events', e, auth(OTHER.apiKeys[0] as string))).status, 403);
    const ok = await post(herald, '/payments/events', e, auth(SHOP.apiKeys[0] as string));
    assert.equal(ok.status, 200);
    assert.equal(ok.body.state, 'created');
    const unknown = await post(
      herald,
      '/payments/events',
      { ...e, appId: 'nope' },
      auth(SHOP.apiKeys[0] as string),
    );
    assert.equal(unknown.body.error?.code, 'unknown_app');

    const batch = await post(
      herald,
      '/payments/events',
      {
        events: [
          ev({ appId: 'shop', merchantId: 'm-1', orderId: newOrderId(), type: 'created' }),
          ev({ appId: 'other', merchantId: 'm-1', orderId: newOrderId(), type: 'created' }),
        ],
      },
      auth(SHOP.apiKeys[0] as string),
    );
    const results = batch.body.results as { ok: boolean; error?: { code: string } }[];
    assert.deepEqual(
      results.map((r) => r.ok || r.error?.code),
      [true, 'forbidden'],
    );
  });

  it("scopes queries to the key's app", async () => {
    assert.equal((await get(herald, '/payments/orders')).status, 401);
    const mine = await get(herald, '/payments/orders', auth(SHOP.apiKeys[0] as string));
    assert.equal(mine.status, 200);
    assert.ok((mine.body.orders as { appId: string }[]).every((o) => o.appId === 'shop'));
    assert.ok((mine.body.total as number) >= 2);
    const theirs = await get(herald, '/payments/orders', auth(OTHER.apiKeys[0] as string));
    assert.equal(theirs.body.total, 0);
    assert.equal(
      (await get(herald, '/payments/stats?appId=other', auth(SHOP.apiKeys[0] as string))).status,
      403,
    );
    assert.equal((await get(herald, '/devices?appId=shop', auth(OTHER.apiKeys[0] as string))).status, 403);
    const order = (mine.body.orders as { orderId: string }[])[0]?.orderId as string;
    assert.equal(
      (await get(herald, `/payments/orders/${order}`, auth(OTHER.apiKeys[0] as string))).status,
      404,
    );
    assert.equal(
      (await get(herald, `/payments/orders/${order}`, auth(SHOP.apiKeys[0] as string))).status,
      200,
    );
  });

  it('takes reports from a machine with a client token, and commands need the key', async () => {
    const token = await new SignJWT({ deviceId: 'pos-jwt' })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('machine-pos-jwt')
      .setExpirationTime('1h')
      .sign(new TextEncoder().encode(SHOP.secret));
    const socket: Socket = io(`${herald.url()}/shop`, {
      auth: { token, merchantId: 'm-jwt' },
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('connect_error', reject);
    });
    socket.on('command', (_cmd: unknown, ack: (r: unknown) => void) => ack({ ok: true }));
    try {
      const a = await report(socket, ev({ orderId: newOrderId(), type: 'created', amount: 2 }));
      assert.equal(a.ok, true);
      const body = { appId: 'shop', command: 'ping' };
      assert.equal((await post(herald, '/devices/pos-jwt/commands', body)).status, 401);
      const r = await post(herald, '/devices/pos-jwt/commands', body, auth(SHOP.apiKeys[0] as string));
      assert.equal(r.status, 200);
      assert.deepEqual(r.body.reply, { ok: true });
    } finally {
      socket.close();
    }
  });

  it('documents the payment routes in the OpenAPI document', async () => {
    const doc = await get(herald, '/openapi.json');
    const paths = Object.keys(doc.body.paths as Record<string, unknown>);
    for (const p of [
      '/payments/events',
      '/payments/orders/{orderId}',
      '/payments/orders',
      '/payments/stats',
      '/devices',
      '/devices/{deviceId}/commands',
    ]) {
      assert.ok(paths.includes(p), p);
    }
  });
});
