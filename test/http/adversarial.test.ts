/**
 * Adversarial input against a running node: every kind of bad request must get a clear 4xx error with a
 * stable code (`{ error: { code, message } }`), and never a 5xx, a hang, a crash or lost accepted data.
 * Each `it` sends a table of requests and reports every request that broke the contract at once.
 */
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import type { Socket } from 'socket.io-client';
import WebSocket from 'ws';
import {
  call,
  closeAll,
  collect,
  collectErrors,
  connect,
  connectWith,
  rawRequest,
  sleep,
  startTestHerald,
  type TestHerald,
  until,
} from '../helpers.js';

const APP = 'adv-app';
const LIMITS = {
  maxTargets: 5,
  bodyLimit: 64 * 1024,
  batchBodyLimit: 128 * 1024,
  maxPayloadBytes: 8 * 1024,
  maxBatch: 5,
  webhookAllowPrivateNetworks: true,
};
/** Levels of nesting of the "deeply nested JSON" cases (20 KB of brackets, well within the limits). */
const DEPTH = 10_000;
const deepArray = (n: number) => '['.repeat(n) + ']'.repeat(n);

type Headers = Record<string, string>;
interface Res {
  status: number;
  text: string;
  body: unknown;
}

/** One request exactly as given (no agent, no added headers); rejects when no answer comes in 5 s. */
function send(
  herald: TestHerald,
  method: string,
  path: string,
  body?: string | Buffer,
  headers: Headers = {},
): Promise<Res> {
  return rawRequest(herald, method, path, body, headers);
}

function errorOf(body: unknown): { code?: unknown; message?: unknown } | undefined {
  if (typeof body !== 'object' || body === null || !('error' in body)) return undefined;
  const e = (body as { error: unknown }).error;
  return typeof e === 'object' && e !== null ? (e as { code?: unknown; message?: unknown }) : undefined;
}

/** What a case expects: a status (or one of several) and, for errors, the code (or one of several). */
interface Expect {
  status: number | number[];
  code?: string | string[];
}

const J: Headers = { 'content-type': 'application/json' };

interface Case {
  label: string;
  method: string;
  path: string;
  body?: string | Buffer;
  headers?: Headers;
  expect: Expect;
}

const c = (
  label: string,
  method: string,
  path: string,
  body: string | Buffer | undefined,
  expect: Expect,
  headers: Headers = body === undefined ? {} : J,
): Case => ({ label, method, path, body, headers, expect });

/** Why a response breaks the contract (or undefined when it keeps it). */
function problem(res: Res, expect: Expect): string | undefined {
  const statuses = Array.isArray(expect.status) ? expect.status : [expect.status];
  const shown = `${res.status} ${res.text.slice(0, 160)}`;
  if (res.status >= 500) return `answered ${shown}`;
  if (!statuses.includes(res.status)) return `expected ${statuses.join('|')}, got ${shown}`;
  if (res.status >= 400) {
    const e = errorOf(res.body);
    if (typeof e?.code !== 'string' || typeof e.message !== 'string' || e.message.length === 0) {
      return `error body without { error: { code, message } }: ${shown}`;
    }
    const codes = expect.code === undefined ? undefined : [expect.code].flat();
    if (codes && !codes.includes(e.code)) return `expected code ${codes.join('|')}, got ${shown}`;
  }
  return undefined;
}

/** Sends every case in order; returns the cases that broke the contract, with what they got. */
async function check(herald: TestHerald, cases: Case[]): Promise<string[]> {
  const problems: string[] = [];
  for (const k of cases) {
    let res: Res;
    try {
      res = await send(herald, k.method, k.path, k.body, k.headers);
    } catch (err) {
      problems.push(`${k.label}: ${(err as Error).message}`);
      continue;
    }
    const p = problem(res, k.expect);
    if (p) problems.push(`${k.label} (${k.method} ${k.path.slice(0, 60)}): ${p}`);
  }
  return problems;
}

/** Sends every case in order; fails once with the list of cases that broke the contract. */
async function sweep(herald: TestHerald, cases: Case[]): Promise<void> {
  const problems = await check(herald, cases);
  assert.deepEqual(problems, [], `${problems.length} of ${cases.length} requests broke the contract`);
}

const E400 = (code?: string | string[]): Expect => ({ status: 400, ...(code ? { code } : {}) });
const OK = (status = 200): Expect => ({ status });
/** Any client error with a code (the exact code is not what the case is about). */
const ANY4XX: Expect = { status: [400, 404, 405, 409, 413, 414, 415, 422, 431] };

const notify = (extra: Record<string, unknown>) => JSON.stringify({ appId: APP, broadcast: true, ...extra });

let seq = 0;
/** A valid payment event with fresh ids, `extra` merged over it. */
function event(extra: Record<string, unknown> = {}): Record<string, unknown> {
  seq++;
  return {
    eventId: `adv-ev-${seq}`,
    orderId: `adv-order-${seq}`,
    appId: APP,
    merchantId: 'adv-merchant',
    type: 'created',
    occurredAt: 1_700_000_000_000,
    ...extra,
  };
}
const ev = (extra: Record<string, unknown> = {}) => JSON.stringify(event(extra));

/** A Socket.IO connection spoken by hand (Engine.IO v4 text frames), to send frames no client would. */
class RawSocket {
  readonly frames: string[] = [];
  closed = false;
  private waiters: (() => void)[] = [];

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => {
      const text = isBinary ? '<binary>' : data.toString();
      if (text === '2') ws.send('3');
      this.frames.push(text);
      this.wake();
    });
    ws.on('close', () => {
      this.closed = true;
      this.wake();
    });
    ws.on('error', () => undefined);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves when `check` holds (checked on every frame and on close), or rejects after `ms`. */
  async waitFor(check: () => boolean, ms: number, what: string): Promise<void> {
    const end = Date.now() + ms;
    while (!check()) {
      const left = end - Date.now();
      if (left <= 0) throw new Error(`raw socket: timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  static async open(herald: TestHerald, clientId: string): Promise<RawSocket> {
    const { port } = herald.address();
    const ws = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`);
    const s = new RawSocket(ws);
    await s.waitFor(() => s.frames.some((f) => f.startsWith('0{')), 3000, 'the Engine.IO open packet');
    ws.send(`40/${APP},${JSON.stringify({ clientId })}`);
    await s.waitFor(() => s.frames.some((f) => f.startsWith(`40/${APP},`)), 3000, 'the namespace connect');
    return s;
  }

  send(frame: string | Buffer): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(frame);
  }

  /** The ack frame `43/<app>,<id>[...]` parsed, once it arrives. */
  async ack(id: number, ms = 3000): Promise<unknown[]> {
    const prefix = `43/${APP},${id}[`;
    await this.waitFor(() => this.frames.some((f) => f.startsWith(prefix)), ms, `ack ${id}`);
    const frame = this.frames.find((f) => f.startsWith(prefix)) as string;
    return JSON.parse(frame.slice(prefix.length - 1)) as unknown[];
  }

  close(): void {
    this.ws.close();
  }
}

