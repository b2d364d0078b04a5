import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { call, collect, connect, fence, post, startTestHerald, type TestHerald, until } from '../helpers.js';

const APP = 'http-app';
const LIMITS = { maxTargets: 5, bodyLimit: 2048, batchBodyLimit: 4096, maxPayloadBytes: 512, maxBatch: 3 };

type ErrBody = { error: { code: string; message: string; details?: { path: string; message: string }[] } };

/** A raw request, so that the body and headers are exactly as given (no content-type added). */
function raw(
  herald: TestHerald,
  path: string,
  body: string | Buffer | undefined,
  headers: Record<string, string> = {},
  method = 'POST',
): Promise<{ status: number; body: Record<string, unknown> | undefined; text: string }> {
  const { port } = herald.address();
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: Record<string, unknown> | undefined;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, body: json, text });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.end(body);
    else req.end();
  });
}

function assertError(res: { status: number; body: unknown; text: string }, status: number, code: string) {
  assert.equal(res.status, status, `status of ${res.text}`);
  const b = res.body as ErrBody;
  assert.equal(b?.error?.code, code, res.text);
  assert.equal(typeof b.error.message, 'string');
  assert.ok(b.error.message.length > 0);
}

describe('HTTP: POST /notify and /notify/batch', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald(LIMITS);
  });
  after(async () => {
    await herald.cleanup();
  });

  describe('bodies', () => {
    it('a string body sent by fetch without content-type (text/plain) is read as JSON', async () => {
      const s = await connect(herald, APP, { clientId: 'plain-user' });
      const got = collect(s);
      const res = await fetch(`${herald.url()}/notify`, {
        method: 'POST',
        body: JSON.stringify({ appId: APP, users: ['plain-user'], data: { type: 'payment' } }),
      });
      assert.equal(res.status, 202);
      const body = (await res.json()) as { id: string; ts: number };
      assert.equal(typeof body.id, 'string');
      assert.equal(typeof body.ts, 'number');
      await until(() => got.length === 1, 3000, 'delivery');
      assert.deepEqual(got[0]?.data, { type: 'payment' });
      s.close();
    });

    it('form-encoded (curl -d) and no content-type at all are read as JSON too', async () => {
      const json = JSON.stringify({ appId: APP, broadcast: true, data: 1 });
      const form = await raw(herald, '/notify', json, {
        'content-type': 'application/x-www-form-urlencoded',
      });
      assert.equal(form.status, 202, form.text);
      const none = await raw(herald, '/notify', json, { 'content-length': String(Buffer.byteLength(json)) });
      assert.equal(none.status, 202, none.text);
      const charset = await raw(herald, '/notify', json, {
        'content-type': 'application/json; charset=utf-8',
      });
      assert.equal(charset.status, 202, charset.text);
    });

    it('malformed JSON: 400 invalid_json', async () => {
      for (const text of ['{"appId":', '{appId: "x"}', 'not json', '{"a":1}}', "{'a':1}"]) {
        assertError(await post(herald, '/notify', text), 400, 'invalid_json');
        assertError(
          await raw(herald, '/notify', text, { 'content-type': 'text/plain' }),
          400,
          'invalid_json',
        );
      }
    });

    it('empty body: 400 (invalid_json with a content-type; validation_failed without one)', async () => {
      assertError(await post(herald, '/notify', ''), 400, 'invalid_json');
      assertError(await raw(herald, '/notify', '', { 'content-type': 'text/plain' }), 400, 'invalid_json');
      assertError(
        await raw(herald, '/notify', '   \n', { 'content-type': 'application/json' }),
        400,
        'invalid_json',
      );
      const none = await raw(herald, '/notify', undefined, {});
      assert.equal(none.status, 400, none.text);
      assert.ok(['invalid_json', 'validation_failed'].includes((none.body as ErrBody).error.code));
    });

    it('not an object: 400 validation_failed', async () => {
      for (const text of ['null', '[]', '42', '"str"', 'true']) {
        assertError(await post(herald, '/notify', text), 400, 'validation_failed');
      }
    });

    it('a body over BODY_LIMIT: 413 body_too_large', async () => {
      const big = JSON.stringify({
        appId: APP,
        broadcast: true,
        data: { pad: 'x'.repeat(LIMITS.bodyLimit) },
      });
      assertError(await post(herald, '/notify', big), 413, 'body_too_large');
      assertError(await raw(herald, '/notify', big, { 'content-type': 'text/plain' }), 413, 'body_too_large');
      // Just under the limit is fine as far as the body goes (data is then over MAX_PAYLOAD_BYTES).
      const under = JSON.stringify({ appId: APP, broadcast: true, data: 'y'.repeat(1900) });
      assert.ok(Buffer.byteLength(under) < LIMITS.bodyLimit);
      assertError(await post(herald, '/notify', under), 413, 'payload_too_large');
    });

    it('data over MAX_PAYLOAD_BYTES: 413 payload_too_large; at the limit: 202', async () => {
      const over = { appId: APP, broadcast: true, data: 'z'.repeat(LIMITS.maxPayloadBytes) }; // +2 quotes
      assertError(await post(herald, '/notify', over), 413, 'payload_too_large');
      const at = { appId: APP, broadcast: true, data: 'z'.repeat(LIMITS.maxPayloadBytes - 2) };
      assert.equal((await post(herald, '/notify', at)).status, 202);
      // Bytes, not characters.
      const wide = { appId: APP, broadcast: true, data: '订'.repeat(200) }; // 600 bytes
      assertError(await post(herald, '/notify', wide), 413, 'payload_too_large');
    });
  });

  describe('validation', () => {
    const cases: [string, Record<string, unknown>, string][] = [
      ['missing appId', { users: ['a'], data: 1 }, '/appId'],
      ['appId not a string', { appId: 5, users: ['a'], data: 1 }, '/appId'],
      ['appId with a space', { appId: 'my app', users: ['a'], data: 1 }, '/appId'],
      ['appId of 65 characters', { appId: 'a'.repeat(65), users: ['a'], data: 1 }, '/appId'],
      ['users not an array', { appId: APP, users: 'alice', data: 1 }, '/users'],
      ['users holding a number', { appId: APP, users: [1], data: 1 }, '/users/0'],
      ['an empty user id', { appId: APP, users: [''], data: 1 }, '/users/0'],
      ['devices not an array', { appId: APP, devices: { d: 1 }, data: 1 }, '/devices'],
      ['eventTopics holding null', { appId: APP, eventTopics: [null], data: 1 }, '/eventTopics/0'],
      ['a topic with whitespace', { appId: APP, eventTopics: ['a b'], data: 1 }, '/eventTopics/0'],
      [
        'a topic of 201 characters',
        { appId: APP, eventTopics: ['t'.repeat(201)], data: 1 },
        '/eventTopics/0',
      ],
      // Topics and ids no client could have (the gateway refuses every control character, C1 too).
      [
        'a topic with a C1 control character',
        { appId: APP, eventTopics: ['c1\u0085x'], data: 1 },
        '/eventTopics/0',
      ],
      ['a topic with a tab', { appId: APP, eventTopics: ['a\tb'], data: 1 }, '/eventTopics/0'],
      ['a user id with a C1 control character', { appId: APP, users: ['u\u009b'], data: 1 }, '/users/0'],
      ['a device id of 129 characters', { appId: APP, devices: ['d'.repeat(129)], data: 1 }, '/devices/0'],
      ['broadcast not a boolean', { appId: APP, broadcast: 'yes', data: 1 }, '/broadcast'],
      ['an unknown property', { appId: APP, users: ['a'], data: 1, priority: 'high' }, ''],
      ['a misspelt target', { appId: APP, topics: ['a'], data: 1 }, ''],
    ];
    for (const [what, body, path] of cases) {
      it(`${what}: 400 validation_failed naming the path`, async () => {
        const res = await post(herald, '/notify', body);
        assertError(res, 400, 'validation_failed');
        const details = (res.body as ErrBody).error.details;
        assert.ok(Array.isArray(details) && details.length > 0, 'details list the bad paths');
        if (path)
          assert.ok(
            details.some((d) => d.path === path),
            JSON.stringify(details),
          );
      });
    }

    it('missing data: 400 validation_failed naming /data', async () => {
      const res = await post(herald, '/notify', { appId: APP, users: ['a'] });
      assertError(res, 400, 'validation_failed');
      assert.ok((res.body as ErrBody).error.details?.some((d) => d.path === '/data'));
    });

    it('no target: 400 no_target (also with empty lists and broadcast: false)', async () => {
      for (const body of [
        { appId: APP, data: 1 },
        { appId: APP, users: [], devices: [], eventTopics: [], data: 1 },
        { appId: APP, broadcast: false, data: 1 },
      ]) {
        assertError(await post(herald, '/notify', body), 400, 'no_target');
      }
    });

    it('a target list over MAX_TARGETS: 400 too_many_targets; at the limit: 202', async () => {
      const six = Array.from({ length: LIMITS.maxTargets + 1 }, (_, i) => `t${i}`);
      for (const key of ['users', 'devices', 'eventTopics']) {
        assertError(
          await post(herald, '/notify', { appId: APP, [key]: six, data: 1 }),
          400,
          'too_many_targets',
        );
        const five = six.slice(0, LIMITS.maxTargets);
        assert.equal((await post(herald, '/notify', { appId: APP, [key]: five, data: 1 })).status, 202, key);
      }
    });

    it('other routes: 404 not_found, wrong method: 404/405 in the error format', async () => {
      assertError(await post(herald, '/nope', {}), 404, 'not_found');
      const get = await raw(herald, '/notify', undefined, {}, 'GET');
      assert.ok([404, 405].includes(get.status));
      assert.ok(['not_found', 'method_not_allowed'].includes((get.body as ErrBody).error.code));
    });

    it('a browser may call it cross-origin (CORS preflight and response headers)', async () => {
      const pre = await fetch(`${herald.url()}/notify`, {
        method: 'OPTIONS',
        headers: {
          origin: 'https://shop.example',
          'access-control-request-method': 'POST',
          'access-control-request-headers': 'content-type,authorization',
        },
      });
      assert.ok(pre.status === 204 || pre.status === 200, String(pre.status));
      assert.ok(pre.headers.get('access-control-allow-origin'));
      assert.match(pre.headers.get('access-control-allow-methods') ?? '', /POST/);
      const res = await fetch(`${herald.url()}/notify`, {
        method: 'POST',
        headers: { origin: 'https://shop.example' },
        body: JSON.stringify({ appId: APP, broadcast: true, data: 1 }),
      });
      assert.equal(res.status, 202);
      assert.ok(res.headers.get('access-control-allow-origin'));
    });

    it('the direct path and the Fastify path answer alike (same status, body, content type)', async () => {
      // Without Origin a plain request takes the direct path; with Origin (CORS) and with a query
      // string it goes through Fastify. Both must give the same answers.
      const cases: { path: string; body: string }[] = [
        { path: '/notify', body: '{"appId":"http-app","users":["same-path"],"data":{"x":1}}' },
        { path: '/notify', body: '{"appId":"http-app","data":1}' },
        { path: '/notify', body: '{"appId":"bad app!","users":["u"],"data":1}' },
        { path: '/notify', body: '{"appId":"http-app","users":["a","b","c","d","e","f"],"data":1}' },
        { path: '/notify', body: '{"appId":"http-app","users":[1],"data":1,"extra":true}' },
        { path: '/notify', body: '{"appId":' },
        { path: '/notify/', body: '{"appId":"http-app","users":["same-path"],"data":2}' },
        { path: '/notify/batch', body: '{"notifications":[{"appId":"http-app","users":["u"],"data":1},{}]}' },
        { path: '/notify/batch', body: '{"notifications":[1,2,3,4]}' },
        { path: '/notify/batch', body: '{"notifications":[]}' },
      ];
      const strip = (text: string) => text.replace(/"id":"[^"]+"|"ts":\d+/g, '');
      for (const c of cases) {
        const direct = await raw(herald, c.path, c.body, { 'content-type': 'application/json' });
        const viaFastify = await raw(herald, c.path, c.body, {
          'content-type': 'application/json',
          origin: 'https://shop.example',
        });
        const viaQuery = await raw(herald, `${c.path}?via=fastify`, c.body, { 'content-type': 'text/plain' });
        assert.equal(
          direct.status,
          viaFastify.status,
          `${c.path} ${c.body}: ${direct.text} / ${viaFastify.text}`,
        );
        assert.equal(
          direct.status,
          viaQuery.status,
          `${c.path} ${c.body}: ${direct.text} / ${viaQuery.text}`,
        );
        assert.equal(strip(direct.text), strip(viaFastify.text), c.body);
        assert.equal(strip(direct.text), strip(viaQuery.text), c.body);
      }
    });

    it('the server survives garbage: binary, huge numbers, deep nesting', async () => {
      assertError(
        await raw(herald, '/notify', Buffer.from([0xff, 0xfe, 0x00, 0x01]), {}),
        400,
        'invalid_json',
      );
      const deep = `${'['.repeat(400)}${']'.repeat(400)}`;
      const r = await post(herald, '/notify', `{"appId":"${APP}","broadcast":true,"data":${deep}}`);
      // Deeper than 128 levels: refused, naming the limit.
      assertError(r, 400, 'validation_failed');
      assert.match(r.text, /deeper than 128 levels/);
      assert.equal((await fetch(`${herald.url()}/healthz`)).status, 200);
    });
  });

  describe('batch', () => {
    it('mixed valid and invalid items get one result each, in order; valid ones are delivered', async () => {
      const s = await connect(herald, APP, { clientId: 'batch-user' });
      const got = collect(s);
      await call(s, 'subscribe', 'batch:topic');
      const res = await post(herald, '/notify/batch', {
        notifications: [
          { appId: APP, users: ['batch-user'], data: { i: 0 } },
          { appId: APP, data: { i: 1 } },
          { appId: APP, eventTopics: ['batch:topic'], data: { i: 2 }, extra: true },
        ],
      });
      assert.equal(res.status, 200, res.text);
      const b = res.body as {
        accepted: number;
        rejected: number;
        results: { ok: boolean; id?: string; error?: { code: string; details?: { path: string }[] } }[];
      };
      assert.equal(b.accepted, 1);
      assert.equal(b.rejected, 2);
      assert.equal(b.results.length, 3);
      assert.equal(b.results[0]?.ok, true);
      assert.equal(typeof b.results[0]?.id, 'string');
      assert.equal(b.results[1]?.ok, false);
      assert.equal(b.results[1]?.error?.code, 'no_target');
      assert.equal(b.results[2]?.error?.code, 'validation_failed');
      assert.ok(b.results[2]?.error?.details?.every((d) => d.path.startsWith('/notifications/2')));
      await fence(herald, APP, s);
      assert.deepEqual(
        got.map((g) => [g.data, g.meta.id]),
        [[{ i: 0 }, b.results[0]?.id]],
      );
      s.close();
    });

    it('per-item limits: payload_too_large and too_many_targets', async () => {
      const res = await post(herald, '/notify/batch', {
        notifications: [
          { appId: APP, broadcast: true, data: 'p'.repeat(LIMITS.maxPayloadBytes) },
          { appId: APP, users: Array.from({ length: 6 }, (_, i) => `u${i}`), data: 1 },
          { appId: APP, broadcast: true, data: 'fine' },
        ],
      });
      assert.equal(res.status, 200, res.text);
      const results = res.body.results as { ok: boolean; error?: { code: string } }[];
      assert.deepEqual(
        results.map((r) => r.error?.code ?? 'ok'),
        ['payload_too_large', 'too_many_targets', 'ok'],
      );
      assert.equal(res.body.accepted, 1);
    });

    it('over MAX_BATCH: 400 batch_too_large; empty or malformed: 400', async () => {
      const four = Array.from({ length: LIMITS.maxBatch + 1 }, () => ({
        appId: APP,
        broadcast: true,
        data: 1,
      }));
      assertError(await post(herald, '/notify/batch', { notifications: four }), 400, 'batch_too_large');
      assertError(await post(herald, '/notify/batch', { notifications: [] }), 400, 'validation_failed');
      assertError(await post(herald, '/notify/batch', { notifications: 'x' }), 400, 'validation_failed');
      assertError(await post(herald, '/notify/batch', {}), 400, 'validation_failed');
      assertError(await post(herald, '/notify/batch', '{'), 400, 'invalid_json');
      const ok = await post(herald, '/notify/batch', { notifications: four.slice(0, LIMITS.maxBatch) });
      assert.equal(ok.status, 200);
      assert.equal(ok.body.accepted, LIMITS.maxBatch);
    });

    it('a batch body over BATCH_BODY_LIMIT: 413 body_too_large (its own limit, above BODY_LIMIT)', async () => {
      const item = (n: number) => ({ appId: APP, broadcast: true, data: 'b'.repeat(n) });
      // Over BODY_LIMIT, under BATCH_BODY_LIMIT: accepted (its items are then over MAX_PAYLOAD_BYTES).
      const fits = { notifications: [item(800), item(800), item(800)] };
      assert.ok(JSON.stringify(fits).length > LIMITS.bodyLimit);
      const big = { notifications: [item(1500), item(1500), item(1500)] };
      assert.ok(JSON.stringify(big).length > LIMITS.batchBodyLimit);
      const ok = await post(herald, '/notify/batch', fits);
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.body.rejected, 3);
      const res = await post(herald, '/notify/batch', big);
      assert.equal(res.status, 413, res.text);
      assert.equal(res.body.error?.code, 'body_too_large');
    });

    it('items that are not objects are rejected one by one', async () => {
      const res = await post(herald, '/notify/batch', {
        notifications: [null, 'x', { appId: APP, broadcast: true, data: 1 }],
      });
      assert.equal(res.status, 200, res.text);
      const results = res.body.results as { ok: boolean; error?: { code: string } }[];
      assert.deepEqual(
        results.map((r) => r.error?.code ?? 'ok'),
        ['validation_failed', 'validation_failed', 'ok'],
      );
    });
  });
});
