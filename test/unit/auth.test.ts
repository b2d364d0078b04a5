import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SignJWT, UnsecuredJWT } from 'jose';
import { AccessControl, bearer, safeEqual } from '../../src/auth/index.js';
import { HeraldError } from '../../src/errors.js';

const SHOP = {
  id: 'shop',
  secret: 'a-long-random-secret-for-jwt',
  apiKeys: ['key-for-the-shop-backend-0001'],
};
const BLOG = {
  id: 'blog',
  secret: 'another-secret-for-the-blog',
  apiKeys: ['key-for-the-blog-backend-0001', 'second-blog-key-000001'],
};

async function codeOf(fn: () => unknown): Promise<string> {
  try {
    await fn();
  } catch (err) {
    assert.ok(err instanceof HeraldError, String(err));
    return err.code;
  }
  assert.fail('did not throw');
}

const sign = (secret: string, claims: Record<string, unknown> = {}, sub?: string, exp?: number) => {
  let b = new SignJWT(claims).setProtectedHeader({ alg: 'HS256' });
  if (sub !== undefined) b = b.setSubject(sub);
  if (exp !== undefined) b = b.setExpirationTime(exp);
  return b.sign(new TextEncoder().encode(secret));
};

describe('auth helpers', () => {
  it('bearer reads only the Bearer scheme', () => {
    assert.equal(bearer('Bearer abc'), 'abc');
    assert.equal(bearer('bearer abc '), 'abc');
    assert.equal(bearer('Basic abc'), undefined);
    assert.equal(bearer('Bearer'), undefined);
    assert.equal(bearer('Bearer a b'), undefined);
    assert.equal(bearer(''), undefined);
    assert.equal(bearer(undefined), undefined);
  });

  it('safeEqual compares exactly, whatever the lengths', () => {
    assert.equal(safeEqual('secret', 'secret'), true);
    assert.equal(safeEqual('secret', 'Secret'), false);
    assert.equal(safeEqual('secret', 'secret-longer'), false);
    assert.equal(safeEqual('', ''), true);
  });
});

describe('AccessControl: open mode', () => {
  const open = new AccessControl([]);
  it('accepts any app without credentials', async () => {
    assert.equal(open.mode, 'open');
    assert.equal(open.knows('anything'), true);
    open.checkApiKey('anything', undefined);
    assert.equal(await open.verifyClient('anything', undefined), undefined);
  });
});

describe('AccessControl: apps mode', () => {
  const ac = new AccessControl([SHOP, BLOG]);

  it('knows only the configured apps', () => {
    assert.equal(ac.mode, 'apps');
    assert.equal(ac.knows('shop'), true);
    assert.equal(ac.knows('nope'), false);
    assert.deepEqual(ac.appIds().sort(), ['blog', 'shop']);
  });

  it('checkApiKey: unauthorized, forbidden, unknown_app, or accepts', async () => {
    assert.equal(await codeOf(() => ac.checkApiKey('shop', undefined)), 'unauthorized');
    assert.equal(await codeOf(() => ac.checkApiKey('shop', 'Bearer wrong-key-000000000')), 'unauthorized');
    assert.equal(await codeOf(() => ac.checkApiKey('shop', `Basic ${SHOP.apiKeys[0]}`)), 'unauthorized');
    assert.equal(await codeOf(() => ac.checkApiKey('shop', `Bearer ${BLOG.apiKeys[1]}`)), 'forbidden');
    assert.equal(await codeOf(() => ac.checkApiKey('nope', `Bearer ${SHOP.apiKeys[0]}`)), 'unknown_app');
    ac.checkApiKey('shop', `Bearer ${SHOP.apiKeys[0]}`);
    ac.checkApiKey('blog', `Bearer ${BLOG.apiKeys[1]}`);
    assert.equal(ac.appOfKey(`Bearer ${BLOG.apiKeys[0]}`), 'blog');
    assert.equal(ac.appOfKey('Bearer unknown'), undefined);
    assert.equal(ac.appOfKey(undefined), undefined);
  });

  it('verifyClient: a good HS256 token gives sub and deviceId', async () => {
    const token = await sign(SHOP.secret, { deviceId: 'phone' }, 'alice', Math.floor(Date.now() / 1000) + 60);
    assert.deepEqual(await ac.verifyClient('shop', token), { clientId: 'alice', deviceId: 'phone' });
    const noDevice = await sign(SHOP.secret, { deviceId: 5 }, 'bob');
    assert.deepEqual(await ac.verifyClient('shop', noDevice), { clientId: 'bob', deviceId: undefined });
  });

  it('verifyClient: refuses missing, malformed, wrong-secret, expired, unsigned and sub-less tokens', async () => {
    const cases: [string, string | undefined][] = [
      ['missing', undefined],
      ['empty', ''],
      ['malformed', 'a.b.c'],
      ['wrong secret', await sign('some-other-secret-value', {}, 'alice')],
      ["another app's", await sign(BLOG.secret, {}, 'alice')],
      ['expired', await sign(SHOP.secret, {}, 'alice', Math.floor(Date.now() / 1000) - 60)],
      ['alg none', new UnsecuredJWT({ sub: 'alice' }).encode()],
      ['no sub', await sign(SHOP.secret, {})],
      ['empty sub', await sign(SHOP.secret, {}, '')],
      ['sub with a NUL', await sign(SHOP.secret, {}, 'al\u0000ice')],
      ['sub with an unpaired surrogate', await sign(SHOP.secret, {}, 'al\ud800')],
      ['sub of 129 characters', await sign(SHOP.secret, {}, 'a'.repeat(129))],
      ['deviceId with a control character', await sign(SHOP.secret, { deviceId: 'pos\n1' }, 'alice')],
      ['merchantId with a NUL', await sign(SHOP.secret, { merchantId: 'm\u0000' }, 'alice')],
      ['merchantId with whitespace', await sign(SHOP.secret, { merchantId: 'm 1' }, 'alice')],
    ];
    for (const [what, token] of cases) {
      assert.equal(await codeOf(() => ac.verifyClient('shop', token)), 'invalid_token', what);
    }
    const good = await sign(SHOP.secret, {}, 'a');
    assert.equal(await codeOf(() => ac.verifyClient('nope', good)), 'unknown_app');
  });

  it('verifyClient: allows 30 s of clock difference on exp and nbf, and says why a token is not valid yet', async () => {
    const now = Math.floor(Date.now() / 1000);
    const nbf = (at: number) =>
      new SignJWT({})
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject('alice')
        .setNotBefore(at)
        .sign(new TextEncoder().encode(SHOP.secret));
    // A back-end whose clock runs 10 s ahead; a token that expired 10 s ago by this server's clock.
    assert.equal((await ac.verifyClient('shop', await nbf(now + 10)))?.clientId, 'alice');
    assert.equal(
      (await ac.verifyClient('shop', await sign(SHOP.secret, {}, 'alice', now - 10)))?.clientId,
      'alice',
    );
    await assert.rejects(ac.verifyClient('shop', await nbf(now + 120)), (err: unknown) => {
      assert.ok(err instanceof HeraldError && err.code === 'invalid_token');
      assert.match(err.message, /not valid yet/);
      return true;
    });
  });
});
