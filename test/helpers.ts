import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import pg from 'pg';
import { io, type Socket } from 'socket.io-client';
import { type Config, loadConfig } from '../src/config/index.js';
import { createLogger } from '../src/logger.js';
import { type Herald, startHerald } from '../src/server.js';
import { openStore, type Store } from '../src/store/index.js';

export interface TestHerald extends Herald {
  /** Stops the node and removes its data folder. */
  cleanup(): Promise<void>;
}

/** Starts a real Herald on 127.0.0.1 and an ephemeral port, with its own embedded store. */
export async function startTestHerald(
  overrides: Partial<Config> = {},
  env: NodeJS.ProcessEnv = {},
): Promise<TestHerald> {
  const dataDir = mkdtempSync(join(tmpdir(), 'herald-test-'));
  const config = loadConfig(env, { port: 0, host: '127.0.0.1', dataDir, logLevel: 'silent', ...overrides });
  const herald = await startHerald({
    config,
    logger: createLogger(process.env.TEST_LOG_LEVEL === 'debug' ? 'debug' : 'silent'),
  });
  return Object.assign(herald, {
    async cleanup() {
      await herald.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  });
}

export interface ClientOptions {
  clientId?: string;
  deviceId?: string;
  token?: string;
  /** Send identity through `auth` instead of headers (as browsers must). */
  viaAuth?: boolean;
  reconnection?: boolean;
}

/** Connects a real socket.io-client to `/<appId>` and waits for the connection (or its error). */
export function connect(herald: Herald, appId: string, opts: ClientOptions = {}): Promise<Socket> {
  const headers: Record<string, string> = {};
  const auth: Record<string, string> = {};
  if (opts.viaAuth) {
    if (opts.clientId) auth.clientId = opts.clientId;
    if (opts.deviceId) auth.deviceId = opts.deviceId;
  } else {
    if (opts.clientId) headers['x-client-id'] = opts.clientId;
    if (opts.deviceId) headers['x-device-id'] = opts.deviceId;
  }
  if (opts.token) auth.token = opts.token;
  const socket = io(`${herald.url()}/${appId}`, {
    extraHeaders: headers,
    auth,
    transports: ['websocket'],
    forceNew: true,
    reconnection: opts.reconnection ?? false,
  });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => {
      socket.close();
      reject(err);
    });
  });
}

/** Emits with an ack and resolves with the ack's value. */
export function call<T = Record<string, unknown>>(
  socket: Socket,
  event: string,
  ...args: unknown[]
): Promise<T> {
  return socket.timeout(5000).emitWithAck(event, ...args) as Promise<T>;
}

/** Resolves with the next `event` (args as an array), or rejects after `ms`. */
export function next<T extends unknown[] = unknown[]>(socket: Socket, event: string, ms = 3000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(event, on);
      reject(new Error(`no ${event} within ${ms}ms`));
    }, ms);
    const on = (...args: unknown[]) => {
      clearTimeout(timer);
      socket.off(event, on);
      resolve(args as T);
    };
    socket.on(event, on);
  });
}

