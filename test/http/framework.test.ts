/**
 * What Fastify and Node's HTTP parser answer before any route: path parameters of any valid length
 * reach their route (whose schema answers too-long ones), malformed URLs and requests Node cannot parse
 * get Herald's error body `{ error: { code, message } }` with a stable code, not Fastify's or Node's.
 */
import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { clientErrorResponse, MAX_PARAM_LENGTH } from '../../src/http/index.js';
import { rawRequest, startTestHerald, type TestHerald } from '../helpers.js';

const APP = 'framework-app';

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: { error?: { code: string; message: string; details?: unknown } } & Record<string, unknown>;
  text: string;
}

/** One request with the path exactly as given (no normalisation, no agent), a JSON body if any. */
async function send(herald: TestHerald, method: string, path: string, body?: unknown): Promise<Res> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const headers: Record<string, string> = payload === undefined ? {} : { 'content-type': 'application/json' };
  const res = await rawRequest(herald, method, path, payload, headers);
  return { ...res, body: (res.body ?? {}) as Res['body'] };
}

interface RawRes {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Writes `data` on a fresh TCP connection and reads the answer until the server closes it. */
function raw(herald: TestHerald, data: string): Promise<RawRes> {
  const { port } = herald.address();
  return new Promise((resolve, reject) => {
    const socket = netConnect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('the server did not close the connection in 5 s'));
    }, 5000);
    socket.on('data', (c: Buffer) => chunks.push(c));
    // The server may close while the request is still being written (EPIPE / ECONNRESET): the answer
    // already read is what counts.
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('utf8');
      const split = text.indexOf('\r\n\r\n');
      if (split < 0) return reject(new Error(`no HTTP response: ${JSON.stringify(text.slice(0, 200))}`));
      const [statusLine = '', ...lines] = text.slice(0, split).split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const i = line.indexOf(':');
        headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body: text.slice(split + 4) });
    });
    socket.write(data);
  });
}

function assertError(res: Res, status: number, code: string, what: string): void {
  const shown = `${what}: ${res.status} ${res.text.slice(0, 200)}`;
  assert.equal(res.status, status, shown);
  assert.equal(res.body.error?.code, code, shown);
  assert.ok(typeof res.body.error?.message === 'string' && res.body.error.message.length > 0, shown);
  assert.deepEqual(Object.keys(res.body), ['error'], shown);
  assert.match(String(res.headers['content-type']), /^application\/json/, shown);
}

let seq = 0;
function paymentEvent(orderId: string): Record<string, unknown> {
  seq++;
  return {
    eventId: `fw-ev-${seq}`,
    orderId,
    appId: APP,
    merchantId: 'fw-merchant',
    type: 'created',
    occurredAt: 1_700_000_000_000,
  };
}

