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
