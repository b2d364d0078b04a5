import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import {
  call,
  closeAll,
  collect,
  connect,
  connectWith,
  post,
  refused,
  startTestHerald,
  type TestHerald,
  until,
} from '../helpers.js';

const SHOP = {
  id: 'shop',
  secret: 'a-long-random-secret-for-jwt',
  apiKeys: ['key-for-the-shop-backend-0001'],
};
const BLOG = {
  id: 'blog',
  secret: 'another-secret-for-the-blog',
  apiKeys: ['key-for-the-blog-backend-0001'],
};
const SHOP_KEY = { authorization: `Bearer ${SHOP.apiKeys[0]}` };
const BLOG_KEY = { authorization: `Bearer ${BLOG.apiKeys[0]}` };

async function jwt(
  secret: string,
  claims: Record<string, unknown>,
  opts: { sub?: string; exp?: number | string; alg?: string } = {},
): Promise<string> {
  let b = new SignJWT(claims).setProtectedHeader({ alg: opts.alg ?? 'HS256' }).setIssuedAt();
  if (opts.sub !== undefined) b = b.setSubject(opts.sub);
  if (opts.exp !== undefined) b = b.setExpirationTime(opts.exp);
  return b.sign(new TextEncoder().encode(secret));
}

describe('apps mode: API keys and client JWTs', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({ apps: [SHOP, BLOG] });
  });
  after(async () => {
    await herald.cleanup();
  });

  describe('POST /notify', () => {
    const body = { appId: 'shop', broadcast: true, data: { x: 1 } };

    it('401 unauthorized without a key, with another scheme or an unknown key', async () => {
      const cases: Record<string, string>[] = [
        {},
        { authorization: '' },
        { authorization: SHOP.apiKeys[0] as string },
        { authorization: `Basic ${SHOP.apiKeys[0]}` },
        { authorization: 'Bearer not-a-known-key-at-all' },
        { authorization: `Bearer ${SHOP.secret}` },
      ];
      for (const headers of cases) {
        const r = await post(herald, '/notify', body, headers);
        assert.equal(r.status, 401, JSON.stringify(headers));
        assert.equal(r.body.error?.code, 'unauthorized');
      }
    });

    it("403 forbidden with another app's key", async () => {
      const r = await post(herald, '/notify', body, BLOG_KEY);
      assert.equal(r.status, 403);
      assert.equal(r.body.error?.code, 'forbidden');
    });

    it('404 unknown_app for an app that is not configured', async () => {
      for (const headers of [SHOP_KEY, {}]) {
        const r = await post(herald, '/notify', { ...body, appId: 'ecommerce-app' }, headers);
        assert.equal(r.status, 404);
        assert.equal(r.body.error?.code, 'unknown_app');
      }
    });

    it('202 with the right key (case-insensitive scheme)', async () => {
      const r = await post(herald, '/notify', body, SHOP_KEY);
      assert.equal(r.status, 202, r.text);
      assert.equal(typeof r.body.id, 'string');
      const r2 = await post(herald, '/notify', body, { authorization: `bearer ${SHOP.apiKeys[0]}` });
      assert.equal(r2.status, 202);
    });

    it('batch: each item is checked against the key; no key is 401', async () => {
      const r = await post(
        herald,
        '/notify/batch',
        {
          notifications: [
            { appId: 'shop', broadcast: true, data: 1 },
            { appId: 'blog', broadcast: true, data: 2 },
            { appId: 'nope', broadcast: true, data: 3 },
          ],
        },
        SHOP_KEY,
      );
      assert.equal(r.status, 200, r.text);
      const results = r.body.results as { ok: boolean; error?: { code: string } }[];
      assert.deepEqual(
        results.map((x) => x.error?.code ?? 'ok'),
        ['ok', 'forbidden', 'unknown_app'],
      );
      const none = await post(herald, '/notify/batch', {
        notifications: [{ appId: 'shop', broadcast: true, data: 1 }],
      });
      assert.equal(none.status, 401);
      assert.equal(none.body.error?.code, 'unauthorized');
      const bad = await post(
        herald,
        '/notify/batch',
        { notifications: [{ appId: 'shop', broadcast: true, data: 1 }] },
        { authorization: 'Bearer unknown-key-0000000000' },
      );
      assert.equal(bad.status, 401);
    });
  });

  describe('GET /notify/:id (receipts)', () => {
    const get = async (path: string, headers: Record<string, string> = {}) => {
      const res = await fetch(`${herald.url()}${path}`, { headers });
      return { status: res.status, body: (await res.json()) as { error?: { code: string } } };
    };

    it('asks for a key before saying whether an id exists, and keeps apps apart', async () => {
      const sent = await post(
        herald,
        '/notify',
        { appId: 'shop', broadcast: true, data: 1, ack: true },
        SHOP_KEY,
      );
      assert.equal(sent.status, 202);
      const id = sent.body.id as string;
      // Without a key, a known and an unknown id answer alike.
      for (const path of [`/notify/${id}`, '/notify/no-such-id']) {
        const r = await get(path);
        assert.equal(r.status, 401, path);
        assert.equal(r.body.error?.code, 'unauthorized');
      }
      assert.equal((await get('/notify/no-such-id', SHOP_KEY)).status, 404);
      assert.equal((await get(`/notify/${id}`, BLOG_KEY)).status, 403);
      assert.equal((await get(`/notify/${id}`, SHOP_KEY)).status, 200);
    });
  });

  describe('socket handshake', () => {
    it('refuses a missing token with invalid_token', async () => {
      const e = await refused(connect(herald, 'shop', { clientId: 'alice' }));
      assert.equal(e.data?.code, 'invalid_token');
      assert.equal(typeof e.data?.message, 'string');
    });

    it('refuses a malformed token, a wrong secret, an expired token, no sub and another algorithm', async () => {
      const cases: [string, string][] = [
        ['malformed', 'not.a.jwt'],
        ['garbage', 'abc'],
        ['wrong secret', await jwt('a-different-secret-of-some-length', {}, { sub: 'alice' })],
        ["another app's secret", await jwt(BLOG.secret, {}, { sub: 'alice' })],
        ['expired', await jwt(SHOP.secret, {}, { sub: 'alice', exp: Math.floor(Date.now() / 1000) - 60 })],
        ['no sub', await jwt(SHOP.secret, { deviceId: 'd' })],
        ['HS512', await jwt(SHOP.secret, {}, { sub: 'alice', alg: 'HS512' })],
      ];
      for (const [what, token] of cases) {
        const e = await refused(connect(herald, 'shop', { token }));
        assert.equal(e.data?.code, 'invalid_token', what);
      }
    });

    it('refuses an app that is not configured with unknown_app, even with a good token', async () => {
      const token = await jwt(SHOP.secret, {}, { sub: 'alice' });
      const e = await refused(connect(herald, 'ecommerce-app', { token }));
      assert.equal(e.data?.code, 'unknown_app');
    });

    it('accepts a good HS256 token; its sub is the client id and deviceId the device', async () => {
      const token = await jwt(SHOP.secret, { deviceId: 'alice-phone' }, { sub: 'alice', exp: '5m' });
      const s = await connect(herald, 'shop', { token });
      const got = collect(s);
      await post(herald, '/notify', { appId: 'shop', users: ['alice'], data: { to: 'user' } }, SHOP_KEY);
      await post(
        herald,
        '/notify',
        { appId: 'shop', devices: ['alice-phone'], data: { to: 'device' } },
        SHOP_KEY,
      );
      await until(() => got.length === 2, 3000, 'both notifications');
      assert.deepEqual(
        got.map((g) => g.data),
        [{ to: 'user' }, { to: 'device' }],
      );
      s.close();
    });

    it('the token is accepted from auth, the query string and an Authorization header', async () => {
      const token = await jwt(SHOP.secret, {}, { sub: 'bob' });
      const viaQuery = await connectWith(herald, 'shop', { query: { token } });
      const viaHeader = await connectWith(herald, 'shop', {
        extraHeaders: { authorization: `Bearer ${token}` },
      });
      const viaAuth = await connect(herald, 'shop', { token });
      const r = await post(herald, '/notify', { appId: 'shop', users: ['bob'], data: 1 }, SHOP_KEY);
      assert.equal(r.body.delivered, 3);
      closeAll(viaQuery, viaHeader, viaAuth);
    });

    it('a claimed client id cannot override the token: a different x-client-id is refused', async () => {
      const token = await jwt(SHOP.secret, {}, { sub: 'carol' });
      const e = await refused(connect(herald, 'shop', { token, clientId: 'mallory' }));
      assert.equal(e.data?.code, 'invalid_token');
      // The same id as the token's sub is fine.
      const ok = await connect(herald, 'shop', { token, clientId: 'carol' });
      const r = await post(herald, '/notify', { appId: 'shop', users: ['carol'], data: 1 }, SHOP_KEY);
      assert.equal(r.body.delivered, 1);
      const none = await post(herald, '/notify', { appId: 'shop', users: ['mallory'], data: 1 }, SHOP_KEY);
      assert.equal(none.body.delivered, 0);
      ok.close();
    });

    it("the device: the token's deviceId wins; a different x-device-id is refused; without one the client names it", async () => {
      const withDevice = await jwt(SHOP.secret, { deviceId: 'phone' }, { sub: 'frank' });
      const e = await refused(connect(herald, 'shop', { token: withDevice, deviceId: 'tablet' }));
      assert.equal(e.data?.code, 'invalid_token');
      const noDevice = await jwt(SHOP.secret, {}, { sub: 'frank' });
      const s = await connect(herald, 'shop', { token: noDevice, deviceId: 'frank-tablet' });
      const r = await post(
        herald,
        '/notify',
        { appId: 'shop', devices: ['frank-tablet'], data: 1 },
        SHOP_KEY,
      );
      assert.equal(r.body.delivered, 1);
      s.close();
    });

    it('a token of one app does not open another app', async () => {
      const token = await jwt(SHOP.secret, {}, { sub: 'dave' });
      const e = await refused(connect(herald, 'blog', { token }));
      assert.equal(e.data?.code, 'invalid_token');
      const blogToken = await jwt(BLOG.secret, {}, { sub: 'dave' });
      const s = await connect(herald, 'blog', { token: blogToken });
      const got = collect(s);
      await call(s, 'subscribe', 'post:1');
      // The shop's notification to the same user and topic does not reach the blog socket.
      const r = await post(
        herald,
        '/notify',
        { appId: 'shop', users: ['dave'], eventTopics: ['post:1'], data: 1 },
        SHOP_KEY,
      );
      assert.equal(r.body.delivered, 0);
      await post(
        herald,
        '/notify',
        { appId: 'blog', eventTopics: ['post:1'], data: { blog: true } },
        BLOG_KEY,
      );
      await until(() => got.length === 1, 3000, 'blog delivery');
      s.close();
    });

    it('authenticated sockets use the protocol as in open mode', async () => {
      const token = await jwt(SHOP.secret, {}, { sub: 'erin' });
      const s = await connect(herald, 'shop', { token });
      const got = collect(s);
      const ack = await call<{ ok: boolean; counts: unknown }>(s, 'subscribeCount', 'order:1');
      assert.deepEqual(ack.counts, { 'order:1': { count: 0, connections: 0 } });
      await call(s, 'subscribe', 'order:1');
      await until(() => got.some((g) => (g.data as { count?: number }).count === 1), 3000, 'count 1');
      await post(herald, '/notify', { appId: 'shop', eventTopics: ['order:1'], data: { m: 1 } }, SHOP_KEY);
      await until(() => got.some((g) => (g.data as { m?: number }).m === 1), 3000, 'topic delivery');
      s.close();
    });
  });
});
