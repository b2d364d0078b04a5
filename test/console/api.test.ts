/**
 * The console's JSON API without a browser: query strings of numbers are parsed (the validator does not
 * coerce them), and the as-app forward only ever injects a path of its allow-list, never one that `..`,
 * an encoded slash or a backslash would turn into another route.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { asAppPath } from '../../src/console/api.js';
import {
  closeAll,
  collect,
  connect,
  fence,
  rawRequest,
  startTestHerald,
  type TestHerald,
} from '../helpers.js';

const APP = 'console-api-app';

interface Res {
  status: number;
  body: { error?: { code: string; message: string } } & Record<string, unknown>;
  text: string;
}

/** One request with the path exactly as given (fetch would resolve `..` and `\` before sending). */
async function send(herald: TestHerald, method: string, path: string, body?: unknown): Promise<Res> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const headers: Record<string, string> = payload === undefined ? {} : { 'content-type': 'application/json' };
  const res = await rawRequest(herald, method, path, payload, headers);
  return { ...res, body: (res.body ?? {}) as Res['body'] };
}

describe('console API: asAppPath (what the as-app forward injects)', () => {
  const P = `/admin/api/as-app/${APP}`;

  it('forwards the allow-list as sent, still percent-encoded', () => {
    const cases: [string, string, string][] = [
      ['GET', `${P}/payments/orders`, '/payments/orders'],
      ['GET', `${P}/payments/orders/`, '/payments/orders/'],
      ['GET', `${P}/payments/orders?limit=5&state=paid`, '/payments/orders'],
      ['GET', `${P}/payments/orders/o-1`, '/payments/orders/o-1'],
      ['GET', `${P}/payments/orders/%2500`, '/payments/orders/%2500'],
      ['GET', `${P}/payments/orders/%E4%B8%AD`, '/payments/orders/%E4%B8%AD'],
      ['GET', `${P}/payments/orders/a..b`, '/payments/orders/a..b'],
      ['GET', `${P}/payments/orders/...`, '/payments/orders/...'],
      ['GET', `${P}/payments/orders/a#/../../metrics`, '/payments/orders/a'],
      ['GET', `${P}/payments/stats?minutes=15`, '/payments/stats'],
      ['GET', `${P}/devices`, '/devices'],
      ['GET', `/admin/api/as-app/-/devices`, '/devices'],
      ['GET', `/admin/api/as-app/a%2Fb/devices`, '/devices'],
      ['GET', `${P}//devices`, '/devices'],
      ['POST', `${P}/devices/pos-1/commands`, '/devices/pos-1/commands'],
      ['POST', `${P}/devices/pos%201/commands`, '/devices/pos%201/commands'],
    ];
    for (const [method, url, expected] of cases) assert.equal(asAppPath(method, url), expected, url);
  });

  it('refuses encoded separators, dot segments and routes outside the allow-list', () => {
    const cases: [string, string][] = [
      ['POST', `${P}/notify`],
      ['GET', `${P}/metrics`],
      ['GET', `${P}/`],
      ['GET', P],
      ['POST', `${P}/devices/..%2Fnotify`],
      ['POST', `${P}/devices/..%2fnotify`],
      ['GET', `${P}/devices/..%2F..%2Fmetrics`],
      ['GET', `${P}/devices/x%2F..%2F..%2Fmetrics`],
      ['GET', `${P}/payments/orders/%2F`],
      ['GET', `${P}/payments/orders/%5C`],
      ['GET', `${P}/payments/orders/%5c..%5cmetrics`],
      ['GET', `${P}/payments/orders\\..\\..\\metrics`],
      ['GET', `${P}/payments/orders/..`],
      ['GET', `${P}/payments/orders/.`],
      ['GET', `${P}/payments/orders/%2e%2e`],
      ['GET', `${P}/payments/orders/%2E%2E`],
      ['GET', `${P}/payments/orders/.%2E`],
      ['GET', `${P}/payments/orders/%2e`],
      ['GET', `${P}/devices/../metrics`],
      ['GET', `${P}/payments/../../metrics`],
      ['GET', `${P}/payments/./orders`],
      ['POST', `${P}/devices/../notify/batch`],
      ['POST', `${P}/devices/x/commands/..`],
      ['POST', `${P}/devices/%2e%2e/commands`],
      ['POST', `${P}/devices/pos-1/commands/extra`],
      ['POST', `${P}/devices`],
      ['GET', `${P}/devices/pos-1/commands`],
      ['POST', `${P}/payments/orders`],
      ['DELETE', `${P}/devices`],
      ['GET', `http://localhost${P}/devices`],
    ];
    for (const [method, url] of cases) assert.equal(asAppPath(method, url), undefined, `${method} ${url}`);
  });
});