/** Collects every `dataUpdate` a socket receives (except the notifications of `fence`). */
export function collect(socket: Socket): { data: unknown; meta: Record<string, unknown> }[] {
  const got: { data: unknown; meta: Record<string, unknown> }[] = [];
  socket.on('dataUpdate', (data: unknown, meta: Record<string, unknown>) => {
    if (data !== null && typeof data === 'object' && FENCE_KEY in data) return;
    got.push({ data, meta });
  });
  return got;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until `check` returns true, polling every 10 ms; throws after `ms`. */
export async function until(check: () => boolean, ms = 3000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** POST JSON to the node. */
export async function post(
  herald: Herald,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
) {
  const res = await fetch(`${herald.url()}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return {
    status: res.status,
    body: json as Record<string, unknown> & { error?: { code: string; message: string } },
    text,
  };
}

/** What {@link rawRequest} answers: the body parsed as JSON when it is JSON (else undefined). */
export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  body: unknown;
}

/**
 * One HTTP request exactly as given: the path is not normalised (fetch resolves `..` and `\` before
 * sending), no agent, no header added. Rejects when no answer comes within 5 s.
 */
export function rawRequest(
  herald: Herald,
  method: string,
  path: string,
  body?: string | Buffer,
  headers: Record<string, string> = {},
): Promise<RawResponse> {
  const { port } = herald.address();
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body: parsed });
      });
    });
    req.setTimeout(5000, () => req.destroy(new Error(`no answer to ${method} ${path.slice(0, 80)} in 5 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** Socket.IO client options for {@link connectWith}, beyond those of {@link connect}. */
export interface RawClientOptions {
  extraHeaders?: Record<string, string>;
  auth?: Record<string, unknown>;
  query?: Record<string, string>;
  reconnection?: boolean;
}

/** Connects with exactly the given handshake (headers, auth, query); resolves or rejects like `connect`. */
export function connectWith(herald: Herald, appId: string, opts: RawClientOptions = {}): Promise<Socket> {
  const socket = io(`${herald.url()}/${appId}`, {
    extraHeaders: opts.extraHeaders ?? {},
    auth: opts.auth ?? {},
    query: opts.query ?? {},
    transports: ['websocket'],
    forceNew: true,
    reconnection: opts.reconnection ?? false,
  });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => {
      socket.close();
      reject(err);
    });
  });
}

/** The `connect_error` of a handshake that must be refused; throws if it connects instead. */
export async function refused(
  pending: Promise<Socket>,
): Promise<Error & { data?: { code?: string; message?: string } }> {
  let socket: Socket;
  try {
    socket = await pending;
  } catch (err) {
    return err as Error & { data?: { code?: string; message?: string } };
  }
  socket.close();
  throw new Error('the handshake was accepted but should have been refused');
}

/** Marker key of fence notifications; `collect` leaves them out. */
export const FENCE_KEY = '__fence';

/**
 * Waits until every given socket has received a fresh notification sent after this call. Frames for one
 * socket arrive in order and a notification is written to all its sockets at once, so after the fence any
 * earlier notification (or duplicate of one) has arrived too: "received nothing more" needs no sleep.
 */
export async function fence(herald: Herald, appId: string, ...sockets: Socket[]): Promise<void> {
  const topic = `fence:${randomUUID()}`;
  await Promise.all(sockets.map((s) => call(s, 'subscribe', topic)));
  const arrived = sockets.map(
    (s) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          s.off('dataUpdate', on);
          reject(new Error(`fence ${topic} did not arrive`));
        }, 3000);
        const on = (data: unknown) => {
          if ((data as Record<string, unknown> | null)?.[FENCE_KEY] === topic) {
            clearTimeout(timer);
            s.off('dataUpdate', on);
            resolve();
          }
        };
        s.on('dataUpdate', on);
      }),
  );
  const res = await post(herald, '/notify', { appId, eventTopics: [topic], data: { [FENCE_KEY]: topic } });
  if (res.status !== 202) throw new Error(`fence notify failed: ${res.status} ${res.text}`);
  await Promise.all(arrived);
  await Promise.all(sockets.map((s) => call(s, 'unsubscribe', topic)));
}

/** Every `error` event a socket receives. */
export function collectErrors(socket: Socket): Record<string, unknown>[] {
  const got: Record<string, unknown>[] = [];
  socket.on('error', (e: Record<string, unknown>) => got.push(e));
  return got;
}

/** A TCP port that was free a moment ago (listen on 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Closes sockets (ignores those already closed). */
export function closeAll(...sockets: (Socket | undefined)[]): void {
  for (const s of sockets) s?.close();
}

const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/**
 * Opens stores of either kind for one test file: PostgreSQL (TEST_DATABASE_URL) in schemas of their own
 * (`<prefix>_<random>[_<name>]`), embedded in folders of their own; registers an `after` hook that closes
 * them, drops the schemas and removes the folders.
 */
export function testStores(prefix: string): {
  open(kind: 'postgres' | 'embedded', name?: string): Promise<Store>;
} {
  const base = `${prefix}_${randomUUID().replaceAll('-', '').slice(0, 10)}`;
  const dir = mkdtempSync(join(tmpdir(), `herald-${prefix}-`));
  const stores: Store[] = [];
  const schemas = new Set<string>();
  after(async () => {
    for (const s of stores) await s.close();
    rmSync(dir, { recursive: true, force: true });
    if (schemas.size === 0) return;
    const c = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await c.connect();
    for (const s of schemas) await c.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
    await c.end();
  });
  return {
    async open(kind, name) {
      const schema = name ? `${base}_${name}` : base;
      if (kind === 'postgres') schemas.add(schema);
      const store = await openStore(
        kind === 'postgres'
          ? { databaseUrl: TEST_DATABASE_URL, databaseSchema: schema, dataDir: dir }
          : {
              databaseUrl: undefined,
              databaseSchema: 'herald',
              dataDir: join(dir, `embedded-${name ?? ''}`),
            },
      );
      stores.push(store);
      return store;
    },
  };
}
