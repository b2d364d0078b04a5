import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import type { Config } from '../../src/config/index.js';
import type { QueueSettings } from '../../src/webhooks/queue.js';
import { startTestHerald, type TestHerald } from '../helpers.js';

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

export type StoreKind = 'embedded' | 'postgres';
/** Every store-dependent suite runs once per store. */
export const STORES: StoreKind[] = ['embedded', 'postgres'];

/** Settings that make the engine fast to observe in tests: short delays, fast polling, local merchants. */
export const FAST: Partial<Config> = {
  webhookAllowPrivateNetworks: true,
  webhookRetryDelays: [50, 50, 50],
  webhookPollInterval: 20,
  webhookTimeout: 2000,
  webhookLease: 10_000,
  webhookBreakerThreshold: 5,
  webhookBreakerOpen: 300_000,
  webhookBreakerDelay: 60_000,
  webhookDefaultSecret: `whsec_${Buffer.alloc(32, 7).toString('base64')}`,
  telegramMinInterval: 50,
};

const schemas: string[] = [];

/** A unique schema for one node on PostgreSQL; dropped by dropSchemas(). */
/** Queue settings for tests that drive a WebhookQueue directly (the defaults' shape, a 1-minute lease). */
export function queueSettings(nodeId: string, singleNode: boolean): QueueSettings {
  return {
    nodeId,
    singleNode,
    lease: 60_000,
    merchantLeases: 10,
    slowLeases: 2,
    slowThreshold: 3000,
    slowMinSamples: 100,
    breakerThreshold: 5,
    breakerOpen: 300_000,
    breakerDelay: 60_000,
  };
}

export function newSchema(): string {
  const s = `t_webhooks_${randomBytes(6).toString('hex')}`;
  schemas.push(s);
  return s;
}

/** Starts a node on `store` with the FAST settings and `overrides`. */
export async function startNode(store: StoreKind, overrides: Partial<Config> = {}): Promise<TestHerald> {
  const storeOverrides: Partial<Config> =
    store === 'postgres' ? { databaseUrl: TEST_DATABASE_URL, databaseSchema: newSchema() } : {};
  return startTestHerald({ ...FAST, ...storeOverrides, ...overrides });
}

/** Drops every schema created by this test file. */
export async function dropSchemas(): Promise<void> {
  if (schemas.length === 0) return;
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await client.connect();
  try {
    for (const s of schemas.splice(0)) await client.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
  } finally {
    await client.end();
  }
}

export interface Received {
  path: string;
  headers: IncomingMessage['headers'];
  body: string;
  at: number;
}

export type Handler = (req: Received, res: ServerResponse, n: number) => void | Promise<void>;

/** A real HTTP server on 127.0.0.1 standing in for a merchant; records every request. */
export class Merchant {
  readonly received: Received[] = [];
  private server: Server;
  private inFlight = 0;
  maxInFlight = 0;
  handler: Handler;

  private constructor(handler: Handler) {
    this.handler = handler;
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const r: Received = {
          path: req.url ?? '/',
          headers: req.headers,
          body: Buffer.concat(chunks).toString('utf8'),
          at: Date.now(),
        };
        this.received.push(r);
        this.inFlight++;
        this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
        res.on('close', () => {
          this.inFlight--;
        });
        Promise.resolve(this.handler(r, res, this.received.length)).catch(() => res.destroy());
      });
    });
    this.server.keepAliveTimeout = 60_000;
  }

  static async start(handler: Handler = ok): Promise<Merchant> {
    const m = new Merchant(handler);
    await new Promise<void>((r) => m.server.listen(0, '127.0.0.1', r));
    return m;
  }

  url(path = '/notify'): string {
    const a = this.server.address() as AddressInfo;
    return `http://127.0.0.1:${a.port}${path}`;
  }

  /** Distinct webhook-id headers seen. */
  ids(): Set<string> {
    return new Set(this.received.map((r) => String(r.headers['webhook-id'])));
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

export const ok: Handler = (_req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('success');
};

export const status =
  (code: number, body = '', headers: Record<string, string> = {}): Handler =>
  (_req, res) => {
    res.writeHead(code, { 'content-type': 'text/plain', ...headers });
    res.end(body);
  };

export const delayed =
  (ms: number, then: Handler = ok): Handler =>
  async (req, res, n) => {
    await sleep(ms);
    if (!res.destroyed) await then(req, res, n);
  };

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` every 20 ms until it returns a truthy value; throws after `ms`. */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  ms = 10_000,
  what = 'condition',
): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out after ${ms}ms waiting for ${what}`);
    await sleep(20);
  }
}

/** HTTP JSON call to a node; returns status and parsed body. */
export async function call(
  base: string,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{
  status: number;
  body: {
    code: number;
    msg: string;
    data: Record<string, unknown> & unknown;
    error?: { code: string; message: string; details?: { path: string; message: string }[] };
  };
}> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = { raw: text };
  }
  return { status: res.status, body: json as never };
}

/** The status row of one webhook, read from the node's store. */
export async function deliveryOf(
  herald: TestHerald,
  id: string,
): Promise<
  { status: string; attempts: number; last_error: string | null; last_status_code: number | null } | undefined
> {
  const r = await herald.store.query<{
    status: string;
    attempts: number;
    last_error: string | null;
    last_status_code: number | null;
  }>('SELECT status, attempts, last_error, last_status_code FROM webhook_deliveries WHERE id = $1', [id]);
  return r.rows[0];
}

/** Waits until a delivery is finished (delivered or failed for good) and returns its row. */
export function deliveryFinished(herald: TestHerald, id: string, ms = 15_000) {
  return waitFor(
    async () => {
      const d = await deliveryOf(herald, id);
      return d && (d.status === 'delivered' || d.status === 'failed') ? d : undefined;
    },
    ms,
    `webhook ${id} to finish`,
  );
}

let orderSeq = 0;
/** A fresh order number. */
export function orderNo(prefix = 'BY'): string {
  orderSeq++;
  return `${prefix}${Date.now()}${String(orderSeq).padStart(4, '0')}`;
}
