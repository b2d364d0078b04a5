import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import pg from 'pg';
import { io, type Socket } from 'socket.io-client';
import { type Config, loadConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/logger.js';
import type { MerchantNotifyInput, PaymentEvent } from '../../src/payments/types.js';
import { type Herald, startHerald } from '../../src/server.js';
import { openStore, type Store } from '../../src/store/index.js';

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

export type StoreKind = 'embedded' | 'postgres';
/** Every store-dependent suite runs once per store. */
export const STORES: StoreKind[] = ['embedded', 'postgres'];

const schemas = new Set<string>();
const dirs = new Set<string>();

/** Where a node keeps its state, so that a node can be started again on the same store. */
export interface StoreSpot {
  kind: StoreKind;
  dataDir: string;
  databaseSchema: string;
}

/** A fresh store: a data folder for the embedded store, a unique schema on PostgreSQL. */
export function newSpot(kind: StoreKind): StoreSpot {
  const dataDir = mkdtempSync(join(tmpdir(), 'herald-pay-'));
  dirs.add(dataDir);
  const databaseSchema = `t_payments_${randomBytes(6).toString('hex')}`;
  if (kind === 'postgres') schemas.add(databaseSchema);
  return { kind, dataDir, databaseSchema };
}

/** Starts a node on `spot` (127.0.0.1, port 0 unless given). */
export async function startNode(spot: StoreSpot, overrides: Partial<Config> = {}): Promise<Herald> {
  const config = loadConfig(
    {},
    {
      port: 0,
      host: '127.0.0.1',
      logLevel: 'silent',
      dataDir: spot.dataDir,
      databaseSchema: spot.databaseSchema,
      ...(spot.kind === 'postgres' ? { databaseUrl: TEST_DATABASE_URL } : {}),
      ...overrides,
    },
  );
  return startHerald({
    config,
    logger: createLogger(process.env.TEST_LOG_LEVEL === 'debug' ? 'debug' : 'silent'),
  });
}

/** Removes the data folders and drops the schemas this test file created. */
export async function cleanupSpots(): Promise<void> {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.clear();
  if (schemas.size === 0) return;
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await client.connect();
  try {
    for (const s of schemas) await client.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
    schemas.clear();
  } finally {
    await client.end();
  }
}

function open(
  url: string,
  appId: string,
  headers: Record<string, string>,
  reconnection = false,
): Promise<Socket> {
  const socket = io(`${url}/${appId}`, {
    extraHeaders: headers,
    transports: ['websocket'],
    forceNew: true,
    reconnection,
  });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => {
      socket.close();
      reject(err);
    });
  });
}

/** A machine: a socket with a deviceId and a merchantId (x-merchant-id). */
export function machine(
  herald: Herald,
  appId: string,
  deviceId: string,
  merchantId: string,
): Promise<Socket> {
  return open(herald.url(), appId, { 'x-device-id': deviceId, 'x-merchant-id': merchantId });
}

/** The merchant's app: a socket whose client id is the merchant id. */
export function merchantApp(
  herald: Herald,
  appId: string,
  merchantId: string,
  deviceId?: string,
): Promise<Socket> {
  return open(herald.url(), appId, {
    'x-client-id': merchantId,
    ...(deviceId ? { 'x-device-id': deviceId } : {}),
  });
}

/** A plain client (anonymous unless clientId is given). */
export function client(herald: Herald, appId: string, clientId?: string): Promise<Socket> {
  return open(herald.url(), appId, clientId ? { 'x-client-id': clientId } : {});
}

/** A payment event with a fresh eventId and the current time. */
export function ev(fields: Record<string, unknown>): Record<string, unknown> {
  return { eventId: randomUUID(), occurredAt: new Date().toISOString(), ...fields };
}

/** A unique order id. */
export function newOrderId(): string {
  return `o-${randomBytes(5).toString('hex')}`;
}

/** Emits payment:report with an ack. */
export function report(socket: Socket, event: unknown): Promise<Record<string, unknown>> {
  return socket.timeout(10_000).emitWithAck('payment:report', event) as Promise<Record<string, unknown>>;
}

/** GET a path of the node; returns the status and the JSON body. */
export async function get(herald: Herald, path: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${herald.url()}${path}`, { headers });
  const text = await res.text();
  return {
    status: res.status,
    body: JSON.parse(text) as Record<string, unknown> & { error?: { code: string } },
  };
}

/** A stand-in for the webhook engine that records every enqueue (idempotent by key, like the engine). */
export class FakeNotifier {
  readonly calls: MerchantNotifyInput[] = [];
  private readonly keys = new Map<string, string>();
  fail: Error | undefined;

  async enqueue(input: MerchantNotifyInput): Promise<{ id: string; duplicate: boolean }> {
    if (this.fail) throw this.fail;
    this.calls.push(input);
    const key = input.idempotencyKey ?? `${input.orderNo}:${input.eventType ?? ''}`;
    const known = this.keys.get(key);
    if (known) return { id: known, duplicate: true };
    const id = randomUUID();
    this.keys.set(key, id);
    return { id, duplicate: false };
  }
}

/**
 * Replaces the node's webhook engine `enqueue` with a fake one (payments holds the engine object,
 * so replacing the method on it is what payments calls).
 */
export function fakeWebhooks(herald: Herald): FakeNotifier {
  const fake = new FakeNotifier();
  const engine = herald.webhooks as unknown as { enqueue: FakeNotifier['enqueue'] };
  engine.enqueue = (input) => fake.enqueue(input);
  return fake;
}

/** Waits until the async `check` resolves true, polling every 20 ms; throws after `ms`. */
export async function eventually(
  check: () => Promise<boolean>,
  ms = 5000,
  what = 'condition',
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A parsed payment event (what the intake and the ledger take), for tests below the HTTP/socket layer. */
export function paymentEvent(
  appId: string,
  orderId: string,
  type: PaymentEvent['type'],
  eventId: string = randomUUID(),
): PaymentEvent {
  return {
    eventId,
    orderId,
    appId,
    merchantId: 'm-1',
    deviceId: null,
    type,
    amount: 4,
    currency: 'CNY',
    occurredAt: new Date(),
    notifyUrl: null,
    meta: null,
    reason: null,
  };
}

/** Opens a store of its own (schema or data folder) for tests below the node (ledger, intake). */
export function openSpotStore(kind: StoreKind): Promise<Store> {
  const spot = newSpot(kind);
  return openStore({
    databaseUrl: kind === 'postgres' ? TEST_DATABASE_URL : undefined,
    databaseSchema: spot.databaseSchema,
    dataDir: spot.dataDir,
  });
}

/**
 * Two nodes on one PostgreSQL schema, started before the tests of the enclosing `describe` and stopped
 * after them: `nodes.a` and `nodes.b` once started.
 */
export function twoNodesOnPostgres(): { a: Herald; b: Herald } {
  const nodes = {} as { a: Herald; b: Herald };
  before(async () => {
    const spot = newSpot('postgres');
    nodes.a = await startNode(spot);
    nodes.b = await startNode(spot);
  });
  after(async () => {
    await nodes.a.stop();
    await nodes.b.stop();
  });
  return nodes;
}