describe('console API over HTTP (open mode, no ADMIN_TOKEN)', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald();
  });
  after(async () => {
    await herald?.cleanup();
  });

  it('GET /admin/api/topics?limit=N: 1-200 works, anything else is 400 validation_failed', async () => {
    for (const q of ['', '?limit=1', '?limit=5', '?limit=200', '?limit=007', `?appId=${APP}&limit=3`]) {
      const res = await send(herald, 'GET', `/admin/api/topics${q}`);
      assert.equal(res.status, 200, `${q}: ${res.text}`);
      assert.ok(Array.isArray(res.body), `${q}: ${res.text}`);
    }
    for (const q of ['0', '201', '-1', '1.5', '1e2', 'abc', '', '%20', '9999999999', '5&limit=6']) {
      const res = await send(herald, 'GET', `/admin/api/topics?limit=${q}`);
      assert.equal(res.status, 400, `limit=${q}: ${res.text}`);
      assert.equal(res.body.error?.code, 'validation_failed', `limit=${q}: ${res.text}`);
    }
  });

  it('as-app forwards its allow-list: orders, stats, devices, a command', async () => {
    for (const path of ['/payments/orders', '/payments/stats', '/devices']) {
      const res = await send(herald, 'GET', `/admin/api/as-app/${APP}${path}`);
      assert.equal(res.status, 200, `${path}: ${res.text}`);
    }
    // Forwarded as sent: the order id is the literal `%00` (unknown), not a NUL.
    const order = await send(herald, 'GET', `/admin/api/as-app/${APP}/payments/orders/%2500`);
    assert.equal(order.status, 404, order.text);
    assert.equal(order.body.error?.code, 'not_found');
    const cmd = await send(herald, 'POST', `/admin/api/as-app/${APP}/devices/pos%20off/commands`, {
      appId: APP,
      command: 'ping',
    });
    assert.equal(cmd.status, 404, cmd.text);
    assert.equal(cmd.body.error?.code, 'device_offline');
  });

  it('as-app refuses paths that would reach another route (404 not_found), and forwards nothing', async () => {
    const s = await connect(herald, APP, { clientId: 'console-api-watcher' });
    try {
      const got = collect(s);
      const P = `/admin/api/as-app/${APP}`;
      const data = { appId: APP, broadcast: true, data: 'via the console' };
      const cases: [string, string][] = [
        ['POST', `${P}/notify`],
        ['POST', `${P}/devices/..%2Fnotify`],
        ['POST', `${P}/devices/..%2fnotify`],
        ['POST', `${P}/devices/%2E%2E%2Fnotify`],
        ['POST', `${P}/devices/%2e%2e/notify`],
        ['POST', `${P}/devices/../notify`],
        ['POST', `${P}/devices/..%5Cnotify`],
        ['POST', `${P}/devices\\..\\notify`],
        ['POST', `${P}/devices/.%2e/notify/batch`],
        ['GET', `${P}/devices/..%2F..%2Fmetrics`],
        ['GET', `${P}/devices/../../metrics`],
        ['GET', `${P}/payments/orders/..%2F..%2F..%2Fmetrics`],
        ['GET', `${P}/payments/orders/%2E%2E/%2E%2E/%2E%2E/metrics`],
        ['GET', `${P}/payments/orders/.`],
      ];
      for (const [method, path] of cases) {
        const res = await send(herald, method, path, method === 'POST' ? data : undefined);
        assert.equal(res.status, 404, `${method} ${path}: ${res.text.slice(0, 200)}`);
        assert.equal(res.body.error?.code, 'not_found', `${method} ${path}: ${res.text.slice(0, 200)}`);
        assert.doesNotMatch(res.text, /# HELP/, `${method} ${path}`);
      }
      await fence(herald, APP, s);
      assert.deepEqual(got, [], 'a refused forward published a notification');
    } finally {
      closeAll(s);
    }
  });
});