describe('adversarial input: clear 4xx errors, no crash, no hang, no lost data', () => {
  let herald: TestHerald;
  let sink: Server;
  let sinkUrl = '';
  const sockets: Socket[] = [];
  /** Payment events the node accepted during the sweep: they must still be there at the end. */
  const accepted: { orderId: string; state: string }[] = [];

  before(async () => {
    sink = createServer((req, res) => {
      req.resume();
      req.on('end', () => res.end('success'));
    });
    await new Promise<void>((resolve) => sink.listen(0, '127.0.0.1', resolve));
    sinkUrl = `http://127.0.0.1:${(sink.address() as AddressInfo).port}/hook`;
    herald = await startTestHerald(LIMITS);
  });
  after(async () => {
    closeAll(...sockets);
    await herald.cleanup();
    await new Promise<void>((resolve) => sink.close(() => resolve()));
  });

  describe('HTTP bodies', () => {
    // The same body cases on both paths of POST /notify: the fast path (plain requests) and Fastify
    // (taken when the request has an Origin header).
    for (const [path, extra] of [
      ['fast path', {}],
      ['Fastify path', { origin: 'http://browser.example' }],
    ] as const) {
      it(`POST /notify and /notify/batch (${path}): content types, empty, malformed and non-object bodies`, async () => {
        const h = (more: Headers = {}): Headers => ({ ...J, ...extra, ...more });
        const good = notify({ data: 1 });
        const cases: Case[] = [
          c('xml content type', 'POST', '/notify', good, OK(202), h({ 'content-type': 'application/xml' })),
          c(
            'multipart content type',
            'POST',
            '/notify',
            good,
            { status: [202, 400, 415] },
            h({ 'content-type': 'multipart/form-data; boundary=x' }),
          ),
          c('empty body', 'POST', '/notify', '', E400(), h()),
          c('whitespace body', 'POST', '/notify', ' \r\n\t ', E400('invalid_json'), h()),
          c('truncated JSON', 'POST', '/notify', '{"appId":', E400('invalid_json'), h()),
          c('single quotes', 'POST', '/notify', "{'appId':'x'}", E400('invalid_json'), h()),
          c('trailing garbage', 'POST', '/notify', `${good}}`, E400('invalid_json'), h()),
          c('UTF-8 BOM', 'POST', '/notify', `\ufeff${good}`, E400('invalid_json'), h()),
          c('invalid UTF-8 bytes', 'POST', '/notify', Buffer.from([0xff, 0xfe, 0x7b, 0x7d]), E400(), h()),
          c('NUL bytes', 'POST', '/notify', Buffer.from([0x7b, 0x00, 0x7d]), E400('invalid_json'), h()),
          c('JSON null', 'POST', '/notify', 'null', E400('validation_failed'), h()),
          c('JSON array', 'POST', '/notify', '[]', E400('validation_failed'), h()),
          c('JSON number', 'POST', '/notify', '42', E400('validation_failed'), h()),
          c('JSON string', 'POST', '/notify', '"x"', E400('validation_failed'), h()),
          c('JSON true', 'POST', '/notify', 'true', E400('validation_failed'), h()),
          c('array of notifications', 'POST', '/notify', `[${good}]`, E400('validation_failed'), h()),
          c(
            'body one byte over BODY_LIMIT',
            'POST',
            '/notify',
            notify({ data: 'x'.repeat(LIMITS.bodyLimit) }).slice(0, LIMITS.bodyLimit + 1),
            { status: 413, code: 'body_too_large' },
            h(),
          ),
          c(
            'data one byte over MAX_PAYLOAD_BYTES',
            'POST',
            '/notify',
            notify({ data: 'x'.repeat(LIMITS.maxPayloadBytes - 1) }),
            { status: 413, code: 'payload_too_large' },
            h(),
          ),
          c(
            'data exactly MAX_PAYLOAD_BYTES',
            'POST',
            '/notify',
            notify({ data: 'x'.repeat(LIMITS.maxPayloadBytes - 2) }),
            OK(202),
            h(),
          ),
          c('batch not an object', 'POST', '/notify/batch', '[]', E400('validation_failed'), h()),
          c('batch of 0', 'POST', '/notify/batch', '{"notifications":[]}', E400('validation_failed'), h()),
          c(
            'batch of MAX_BATCH + 1',
            'POST',
            '/notify/batch',
            JSON.stringify({ notifications: Array.from({ length: LIMITS.maxBatch + 1 }, () => ({})) }),
            E400('batch_too_large'),
            h(),
          ),
          c('batch as object', 'POST', '/notify/batch', '{"notifications":{"0":{}}}', E400(), h()),
          c('batch extra key', 'POST', '/notify/batch', `{"notifications":[${good}],"x":1}`, E400(), h()),
          c(
            'batch body over BATCH_BODY_LIMIT',
            'POST',
            '/notify/batch',
            JSON.stringify({ notifications: [{ appId: APP, data: 'x'.repeat(LIMITS.batchBodyLimit) }] }),
            { status: 413, code: 'body_too_large' },
            h(),
          ),
        ];
        await sweep(herald, cases);
      });
    }

    it('a batch answers bad items one by one, never with internal_error', async () => {
      const res = await send(
        herald,
        'POST',
        '/notify/batch',
        JSON.stringify({
          notifications: [null, 'x', [], { appId: APP, broadcast: 'yes', data: 1 }, { appId: APP, data: 1 }],
        }),
        J,
      );
      assert.equal(res.status, 200, res.text);
      const body = res.body as {
        accepted: number;
        rejected: number;
        results: { ok: boolean; error?: unknown }[];
      };
      assert.equal(body.accepted, 0);
      assert.equal(body.rejected, 5);
      for (const r of body.results) {
        assert.equal(r.ok, false);
        assert.equal(typeof errorOf({ error: r.error })?.code, 'string');
        assert.notEqual(errorOf({ error: r.error })?.code, 'internal_error');
      }
    });

    it('POST /notify fields: wrong types, control characters, prototype keys', async () => {
      const n = (body: Record<string, unknown>) => JSON.stringify(body);
      await sweep(herald, [
        c(
          'appId number',
          'POST',
          '/notify',
          n({ appId: 5, broadcast: true, data: 1 }),
          E400('validation_failed'),
        ),
        c('appId NUL', 'POST', '/notify', n({ appId: 'a\u0000', broadcast: true, data: 1 }), E400()),
        c(
          'appId lone surrogate',
          'POST',
          '/notify',
          n({ appId: '\ud800', broadcast: true, data: 1 }),
          E400(),
        ),
        c(
          'appId 65 chars',
          'POST',
          '/notify',
          n({ appId: 'a'.repeat(65), broadcast: true, data: 1 }),
          E400(),
        ),
        c('appId unicode', 'POST', '/notify', n({ appId: 'приложение', broadcast: true, data: 1 }), E400()),
        c('users NUL', 'POST', '/notify', n({ appId: APP, users: ['a\u0000b'], data: 1 }), E400()),
        c('users number', 'POST', '/notify', n({ appId: APP, users: [1], data: 1 }), E400()),
        c('users string', 'POST', '/notify', n({ appId: APP, users: 'alice', data: 1 }), E400()),
        c('users 129 chars', 'POST', '/notify', n({ appId: APP, users: ['u'.repeat(129)], data: 1 }), E400()),
        c(
          'users MAX_TARGETS + 1',
          'POST',
          '/notify',
          n({ appId: APP, users: ['1', '2', '3', '4', '5', '6'], data: 1 }),
          E400('too_many_targets'),
        ),
        c('devices C1 control', 'POST', '/notify', n({ appId: APP, devices: ['d\u0085'], data: 1 }), E400()),
        c('topic with space', 'POST', '/notify', n({ appId: APP, eventTopics: ['a b'], data: 1 }), E400()),
        c(
          'topic 201 chars',
          'POST',
          '/notify',
          n({ appId: APP, eventTopics: ['t'.repeat(201)], data: 1 }),
          E400(),
        ),
        c('topic empty', 'POST', '/notify', n({ appId: APP, eventTopics: [''], data: 1 }), E400()),
        c('broadcast "true"', 'POST', '/notify', n({ appId: APP, broadcast: 'true', data: 1 }), E400()),
        c('ack 1', 'POST', '/notify', n({ appId: APP, broadcast: true, ack: 1, data: 1 }), E400()),
        c('no target', 'POST', '/notify', n({ appId: APP, data: 1 }), E400('no_target')),
        c('empty targets', 'POST', '/notify', n({ appId: APP, users: [], data: 1 }), E400('no_target')),
        c('no data', 'POST', '/notify', n({ appId: APP, broadcast: true }), E400()),
        c('unknown key', 'POST', '/notify', n({ appId: APP, broadcast: true, data: 1, x: 1 }), E400()),
        c(
          '__proto__ key',
          'POST',
          '/notify',
          `{"appId":"${APP}","broadcast":true,"data":1,"__proto__":{"polluted":1}}`,
          E400('validation_failed'),
        ),
        c(
          'appId only in __proto__',
          'POST',
          '/notify',
          `{"__proto__":{"appId":"${APP}"},"broadcast":true,"data":1}`,
          E400('validation_failed'),
        ),
        c(
          'constructor.prototype key',
          'POST',
          '/notify',
          notify({ data: 1, constructor: { prototype: { polluted: 1 } } }),
          E400('validation_failed'),
        ),
        c('data -0', 'POST', '/notify', notify({ data: -0 }), OK(202)),
        c(
          'data 100 levels deep',
          'POST',
          '/notify',
          `{"appId":"${APP}","broadcast":true,"data":${deepArray(100)}}`,
          OK(202),
        ),
        c(
          'users lone surrogate',
          'POST',
          '/notify',
          n({ appId: APP, users: ['\ud800'], data: 1 }),
          E400('validation_failed'),
        ),
        c(
          'data 129 levels deep',
          'POST',
          '/notify',
          `{"appId":"${APP}","broadcast":true,"data":${deepArray(129)}}`,
          E400('validation_failed'),
        ),
      ]);
      assert.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype was polluted');
    });

    it('an aborted upload and a half-sent body do not take the node down', async () => {
      const { port } = herald.address();
      for (const origin of [undefined, 'http://browser.example']) {
        await new Promise<void>((resolve) => {
          const req = httpRequest({
            host: '127.0.0.1',
            port,
            path: '/notify',
            method: 'POST',
            agent: false,
            headers: { ...J, 'content-length': '1000', ...(origin ? { origin } : {}) },
          });
          req.on('error', () => resolve());
          req.on('close', () => resolve());
          req.write('{"appId":"adv-app","bro');
          setTimeout(() => req.destroy(), 50);
        });
      }
      const res = await send(herald, 'GET', '/healthz');
      assert.equal(res.status, 200);
    });
  });

  describe('URLs, query strings, path parameters, methods', () => {
    it('bad queries of GET /payments/orders, /payments/stats and /devices are 400 validation_failed', async () => {
      const v = E400('validation_failed');
      await sweep(herald, [
        c('repeated state', 'GET', '/payments/orders?state=created&state=paying', undefined, v),
        c('unknown state', 'GET', '/payments/orders?state=bogus', undefined, v),
        c('state __proto__', 'GET', '/payments/orders?state=__proto__', undefined, v),
        c('page 0', 'GET', '/payments/orders?page=0', undefined, v),
        c('page -1', 'GET', '/payments/orders?page=-1', undefined, v),
        c('page 1e3', 'GET', '/payments/orders?page=1e3', undefined, v),
        c('page NaN', 'GET', '/payments/orders?page=NaN', undefined, v),
        c('page over the max', 'GET', '/payments/orders?page=9999999', undefined, v),
        c('page empty', 'GET', '/payments/orders?page=', undefined, v),
        c('page twice', 'GET', '/payments/orders?page=1&page=2', undefined, v),
        c('limit 501', 'GET', '/payments/orders?limit=501', undefined, v),
        c('from not a time', 'GET', '/payments/orders?from=yesterday', undefined, v),
        c('from empty', 'GET', '/payments/orders?from=', undefined, v),
        c('from %ZZ', 'GET', '/payments/orders?from=%ZZ', undefined, v),
        c('from %00', 'GET', '/payments/orders?from=%00', undefined, v),
        c('from 41 chars', 'GET', `/payments/orders?from=${'1'.repeat(41)}`, undefined, v),
        c('to past the Date range', 'GET', '/payments/orders?to=8640000000000001', undefined, v),
        c('merchantId NUL', 'GET', '/payments/orders?merchantId=%00', undefined, v),
        c('appId twice', 'GET', `/payments/orders?appId=${APP}&appId=${APP}`, undefined, v),
        c('appId with space', 'GET', '/payments/orders?appId=a%20b', undefined, v),
        c('__proto__ param', 'GET', '/payments/orders?__proto__=x', undefined, v),
        c('constructor param', 'GET', '/payments/orders?constructor=x', undefined, v),
        c('unknown param', 'GET', '/payments/orders?x=1', undefined, v),
        c('8 KB unknown param', 'GET', `/payments/orders?${'q'.repeat(8000)}=1`, undefined, v),
        c(
          'from after to',
          'GET',
          '/payments/orders?from=2030-01-01T00:00Z&to=2020-01-01T00:00Z',
          undefined,
          OK(),
        ),
        c('minutes 0', 'GET', '/payments/stats?minutes=0', undefined, v),
        c('minutes 1441', 'GET', '/payments/stats?minutes=1441', undefined, v),
        c('stats merchantId twice', 'GET', '/payments/stats?merchantId=a&merchantId=b', undefined, v),
        c('online yes', 'GET', '/devices?online=yes', undefined, v),
        c('online twice', 'GET', '/devices?online=true&online=false', undefined, v),
        c('devices limit 5001', 'GET', '/devices?limit=5001', undefined, v),
        c('order appId invalid', 'GET', '/payments/orders/x?appId=a%20b', undefined, v),
        c('order unknown param', 'GET', '/payments/orders/x?y=1', undefined, v),
      ]);
    });

    it('path parameters and methods: 4xx with a code', async () => {
      await sweep(herald, [
        c('receipt id %00', 'GET', '/notify/%00', undefined, { status: [400, 404] }),
        c('receipt id 65 chars', 'GET', `/notify/${'n'.repeat(65)}`, undefined, E400('validation_failed')),
        c('receipt id unknown', 'GET', '/notify/nope', undefined, { status: 404, code: 'not_found' }),
        c(
          'command deviceId %00',
          'POST',
          '/devices/%00/commands',
          '{"appId":"adv-app","command":"x"}',
          E400(),
        ),
        c('command offline', 'POST', '/devices/d1/commands', '{"appId":"adv-app","command":"x"}', {
          status: 404,
          code: 'device_offline',
        }),
        c(
          'command timeoutMs 0',
          'POST',
          '/devices/d1/commands',
          '{"appId":"adv-app","command":"x","timeoutMs":0}',
          E400(),
        ),
        c(
          'command timeoutMs 1e309',
          'POST',
          '/devices/d1/commands',
          '{"appId":"adv-app","command":"x","timeoutMs":1e309}',
          E400(),
        ),
        c('command without command', 'POST', '/devices/d1/commands', '{"appId":"adv-app"}', E400()),
        c('command body array', 'POST', '/devices/d1/commands', '[]', E400()),
        c('PUT /notify', 'PUT', '/notify', '{}', { status: [404, 405] }),
        c('DELETE /notify', 'DELETE', '/notify', undefined, { status: [404, 405] }),
        c('PATCH /notify/batch', 'PATCH', '/notify/batch', '{}', { status: [404, 405] }),
        c('GET /notify', 'GET', '/notify', undefined, { status: [404, 405] }),
        c('POST /healthz', 'POST', '/healthz', '{}', { status: [404, 405] }),
        c('DELETE /payments/events', 'DELETE', '/payments/events', undefined, { status: [404, 405] }),
        c('TRACE /notify', 'TRACE', '/notify', undefined, { status: [400, 404, 405] }),
        c('GET //', 'GET', '//', undefined, { status: 404 }),
        c('unknown route', 'GET', '/nope/../../etc/passwd', undefined, { status: 404 }),
      ]);
    });
  });

  describe('payment events', () => {
    it('a wrong type or value in any field is 400 invalid_event', async () => {
      const bad = E400('invalid_event');
      const cases: Case[] = [];
      const fields: [string, unknown[]][] = [
        ['eventId', [null, 5, '', 'e'.repeat(129), ['e'], { a: 1 }, 'e\u0000', 'e\u007f']],
        ['orderId', [null, 5, '', 'o'.repeat(129), 'o o', 'o\t', 'o\u0001', true]],
        ['appId', [null, 5, '', 'a b', 'a'.repeat(65), '\ud800', 'a/b']],
        ['merchantId', [null, 5, '', 'm m', 'm\n', []]],
        ['deviceId', [5, '', 'd\u0000', {}]],
        ['type', [null, 5, 'bogus', '__proto__', 'constructor', 'toString', 'CREATED']],
        ['amount', ['4', -1, 1e15, true, null, 1.001, 1e-7, {}]],
        ['currency', ['usd', 'US', 'USDX', 5, '']],
        [
          'occurredAt',
          [
            null,
            true,
            -1,
            1.5,
            '',
            'yesterday',
            '2024-13-45T99:99Z',
            '2024-01-01',
            '1e16',
            1e16,
            8.64e15 + 1,
          ],
        ],
        [
          'notifyUrl',
          [5, '', 'javascript:alert(1)', 'ftp://x/', 'http://exa mple.com/', `http://x/${'a'.repeat(2048)}`],
        ],
        [
          'meta',
          [
            null,
            [],
            'x',
            5,
            { reason: 5 },
            { reason: '' },
            { reason: 'r'.repeat(201) },
            { big: 'x'.repeat(8200) },
          ],
        ],
      ];
      for (const [field, values] of fields) {
        for (const value of values) {
          cases.push(
            c(
              `${field} = ${JSON.stringify(value)?.slice(0, 30)}`,
              'POST',
              '/payments/events',
              ev({ [field]: value }),
              bad,
            ),
          );
        }
      }
      for (const field of ['eventId', 'orderId', 'appId', 'merchantId', 'type', 'occurredAt']) {
        const e = event();
        delete e[field];
        cases.push(c(`missing ${field}`, 'POST', '/payments/events', JSON.stringify(e), bad));
      }
      cases.push(
        c('unknown field', 'POST', '/payments/events', ev({ extra: 1 }), bad),
        c('__proto__ field', 'POST', '/payments/events', ev().replace(/}$/, ',"__proto__":{"x":1}}'), bad),
        c('constructor field', 'POST', '/payments/events', ev({ constructor: { x: 1 } }), bad),
        c('body null', 'POST', '/payments/events', 'null', bad),
        c('body array', 'POST', '/payments/events', '[]', bad),
        c('body number', 'POST', '/payments/events', '1e309', bad),
        c('body string', 'POST', '/payments/events', '"x"', bad),
        c('body {}', 'POST', '/payments/events', '{}', bad),
        c('empty body', 'POST', '/payments/events', '', E400()),
        c('invalid JSON', 'POST', '/payments/events', '{"eventId":', E400('invalid_json')),
        c('events empty', 'POST', '/payments/events', '{"events":[]}', E400('validation_failed')),
        c('events null', 'POST', '/payments/events', '{"events":null}', E400('validation_failed')),
        c('events object', 'POST', '/payments/events', '{"events":{"0":{}}}', E400('validation_failed')),
        c(
          'events MAX_BATCH + 1',
          'POST',
          '/payments/events',
          JSON.stringify({ events: Array.from({ length: LIMITS.maxBatch + 1 }, () => event()) }),
          E400('validation_failed'),
        ),
        c(
          'events + extra key',
          'POST',
          '/payments/events',
          JSON.stringify({ events: [event()], x: 1 }),
          E400(),
        ),
        c('refund of no order', 'POST', '/payments/events', ev({ type: 'refunded', amount: 1 }), {
          status: 409,
          code: 'invalid_transition',
        }),
      );
      await sweep(herald, cases);
    });

    it('a batch of non-objects answers each event with invalid_event', async () => {
      const res = await send(herald, 'POST', '/payments/events', '{"events":[null,1,"x",[],{}]}', J);
      assert.equal(res.status, 200, res.text);
      const body = res.body as { accepted: number; results: { ok: boolean; error?: unknown }[] };
      assert.equal(body.accepted, 0);
      assert.deepEqual(
        body.results.map((r) => errorOf({ error: r.error })?.code),
        ['invalid_event', 'invalid_event', 'invalid_event', 'invalid_event', 'invalid_event'],
      );
    });

    it('edge values that are valid are stored and read back', async () => {
      const edge = [
        event({ amount: 0 }),
        event({ amount: -0 }),
        event({ amount: 1e14 }),
        event({ occurredAt: 0 }),
        event({ occurredAt: '1970-01-01T00:00Z' }),
        event({ occurredAt: '2024-02-29T23:59:59.999999999+14:00' }),
        event({
          meta: JSON.parse('{"__proto__":{"polluted":1},"constructor":{"prototype":{"polluted":1}}}'),
        }),
        event({ orderId: '订单-①-🙂', merchantId: '商户', deviceId: 'pos 1' }),
      ];
      for (const e of edge) {
        const res = await send(herald, 'POST', '/payments/events', JSON.stringify(e), J);
        assert.equal(res.status, 200, `${JSON.stringify(e)}: ${res.text}`);
        accepted.push({ orderId: e.orderId as string, state: 'created' });
      }
      assert.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype was polluted');
    });
  });

  describe('Socket.IO events', () => {
    it('wrong argument types and counts are answered in the ack with a code', async () => {
      const s = await connect(herald, APP, { clientId: 'adv-socket' });
      sockets.push(s);
      const cases: [string, string, unknown[], string][] = [
        ['subscribe number', 'subscribe', [5], 'invalid_arguments'],
        ['subscribe null', 'subscribe', [null], 'invalid_arguments'],
        ['subscribe object', 'subscribe', [{ a: 1 }], 'invalid_arguments'],
        ['subscribe nothing', 'subscribe', [], 'invalid_arguments'],
        ['subscribe nested', 'subscribe', [[['a']]], 'invalid_topic'],
        ['subscribe empty', 'subscribe', [''], 'invalid_topic'],
        ['subscribe 201 chars', 'subscribe', ['t'.repeat(201)], 'invalid_topic'],
        ['subscribe NUL', 'subscribe', ['a\u0000'], 'invalid_topic'],
        ['subscribe space', 'subscribe', ['a b'], 'invalid_topic'],
        [
          'subscribe 101 topics',
          'subscribe',
          [Array.from({ length: 101 }, (_, i) => `t${i}`)],
          'too_many_topics',
        ],
        ['subscribe binary', 'subscribe', [Buffer.from('abc')], 'invalid_arguments'],
        ['unsubscribe number', 'unsubscribe', [5], 'invalid_arguments'],
        ['subscribeCount object', 'subscribeCount', [{}], 'invalid_arguments'],
        ['unsubscribeCount null', 'unsubscribeCount', [null], 'invalid_arguments'],
        ['recover string', 'recover', ['x'], 'invalid_arguments'],
        ['recover streams array', 'recover', [{ streams: [1] }], 'invalid_arguments'],
        [
          'recover offset -1',
          'recover',
          [{ streams: { b: { offset: -1, epoch: 'x' } } }],
          'invalid_arguments',
        ],
        [
          'recover offset 1.5',
          'recover',
          [{ streams: { b: { offset: 1.5, epoch: 'x' } } }],
          'invalid_arguments',
        ],
        [
          'recover __proto__ stream',
          'recover',
          [JSON.parse('{"streams":{"__proto__":{"offset":0,"epoch":"x"}}}')],
          'invalid_arguments',
        ],
        [
          'recover bad stream name',
          'recover',
          [{ streams: { 'x:y': { offset: 0, epoch: 'e' } } }],
          'invalid_arguments',
        ],
        ['receipt number', 'receipt', [5], 'invalid_arguments'],
        ['receipt empty list', 'receipt', [[]], 'invalid_arguments'],
        ['receipt 101 ids', 'receipt', [Array.from({ length: 101 }, () => 'x')], 'invalid_arguments'],
        ['receipt 65 chars', 'receipt', ['r'.repeat(65)], 'invalid_arguments'],
        ['receipt binary', 'receipt', [Buffer.from('x')], 'invalid_arguments'],
        ['payment:report nothing', 'payment:report', [], 'invalid_event'],
        ['payment:report string', 'payment:report', ['x'], 'invalid_event'],
        ['payment:report number', 'payment:report', [42], 'invalid_event'],
        ['payment:report array', 'payment:report', [[event()]], 'invalid_event'],
        ['payment:report null', 'payment:report', [null], 'invalid_event'],
        ['payment:report binary', 'payment:report', [Buffer.from('{}')], 'invalid_event'],
        ['payment:report other app', 'payment:report', [event({ appId: 'other-app' })], 'invalid_event'],
        ['payment:report bad type', 'payment:report', [event({ type: 5 })], 'invalid_event'],
        ['unknown event', 'nope', [1], 'unknown_event'],
        ['event __proto__', '__proto__', [], 'unknown_event'],
        ['event constructor', 'constructor', [], 'unknown_event'],
        ['event hasOwnProperty', 'hasOwnProperty', [], 'unknown_event'],
        ['event dataUpdate', 'dataUpdate', [{}], 'unknown_event'],
      ];
      const problems: string[] = [];
      for (const [label, name, args, code] of cases) {
        let r: { ok?: unknown; error?: { code?: unknown } };
        try {
          r = await call(s, name, ...args);
        } catch (err) {
          problems.push(`${label}: no ack (${(err as Error).message})`);
          continue;
        }
        if (r.ok !== false || r.error?.code !== code)
          problems.push(`${label}: ${JSON.stringify(r).slice(0, 160)}`);
      }
      assert.deepEqual(problems, []);
      // Extra arguments are ignored; binary attachments inside a valid event are fine.
      assert.deepEqual(await call(s, 'subscribe', 'adv-extra', 'x', { y: 1 }), {
        ok: true,
        topics: ['adv-extra'],
      });
      const withBinary = event({ meta: { blob: Buffer.from([1, 2, 3]) } });
      const r = await call<{ ok: boolean }>(s, 'payment:report', withBinary);
      assert.equal(r.ok, true, JSON.stringify(r));
      accepted.push({ orderId: withBinary.orderId as string, state: 'created' });
      assert.ok(s.connected);
    });

    it('without an ack callback, errors come as an `error` event with code and event name', async () => {
      const s = await connect(herald, APP, { clientId: 'adv-noack' });
      sockets.push(s);
      const errors = collectErrors(s);
      s.emit('subscribe', 5);
      s.emit('nope', 1, 2, 3);
      s.emit('payment:report', 'x');
      s.emit('receipt');
      s.emit('constructor');
      await until(() => errors.length === 5, 3000, 'five error events');
      const got = errors.map((e) => [e.event, e.code]).sort();
      assert.deepEqual(got, [
        ['constructor', 'unknown_event'],
        ['nope', 'unknown_event'],
        ['payment:report', 'invalid_event'],
        ['receipt', 'invalid_arguments'],
        ['subscribe', 'invalid_arguments'],
      ]);
      for (const e of errors) assert.equal(typeof e.message, 'string');
      assert.ok(s.connected);
    });

    it('handshakes with malformed identities are refused with a code', async () => {
      const problems: string[] = [];
      const refuse = async (
        label: string,
        ns: string,
        opts: Parameters<typeof connectWith>[2],
        code: string,
      ) => {
        try {
          const s = await connectWith(herald, ns, opts);
          s.close();
          problems.push(`${label}: connected`);
        } catch (err) {
          const data = (err as { data?: { code?: unknown } }).data;
          if (data?.code !== code)
            problems.push(`${label}: ${(err as Error).message} ${JSON.stringify(data)}`);
        }
      };
      await refuse('clientId number', APP, { auth: { clientId: 5 } }, 'invalid_client_id');
      await refuse('clientId object', APP, { auth: { clientId: { a: 1 } } }, 'invalid_client_id');
      await refuse('clientId NUL', APP, { auth: { clientId: 'a\u0000' } }, 'invalid_client_id');
      await refuse('clientId 129 chars', APP, { query: { clientId: 'c'.repeat(129) } }, 'invalid_client_id');
      await refuse('clientId anon:', APP, { auth: { clientId: 'anon:x' } }, 'invalid_client_id');
      await refuse('deviceId array', APP, { auth: { deviceId: ['a'] } }, 'invalid_device_id');
      await refuse('token number', APP, { auth: { token: 5 } }, 'invalid_token');
      await refuse('root namespace', '', {}, 'invalid_app_id');
      assert.deepEqual(problems, []);
    });

    it('malformed Socket.IO frames close the connection or are answered; the node goes on', async () => {
      const frames: [string, (string | Buffer)[]][] = [
        ['object as event name', [`42/${APP},5[{"a":1}]`]],
        ['invalid JSON', [`42/${APP},6["subscribe",`]],
        ['empty event', [`42/${APP},7[]`]],
        ['garbage', ['xyz']],
        ['binary event without its attachment', [`451-/${APP},8["subscribe",{"_placeholder":true,"num":0}]`]],
        [
          'placeholder out of range',
          [`451-/${APP},9["subscribe",{"_placeholder":true,"num":5}]`, Buffer.from([1])],
        ],
        [
          'placeholder __proto__',
          [`451-/${APP},10["x",{"_placeholder":true,"num":"__proto__"}]`, Buffer.from([1])],
        ],
        ['bare binary frame', [Buffer.from([1, 2, 3])]],
        ['disconnect with payload', [`41/${APP},{"x":1}`]],
        ['event to the root namespace', ['42["subscribe","a"]']],
        ['event to a namespace not joined', ['42/other-app,["subscribe","a"]']],
        ['ack for nothing', [`43/${APP},77["x"]`]],
        ['huge ack id', [`42/${APP},99999999999999999999["machine:heartbeat"]`]],
      ];
      const problems: string[] = [];
      for (const [label, list] of frames) {
        const raw = await RawSocket.open(herald, `adv-raw-${label.length}`);
        for (const f of list) raw.send(f);
        // A well-formed call after the bad frame: answered, or the connection was closed.
        raw.send(`42/${APP},1000["machine:heartbeat"]`);
        try {
          await raw.waitFor(
            () => raw.closed || raw.frames.some((f) => f.startsWith(`43/${APP},1000[`)),
            3000,
            'an answer or a close',
          );
        } catch (err) {
          problems.push(`${label}: ${(err as Error).message}`);
        }
        raw.close();
      }
      // A numeric event name is answered like an unknown event.
      const raw = await RawSocket.open(herald, 'adv-raw-numeric');
      raw.send(`42/${APP},3[5]`);
      const [ack] = (await raw.ack(3)) as [{ ok: boolean; error: { code: string } }];
      assert.deepEqual([ack.ok, ack.error.code], [false, 'unknown_event']);
      raw.close();
      assert.deepEqual(problems, []);
      assert.equal((await send(herald, 'GET', '/healthz')).status, 200);
    });
  });

  describe('delivery of unusual but valid data', () => {
    it('lone surrogates, NUL inside data and __proto__ keys reach subscribers unchanged', async () => {
      const s = await connect(herald, APP, { clientId: 'adv-receiver' });
      sockets.push(s);
      const got = collect(s);
      // A topic (or id) with an unpaired surrogate is refused: Redis, the stores and UTF-8 would each turn
      // it into U+FFFD, making two topics one.
      const refused = (await call(s, 'subscribe', ['adv-\ud800', 'adv-plain'])) as {
        ok: boolean;
        error?: { code: string };
      };
      assert.equal(refused.ok, false);
      assert.equal(refused.error?.code, 'invalid_topic');
      const lone = await send(
        herald,
        'POST',
        '/notify',
        `{"appId":"${APP}","eventTopics":["adv-plain","adv-\\ud800"],"data":{}}`,
        J,
      );
      assert.equal(lone.status, 400, lone.text);
      assert.equal(JSON.parse(lone.text).error.code, 'validation_failed');
      assert.match(lone.text, /eventTopics\/1/);
      await call(s, 'subscribe', ['adv-plain']);
      const texts = [
        '{"s":"\\ud800\\u0000\\udfff","k":"\\u2028\\u2029","__proto__":{"p":1},"n":-0,"big":1e300}',
        '["\\ud83d\\ude00", "\\u0000", 0.1, 123456789012345680000]',
      ];
      for (const text of texts) {
        const res = await send(
          herald,
          'POST',
          '/notify',
          `{"appId":"${APP}","eventTopics":["adv-plain"],"data":${text}}`,
          J,
        );
        assert.equal(res.status, 202, res.text);
      }
      await until(() => got.length === 2, 3000, 'two deliveries');
      assert.deepEqual(
        got.map((g) => JSON.stringify(g.data)),
        texts.map((t) => JSON.stringify(JSON.parse(t))),
      );
      assert.equal(({} as Record<string, unknown>).p, undefined, 'Object.prototype was polluted');
    });
  });

  // ---- Cases the first sweep found answered 500, 503 or Fastify's own body (fixed with it). ----
  describe('found by the sweep', () => {
    it('deeply nested JSON (10,000 levels) is refused with a 4xx, not 500 internal_error', async () => {
      const deep = deepArray(DEPTH);
      const problems = await check(herald, [
        c(
          'POST /notify data',
          'POST',
          '/notify',
          `{"appId":"${APP}","broadcast":true,"data":${deep}}`,
          ANY4XX,
        ),
        c(
          'POST /payments/events meta',
          'POST',
          '/payments/events',
          ev().replace(/}$/, `,"meta":{"x":${deep}}}`),
          ANY4XX,
        ),
        c(
          'POST /admin/api/publish data',
          'POST',
          '/admin/api/publish',
          `{"appId":"${APP}","broadcast":true,"data":${deep}}`,
          ANY4XX,
        ),
      ]);
      const res = await send(
        herald,
        'POST',
        '/notify/batch',
        `{"notifications":[{"appId":"${APP}","broadcast":true,"data":${deep}}]}`,
        J,
      );
      const item = (res.body as { results?: { error?: unknown }[] } | undefined)?.results?.[0];
      if (res.status !== 200 || errorOf({ error: item?.error })?.code === 'internal_error') {
        problems.push(`POST /notify/batch item: ${res.status} ${res.text.slice(0, 160)}`);
      }
      // Over the socket: the ack must carry a client error too.
      const raw = await RawSocket.open(herald, 'adv-deep');
      raw.send(`42/${APP},1["payment:report",${ev().replace(/}$/, `,"meta":{"x":${deep}}}`)}]`);
      const [ack] = (await raw.ack(1)) as [{ ok: boolean; error?: { code?: string } }];
      raw.close();
      if (ack.ok !== false || ack.error?.code === 'internal_error') {
        problems.push(`payment:report ack: ${JSON.stringify(ack)}`);
      }
      assert.deepEqual(problems, []);
    });

    it('deeply nested command args are refused with a 4xx, not 500 internal_error', async () => {
      const machine = await connectWith(herald, APP, {
        auth: { clientId: 'adv-pos', deviceId: 'adv-pos-1', merchantId: 'adv-merchant' },
      });
      sockets.push(machine);
      machine.on('command', (_cmd: unknown, ack: (r: unknown) => void) => ack({ done: true }));
      await sweep(herald, [
        c(
          'args 10,000 levels',
          'POST',
          '/devices/adv-pos-1/commands',
          `{"appId":"${APP}","command":"x","args":${deepArray(DEPTH)}}`,
          ANY4XX,
        ),
        c(
          'args plain',
          'POST',
          '/devices/adv-pos-1/commands',
          `{"appId":"${APP}","command":"x","args":1}`,
          OK(),
        ),
      ]);
    });

    it('NUL and lone surrogates in payment events: 400 invalid_event (or stored as given), not 500', async () => {
      const good = event();
      const poisoned = event({ meta: { note: 'a\u0000b' } });
      const res = await send(
        herald,
        'POST',
        '/payments/events',
        JSON.stringify({ events: [good, poisoned] }),
        J,
      );
      assert.equal(res.status, 200, res.text);
      const results = (res.body as { results: { ok: boolean; error?: unknown }[] }).results;
      assert.equal(results[0]?.ok, true, res.text);
      accepted.push({ orderId: good.orderId as string, state: 'created' });
      const problems: string[] = [];
      if (errorOf({ error: results[1]?.error })?.code !== 'invalid_event') {
        problems.push(`batch item with NUL in meta: ${JSON.stringify(results[1])}`);
      }
      const single: Case[] = [
        c(
          'meta value NUL',
          'POST',
          '/payments/events',
          ev({ meta: { x: 'a\u0000' } }),
          E400('invalid_event'),
        ),
        c('meta key NUL', 'POST', '/payments/events', ev({ meta: { 'k\u0000': 1 } }), E400('invalid_event')),
        c(
          'meta.reason NUL',
          'POST',
          '/payments/events',
          ev({ meta: { reason: 'r\u0000' } }),
          E400('invalid_event'),
        ),
        c('notifyUrl path NUL', 'POST', '/payments/events', ev({ notifyUrl: `${sinkUrl}/\u0000` }), {
          status: [200, 400],
        }),
        c('meta lone surrogate', 'POST', '/payments/events', ev({ meta: { x: '\ud800' } }), {
          status: [200, 400],
        }),
        c('eventId lone surrogate', 'POST', '/payments/events', ev({ eventId: `e-${seq}-\ud800` }), {
          status: [200, 400],
        }),
        c('orderId lone surrogate', 'POST', '/payments/events', ev({ orderId: `o-${seq}-\udc00` }), {
          status: [200, 400],
        }),
        c('merchantId lone surrogate', 'POST', '/payments/events', ev({ merchantId: 'm\ud800' }), {
          status: [200, 400],
        }),
        c('deviceId lone surrogate', 'POST', '/payments/events', ev({ deviceId: 'd\ud800' }), {
          status: [200, 400],
        }),
        c('GET order %00', 'GET', '/payments/orders/%00', undefined, { status: [400, 404] }),
        c('GET order a%00b', 'GET', '/payments/orders/a%00b', undefined, { status: [400, 404] }),
      ];
      problems.push(...(await check(herald, single)));
      assert.deepEqual(problems, []);
    });

    it('times outside the store range (years 0 and 10000+) are 400, not 500', async () => {
      const v = E400('validation_failed');
      await sweep(herald, [
        c(
          'occurredAt year 10000 (ms)',
          'POST',
          '/payments/events',
          ev({ occurredAt: 253_402_300_800_000 }),
          E400('invalid_event'),
        ),
        c(
          'occurredAt 8.64e15 (last valid Date)',
          'POST',
          '/payments/events',
          ev({ occurredAt: 8.64e15 }),
          E400('invalid_event'),
        ),
        c(
          'occurredAt year 0000',
          'POST',
          '/payments/events',
          ev({ occurredAt: '0000-01-01T00:00Z' }),
          E400('invalid_event'),
        ),
        c('orders from=275760-09-13', 'GET', '/payments/orders?from=275760-09-13', undefined, v),
        c('orders to=8640000000000000', 'GET', '/payments/orders?from=0&to=8640000000000000', undefined, v),
        c('orders from year 0000', 'GET', '/payments/orders?from=0000-01-01T00:00Z', undefined, v),
        c('orders to year -100000', 'GET', '/payments/orders?to=-100000-01-01T00:00Z', undefined, v),
        c(
          'stats from=-271821-04-20',
          'GET',
          '/payments/stats?from=-271821-04-20T00:00:00.000Z',
          undefined,
          v,
        ),
        c('stats to=+275760-09-13', 'GET', '/payments/stats?to=%2B275760-09-13T00:00:00.000Z', undefined, v),
      ]);
    });

    it('order ids of 101-128 characters (valid) can be read back; longer ones are 400 with a code', async () => {
      const e = event({ orderId: `L${'o'.repeat(119)}` });
      const res = await send(herald, 'POST', '/payments/events', JSON.stringify(e), J);
      assert.equal(res.status, 200, res.text);
      accepted.push({ orderId: e.orderId as string, state: 'created' });
      await sweep(herald, [
        c('GET order of 120 chars', 'GET', `/payments/orders/${e.orderId}`, undefined, OK()),
        c('GET order of 129 chars', 'GET', `/payments/orders/${'o'.repeat(129)}`, undefined, E400()),
        c(
          'command to a 120-char deviceId',
          'POST',
          `/devices/${'d'.repeat(120)}/commands`,
          `{"appId":"${APP}","command":"x"}`,
          {
            status: 404,
            code: 'device_offline',
          },
        ),
      ]);
    });

    it('malformed URLs and oversized request heads get the error body with a code', async () => {
      await sweep(herald, [
        c('path %ZZ', 'GET', '/notify/%ZZ', undefined, E400()),
        c('path bad UTF-8', 'GET', '/payments/orders/%FF', undefined, E400()),
        c('path encoded lone surrogate', 'GET', '/payments/orders/o%ED%A0%80', undefined, E400()),
        c('command path %ZZ', 'POST', '/devices/%ZZ/commands', `{"appId":"${APP}","command":"x"}`, E400()),
        c('bare %', 'GET', '/%', undefined, E400()),
        c('20 KB URL', 'GET', `/notify/${'x'.repeat(20_000)}`, undefined, { status: [400, 414, 431] }),
        c('20 KB query string', 'POST', `/notify?${'a=1&'.repeat(5000)}`, notify({ data: 1 }), {
          status: [400, 414, 431],
        }),
      ]);
    });

    it('data that JSON cannot carry (1e309) is refused, not delivered as null', async () => {
      const s = await connect(herald, APP, { clientId: 'adv-inf' });
      sockets.push(s);
      const got = collect(s);
      const res = await send(
        herald,
        'POST',
        '/notify',
        `{"appId":"${APP}","users":["adv-inf"],"data":{"x":1e309}}`,
        J,
      );
      if (res.status === 202) {
        await until(() => got.length === 1, 3000, 'the delivery');
        assert.fail(`accepted, and delivered as ${JSON.stringify(got[0]?.data)}`);
      }
      assert.equal(problem(res, E400()), undefined);
    });

    it('webhook intake: NUL and lone surrogates are 400, not 503 store_unavailable', async () => {
      const w = (extra: Record<string, unknown>) =>
        JSON.stringify({ orderNo: `adv-wh-${++seq}`, notifyUrl: sinkUrl, payload: { ok: true }, ...extra });
      await sweep(herald, [
        c('control: valid webhook', 'POST', '/merchant-notify', w({}), OK(202)),
        c('orderNo NUL', 'POST', '/merchant-notify', w({ orderNo: 'n\u0000' }), E400()),
        c('orderNo lone surrogate', 'POST', '/merchant-notify', w({ orderNo: 'n\ud800' }), {
          status: [202, 400],
        }),
        c('merchantId NUL', 'POST', '/merchant-notify', w({ merchantId: 'm\u0000' }), E400()),
        c('eventType NUL', 'POST', '/merchant-notify', w({ eventType: '\u0000' }), E400()),
        c('idempotencyKey NUL', 'POST', '/merchant-notify', w({ idempotencyKey: '\u0000' }), E400()),
      ]);
    });

    it('webhook admin API: bad filters and ids are 400, not 503 store_unavailable', async () => {
      const A = '/admin/merchant-notify';
      await sweep(herald, [
        c('control: logs?status=x', 'GET', `${A}/logs?status=x`, undefined, E400('validation_failed')),
        c('control: retry {}', 'POST', `${A}/retry`, '{}', E400('validation_failed')),
        c('logs order_no %00', 'GET', `${A}/logs?order_no=%00`, undefined, E400()),
        c('logs webhook_id %00', 'GET', `${A}/logs?webhook_id=%00`, undefined, E400()),
        c('alerts type %00', 'GET', `${A}/alerts?type=%00`, undefined, E400()),
        c(
          'merchant-status merchant_id %00',
          'GET',
          `${A}/merchant-status?merchant_id=%00`,
          undefined,
          E400(),
        ),
        c(
          'merchant-status merchant_key %00',
          'GET',
          `${A}/merchant-status?merchant_key=%00`,
          undefined,
          E400(),
        ),
        c(
          'reset-circuit-breaker NUL key',
          'POST',
          `${A}/reset-circuit-breaker`,
          '{"merchant_key":"\\u0000"}',
          E400(),
        ),
        c(
          'merchant-settings NUL merchant_id',
          'POST',
          `${A}/merchant-settings`,
          `{"notify_url":"${sinkUrl}","merchant_id":"\\u0000"}`,
          E400(),
        ),
        c('retry order_id 1e20', 'POST', `${A}/retry`, '{"order_id":1e20}', { status: [400, 404] }),
        c('retry order_id NUL', 'POST', `${A}/retry`, '{"order_id":"\\u0000"}', { status: [400, 404] }),
        c('stats start_time 9999-99-99', 'GET', `${A}/stats?start_time=9999-99-99`, undefined, E400()),
        c('stats start_time 275760-09-13', 'GET', `${A}/stats?start_time=275760-09-13`, undefined, E400()),
        c(
          'stats start_time -271821',
          'GET',
          `${A}/stats?start_time=-271821-04-20T00:00:00Z`,
          undefined,
          E400(),
        ),
      ]);
    });

    it('console API: GET /admin/api/topics?limit=N works, and as-app forwards only its allow-list', async () => {
      await sweep(herald, [
        c('topics?limit=5', 'GET', '/admin/api/topics?limit=5', undefined, OK()),
        c('topics?limit=0', 'GET', '/admin/api/topics?limit=0', undefined, E400('validation_failed')),
        c('as-app orders (allowed)', 'GET', `/admin/api/as-app/${APP}/payments/orders`, undefined, OK()),
        c('as-app /notify (not allowed)', 'POST', `/admin/api/as-app/${APP}/notify`, notify({ data: 1 }), {
          status: 404,
          code: 'not_found',
        }),
        c(
          'as-app devices/..%2Fnotify',
          'POST',
          `/admin/api/as-app/${APP}/devices/..%2Fnotify`,
          notify({ data: 'via console' }),
          {
            status: 404,
            code: 'not_found',
          },
        ),
        c(
          'as-app devices/..%2F..%2Fmetrics',
          'GET',
          `/admin/api/as-app/${APP}/devices/..%2F..%2Fmetrics`,
          undefined,
          {
            status: 404,
            code: 'not_found',
          },
        ),
        c('as-app orders/%2500', 'GET', `/admin/api/as-app/${APP}/payments/orders/%2500`, undefined, {
          status: [400, 404],
        }),
      ]);
    });

    it('a machine with a lone surrogate in its deviceId is listed as itself (or refused at the handshake)', async () => {
      const deviceId = 'adv-pos-\ud800';
      let machine: Socket | undefined;
      try {
        machine = await connectWith(herald, APP, {
          auth: { clientId: 'adv-lone', deviceId, merchantId: 'adv-lone-m' },
        });
      } catch {
        return; // refused at the handshake: fine
      }
      sockets.push(machine);
      let listed: string[] = [];
      for (let i = 0; i < 150 && listed.length === 0; i++) {
        const res = await send(herald, 'GET', '/devices?merchantId=adv-lone-m');
        listed = ((res.body as { devices?: { deviceId: string }[] }).devices ?? []).map((d) => d.deviceId);
        if (listed.length === 0) await sleep(20);
      }
      assert.deepEqual(
        listed.map((d) => JSON.stringify(d)),
        [JSON.stringify(deviceId)],
      );
    });
  });

  describe('after the sweep', () => {
    it('the node is healthy, delivers a normal notification, and kept every accepted event', async () => {
      assert.equal((await send(herald, 'GET', '/healthz')).status, 200);
      assert.equal((await send(herald, 'GET', '/readyz')).status, 200);
      const s = await connect(herald, APP, { clientId: 'adv-final' });
      sockets.push(s);
      const got = collect(s);
      await call(s, 'subscribe', 'adv-final-topic');
      const res = await send(
        herald,
        'POST',
        '/notify',
        JSON.stringify({ appId: APP, eventTopics: ['adv-final-topic'], data: { hello: 'world' } }),
        J,
      );
      assert.equal(res.status, 202, res.text);
      await until(() => got.length === 1, 3000, 'the final delivery');
      assert.deepEqual(got[0]?.data, { hello: 'world' });
      const pay = await send(herald, 'POST', '/payments/events', ev(), J);
      assert.equal(pay.status, 200, pay.text);
      assert.ok(accepted.length >= 10);
      for (const a of accepted) {
        const r = await send(herald, 'GET', `/payments/orders/${encodeURIComponent(a.orderId)}?appId=${APP}`);
        assert.equal(r.status, 200, `${a.orderId}: ${r.text}`);
        assert.equal((r.body as { state?: string }).state, a.state);
      }
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
    });
  });
});