/** The value of herald_http_errors_total{code="<code>"}. */
async function errorCount(herald: TestHerald, code: string): Promise<number> {
  const text = await (await fetch(`${herald.url()}/metrics`)).text();
  const m = new RegExp(`^herald_http_errors_total\\{code="${code}"\\} ([0-9.]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

describe('HTTP: errors of the framework and of the HTTP parser', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald();
  });
  after(async () => {
    await herald?.cleanup();
  });

  it('ids of up to 128 characters fit the router however they are encoded, and are read back', async () => {
    const ids = [
      `L${'o'.repeat(119)}`,
      'x'.repeat(128),
      // 3 bytes of UTF-8 each: 1,152 characters once percent-encoded.
      '中'.repeat(128),
      // Reserved characters stay percent-encoded longest.
      '/?#%'.repeat(32),
    ];
    for (const orderId of ids) {
      const res = await send(herald, 'POST', '/payments/events', paymentEvent(orderId));
      assert.equal(res.status, 200, res.text);
      const got = await send(herald, 'GET', `/payments/orders/${encodeURIComponent(orderId)}`);
      assert.equal(got.status, 200, `${orderId.slice(0, 20)}: ${got.text.slice(0, 200)}`);
      assert.equal(got.body.orderId, orderId);
    }
    // A valid but unknown id: the route's own 404.
    assertError(
      await send(herald, 'GET', `/payments/orders/${encodeURIComponent('é'.repeat(128))}`),
      404,
      'not_found',
      'unknown order of 128 characters',
    );
    const command = { appId: APP, command: 'ping' };
    for (const deviceId of ['d'.repeat(101), 'd'.repeat(128), '中'.repeat(128)]) {
      assertError(
        await send(herald, 'POST', `/devices/${encodeURIComponent(deviceId)}/commands`, command),
        404,
        'device_offline',
        `command to a deviceId of ${deviceId.length}`,
      );
    }
  });

  it('longer path parameters are 400 validation_failed (the schema, or the router past its limit)', async () => {
    const long = (n: number, ch = 'o') => encodeURIComponent(ch.repeat(n));
    const command = { appId: APP, command: 'ping' };
    const cases: [string, string, unknown?][] = [
      ['GET', `/payments/orders/${long(129)}`],
      ['GET', `/payments/orders/${long(129, '中')}`],
      ['GET', `/payments/orders/${long(MAX_PARAM_LENGTH)}`],
      ['GET', `/payments/orders/${long(MAX_PARAM_LENGTH + 1)}`],
      ['GET', `/payments/orders/${long(5000)}`],
      ['POST', `/devices/${long(129)}/commands`, command],
      ['POST', `/devices/${long(MAX_PARAM_LENGTH + 1)}/commands`, command],
      ['GET', `/notify/${long(65)}`],
      ['GET', `/notify/${long(MAX_PARAM_LENGTH + 1)}`],
    ];
    for (const [method, path, body] of cases) {
      assertError(
        await send(herald, method, path, body),
        400,
        'validation_failed',
        `${method} ${path.length}`,
      );
    }
  });

  it('malformed URLs are 400 bad_request with the error body, on every route (the fast path too)', async () => {
    const before = await errorCount(herald, 'bad_request');
    const command = { appId: APP, command: 'ping' };
    const notify = { appId: APP, broadcast: true, data: 1 };
    const cases: [string, string, unknown?][] = [
      ['GET', '/notify/%ZZ'],
      ['GET', '/payments/orders/%FF'],
      ['GET', '/payments/orders/o%ED%A0%80'],
      ['GET', '/payments/orders/%E4%B8'],
      ['GET', '/%'],
      ['GET', '/nope/%zz'],
      ['POST', '/devices/%ZZ/commands', command],
      ['POST', '/notify%ZZ', notify],
      ['POST', '/notify/%ZZ', notify],
      ['POST', '/notify/batch%', { notifications: [notify] }],
      ['GET', '/admin/api/as-app/-/payments/orders/%ZZ'],
    ];
    for (const [method, path, body] of cases) {
      assertError(await send(herald, method, path, body), 400, 'bad_request', `${method} ${path}`);
    }
    assert.equal(await errorCount(herald, 'bad_request'), before + cases.length);
    // The routes themselves still answer, on the fast path and through Fastify.
    const ok = await send(herald, 'POST', '/notify', notify);
    assert.equal(ok.status, 202, ok.text);
    const viaFastify = await send(herald, 'POST', '/notify?via=fastify', notify);
    assert.equal(viaFastify.status, 202, viaFastify.text);
  });

  it('request heads over the size limit: 431 with the error body and Connection: close', async () => {
    const requests = [
      `GET /notify/${'x'.repeat(20_000)} HTTP/1.1\r\nHost: h\r\n\r\n`,
      `POST /notify?${'a=1&'.repeat(5000)} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`,
      `POST /notify HTTP/1.1\r\nHost: h\r\nX-Big: ${'b'.repeat(20_000)}\r\nContent-Length: 2\r\n\r\n{}`,
    ];
    for (const request of requests) {
      const res = await raw(herald, request);
      const shown = `${request.slice(0, 40)}: ${res.status} ${res.body.slice(0, 200)}`;
      assert.equal(res.status, 431, shown);
      assert.equal(res.headers.connection, 'close', shown);
      assert.match(res.headers['content-type'] ?? '', /^application\/json/, shown);
      assert.equal(Number(res.headers['content-length']), Buffer.byteLength(res.body), shown);
      const body = JSON.parse(res.body) as { error: { code: string; message: string } };
      assert.equal(body.error.code, 'bad_request', shown);
      assert.ok(body.error.message.length > 0, shown);
    }
  });

  it('requests the HTTP parser cannot read: 400 bad_request with the error body and Connection: close', async () => {
    const requests = [
      'HELLO\r\n\r\n',
      'GET / HTTP/9.9\r\nHost: h\r\n\r\n',
      'POST /notify HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n{}',
      'POST /notify HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
      'GET /healthz HTTP/1.1\r\nBad Header Name: x\r\n\r\n',
    ];
    for (const request of requests) {
      const res = await raw(herald, request);
      const shown = `${JSON.stringify(request.slice(0, 40))}: ${res.status} ${res.body.slice(0, 200)}`;
      assert.equal(res.status, 400, shown);
      assert.equal(res.headers.connection, 'close', shown);
      const body = JSON.parse(res.body) as { error: { code: string; message: string } };
      assert.equal(body.error.code, 'bad_request', shown);
    }
    // The node goes on serving.
    const health = await send(herald, 'GET', '/healthz');
    assert.equal(health.status, 200, health.text);
  });
});

describe('HTTP: clientErrorResponse', () => {
  const err = (code: string) => Object.assign(new Error(code), { code });

  it('answers 431 / 408 / 400 with the error body', () => {
    for (const [code, status] of [
      ['HPE_HEADER_OVERFLOW', 431],
      ['ERR_HTTP_REQUEST_TIMEOUT', 408],
      ['HPE_INVALID_METHOD', 400],
    ] as const) {
      const response = clientErrorResponse(err(code), new PassThrough());
      assert.ok(response, code);
      assert.match(response, new RegExp(`^HTTP/1\\.1 ${status} `), code);
      assert.match(response, /\r\nConnection: close\r\n/);
      const body = JSON.parse(response.slice(response.indexOf('\r\n\r\n') + 4));
      assert.equal(body.error.code, 'bad_request');
    }
  });

  it('writes nothing on a reset or closed connection, or into a response already started', () => {
    assert.equal(clientErrorResponse(err('ECONNRESET'), new PassThrough()), undefined);
    const closed = new PassThrough();
    closed.destroy();
    assert.equal(clientErrorResponse(err('HPE_INVALID_METHOD'), closed), undefined);
    const busy = Object.assign(new PassThrough(), { _httpMessage: { headersSent: true } });
    assert.equal(clientErrorResponse(err('HPE_INVALID_METHOD'), busy), undefined);
    const idle = Object.assign(new PassThrough(), { _httpMessage: { headersSent: false } });
    assert.ok(clientErrorResponse(err('HPE_INVALID_METHOD'), idle));
  });
});
