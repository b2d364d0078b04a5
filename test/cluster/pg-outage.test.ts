import assert from 'node:assert/strict';
import { connect, createServer, type Socket as NetSocket, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { io, type Socket } from 'socket.io-client';
import { sleep, until } from '../helpers.js';
import {
  cleanRedis,
  dropSchema,
  type NodeProcess,
  spawnReadyNodes,
  TEST_DATABASE_URL,
  TEST_REDIS_URL,
  uniqueName,
} from './harness.js';

/** A TCP proxy to PostgreSQL that the test can cut (listener closed, connections reset) and restore. */
class CuttableProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<NetSocket>();
  port = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  async start(): Promise<number> {
    const server = createServer((client) => {
      const upstream = connect(this.targetPort, this.targetHost);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve));
    this.port = (server.address() as { port: number }).port;
    this.server = server;
    return this.port;
  }

  /** PostgreSQL is gone: new connections are refused, open ones are closed. */
  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    // destroy(), not resetAndDestroy(): on a socket still connecting, the latter waits for the connect
    // to send its RST, and a handle left in that state kept the test process from exiting.
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  async close(): Promise<void> {
    await this.cut();
  }
}

async function post(
  url: string,
  path: string,
  body: unknown,
): Promise<{ status: number; body: { error?: { code?: string } } }> {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

describe('cluster: PostgreSQL unavailable', () => {
  const prefix = `${uniqueName('hpg')}:`;
  const schema = uniqueName('t_pgout');
  const target = new URL(TEST_DATABASE_URL);
  const proxy = new CuttableProxy(target.hostname, Number(target.port || 5432));
  const nodes: NodeProcess[] = [];
  const sockets: Socket[] = [];

  before(async () => {
    const port = await proxy.start();
    const viaProxy = new URL(TEST_DATABASE_URL);
    viaProxy.port = String(port);
    nodes.push(
      ...(await spawnReadyNodes(
        {
          REDIS_URL: TEST_REDIS_URL,
          REDIS_PREFIX: prefix,
          DATABASE_URL: viaProxy.toString(),
          DATABASE_SCHEMA: schema,
          WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true',
        },
        2,
      )),
    );
  });
  after(async () => {
    for (const s of sockets) s.close();
    await Promise.all(nodes.map((n) => n.kill()));
    await proxy.close();
    await cleanRedis(TEST_REDIS_URL, prefix);
    await dropSchema(schema);
  });

  it('keeps realtime working, answers 503 store_unavailable for durable intake, and recovers', async () => {
    const [a, b] = nodes as [NodeProcess, NodeProcess];
    const s = io(`${b.url}/shop`, {
      auth: { clientId: 'merchant-1' },
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
    });
    sockets.push(s);
    const got: unknown[] = [];
    s.on('dataUpdate', (d: unknown) => got.push(d));
    await new Promise<void>((resolve, reject) => {
      s.once('connect', () => resolve());
      s.once('connect_error', reject);
    });
    await s.emitWithAck('subscribe', 'orders');

    const webhook = (orderNo: string) => ({
      orderNo,
      notifyUrl: 'http://127.0.0.1:9/notify',
      payload: { orderNo },
    });
    assert.equal((await post(a.url, '/merchant-notify', webhook('before-1'))).status, 202);

    await proxy.cut();

    // Realtime does not need PostgreSQL: a notification posted to node a reaches the socket on node b.
    const r = await post(a.url, '/notify', { appId: 'shop', eventTopics: ['orders'], data: { n: 1 } });
    assert.equal(r.status, 202);
    await until(() => got.length === 1, 5000, 'realtime delivery while PostgreSQL is down');

    // Intake that must be durable says so, with a stable code, and does not hang.
    const w = await post(a.url, '/merchant-notify', webhook('during-1'));
    assert.equal(w.status, 503, JSON.stringify(w.body));
    assert.equal(w.body.error?.code, 'store_unavailable');
    const p = await post(a.url, '/payments/events', {
      eventId: 'ev-during-1',
      orderId: 'o-during-1',
      appId: 'shop',
      merchantId: 'merchant-1',
      type: 'created',
      amount: 400,
      occurredAt: new Date().toISOString(),
    });
    assert.equal(p.status, 503, JSON.stringify(p.body));
    assert.equal(p.body.error?.code, 'store_unavailable');

    // Readiness: still serving (200), marked degraded, with the store named.
    const ready = (await (await fetch(`${a.url}/readyz`)).json()) as {
      status: string;
      checks: Record<string, { ok: boolean }>;
    };
    assert.equal(ready.status, 'degraded');
    assert.equal(ready.checks.store?.ok, false);

    // PostgreSQL returns: intake works again without a restart, and no node crashed meanwhile.
    await proxy.start();
    let status = 0;
    for (let i = 0; i < 100 && status !== 202; i++) {
      status = (await post(a.url, '/merchant-notify', webhook(`after-${i}`))).status;
      if (status !== 202) await sleep(200);
    }
    assert.equal(status, 202, 'durable intake recovered');
    const again = (await (await fetch(`${a.url}/readyz`)).json()) as { status: string };
    assert.equal(again.status, 'ready');
    for (const n of nodes) assert.equal(n.child.exitCode, null, 'no node exited');
  });
});