describe('adversarial token claims (apps mode)', () => {
  const SHOP = { id: 'adv-shop', secret: 'a-long-random-secret-for-jwt-adv', apiKeys: ['adv-shop-key-0001'] };
  const KEY = { authorization: `Bearer ${SHOP.apiKeys[0]}` };
  let herald: TestHerald;
  const sockets: Socket[] = [];
  const token = (claims: Record<string, unknown>) =>
    new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(SHOP.secret));

  before(async () => {
    herald = await startTestHerald({ apps: [SHOP] });
  });
  after(async () => {
    closeAll(...sockets);
    await herald.cleanup();
  });

  it('API keys and tokens of every malformed shape are refused with a code', async () => {
    const body = JSON.stringify({ appId: SHOP.id, broadcast: true, data: 1 });
    const auth = (a: string): Headers => ({ ...J, authorization: a });
    await sweep(herald, [
      c('no key', 'POST', '/notify', body, { status: 401, code: 'unauthorized' }),
      c('Bearer only', 'POST', '/notify', body, { status: 401, code: 'unauthorized' }, auth('Bearer')),
      c(
        'Bearer two words',
        'POST',
        '/notify',
        body,
        { status: 401, code: 'unauthorized' },
        auth('Bearer a b'),
      ),
      c(
        'Basic',
        'POST',
        '/notify',
        body,
        { status: 401, code: 'unauthorized' },
        auth(`Basic ${SHOP.apiKeys[0]}`),
      ),
      c(
        '8 KB key',
        'POST',
        '/notify',
        body,
        { status: 401, code: 'unauthorized' },
        auth(`Bearer ${'k'.repeat(8000)}`),
      ),
      c('key + spaces', 'POST', '/notify', body, OK(202), auth(`bearer   ${SHOP.apiKeys[0]}  `)),
      c(
        'unknown app',
        'POST',
        '/notify',
        JSON.stringify({ appId: 'nope', broadcast: true, data: 1 }),
        {
          status: 404,
          code: 'unknown_app',
        },
        { ...J, ...KEY },
      ),
    ]);
    const problems: string[] = [];
    for (const t of [
      '',
      'a.b.c',
      'x'.repeat(30_000),
      'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.',
      '\ud800',
      await token({}),
    ]) {
      try {
        const s = await connectWith(herald, SHOP.id, { auth: { token: t } });
        s.close();
        problems.push(`token ${JSON.stringify(t.slice(0, 20))}: connected`);
      } catch (err) {
        const code = (err as { data?: { code?: unknown } }).data?.code;
        if (code !== 'invalid_token')
          problems.push(`token ${JSON.stringify(t.slice(0, 20))}: ${String(code)}`);
      }
    }
    assert.deepEqual(problems, []);
  });

  it('a machine whose token claims carry a NUL is refused and keeps no other machine out of GET /devices', async () => {
    // The claims are the app back-end's: it may copy ids it got from elsewhere. Herald refuses them at
    // the handshake (invalid_token) rather than store them.
    await assert.rejects(
      connectWith(herald, SHOP.id, {
        auth: { token: await token({ sub: 'adv-bad', deviceId: 'adv-bad-pos', merchantId: 'm\u0000' }) },
      }),
      /merchantId/,
    );
    const good = await connectWith(herald, SHOP.id, {
      auth: { token: await token({ sub: 'adv-good', deviceId: 'adv-good-pos', merchantId: 'adv-m' }) },
    });
    sockets.push(good);
    let listed: string[] = [];
    for (let i = 0; i < 150 && !listed.includes('adv-good-pos'); i++) {
      const res = await send(herald, 'GET', '/devices', undefined, KEY);
      assert.equal(res.status, 200, res.text);
      listed = ((res.body as { devices: { deviceId: string }[] }).devices ?? []).map((d) => d.deviceId);
      if (!listed.includes('adv-good-pos')) await sleep(20);
    }
    assert.ok(listed.includes('adv-good-pos'), `GET /devices after 3 s: ${JSON.stringify(listed)}`);
  });
});
