import { connect, createServer, type Socket as NetSocket, type Server } from 'node:net';
import type { Socket } from 'socket.io-client';
import { sleep } from '../helpers.js';
import { connectClient } from './harness.js';

/** Helpers of the cluster failure tests (failures.test.ts, redis-stall.test.ts). */

export const sockets: Socket[] = [];

export function closeSockets(): void {
  for (const s of sockets.splice(0)) s.close();
}

/** A client of `appId` on a node, closed by closeSockets(). */
export async function connectTo(url: string, appId: string, clientId: string): Promise<Socket> {
  const s = await connectClient(url, appId, clientId);
  sockets.push(s);
  return s;
}

export function collect(s: Socket): unknown[] {
  const got: unknown[] = [];
  s.on('dataUpdate', (data: { type?: string }) => {
    if (data?.type !== 'count') got.push(data);
  });
  return got;
}

export function watchCounts(s: Socket): { count: number; connections: number }[] {
  const counts: { count: number; connections: number }[] = [];
  s.on('dataUpdate', (d: { type?: string; count: number; connections: number }) => {
    if (d?.type === 'count') counts.push({ count: d.count, connections: d.connections });
  });
  return counts;
}

export async function notify(url: string, body: unknown, timeoutMs = 10_000): Promise<number> {
  const res = await fetch(`${url}/notify`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  await res.arrayBuffer();
  return res.status;
}

export async function untilAsync(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

export async function readiness(url: string): Promise<string> {
  const body = (await (await fetch(`${url}/readyz`)).json()) as { status: string };
  return body.status;
}

/**
 * A TCP proxy to PostgreSQL or Redis that a test can cut (listener closed, connections reset) and
 * restore: the dependency is gone for the nodes connected through it only (a network partition).
 */
export class CuttableProxy {
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

  /** The dependency is gone: new connections are refused, open ones are closed. */
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

export async function post(
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
