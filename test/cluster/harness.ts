import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { io as ioClient, type Socket } from 'socket.io-client';

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
}

/** A free TCP port on 127.0.0.1 (listen on 0, read, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface NodeProcess {
  child: ChildProcess;
  port: number;
  url: string;
  logs: Record<string, unknown>[];
  exited: Promise<number | null>;
  /** SIGTERM, and wait for the exit code. */
  stop(): Promise<number | null>;
  kill(): Promise<void>;
}

/**
 * Starts `node --import tsx src/main.ts` with `env` and waits until it listens. Nodes get a
 * REDIS_STALL_TIMEOUT of 10 s unless `env` says otherwise: with the 2 s default, a node starved of CPU
 * for 2 s on a loaded CI machine took its own Redis connection for stalled, reconnected, and paused
 * user routing for a presence TTL (test/cluster/routing.test.ts failed once so). Tests of stalls set it.
 */
export async function spawnNode(env: Record<string, string>, timeoutMs = 90_000): Promise<NodeProcess> {
  const dataDir = mkdtempSync(join(tmpdir(), 'herald-node-'));
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: {
      ...process.env,
      PORT: '0',
      HOST: '127.0.0.1',
      DATA_DIR: dataDir,
      LOG_LEVEL: 'info',
      REDIS_STALL_TIMEOUT: '10s',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      rmSync(dataDir, { recursive: true, force: true });
      resolve(code);
    }),
  );
  let stderr = '';
  child.stderr?.on('data', (b: Buffer) => {
    stderr += b.toString();
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      // Do not leave it running: a live child keeps the test process (and CI) waiting.
      child.kill('SIGKILL');
      reject(new Error(`node did not start in ${timeoutMs}ms: ${stderr}`));
    }, timeoutMs);
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      logs.push(entry);
      if (entry.msg === 'herald listening' && typeof entry.port === 'number') {
        clearTimeout(timer);
        resolve(entry.port);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`node exited with ${code} before listening: ${stderr}`));
    });
  });
  return {
    child,
    port,
    url: `http://127.0.0.1:${port}`,
    logs,
    exited,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Drops a test schema from the test database. */
export async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}

/** A private redis-server on its own port, so a test may stop and restart it. */
export async function startRedis(
  port?: number,
): Promise<{ port: number; url: string; stop(): Promise<void>; pause(): void; resume(): void }> {
  const p = port ?? (await freePort());
  const child = spawn(
    'redis-server',
    ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('redis-server did not start')), 10_000);
    child.stdout?.on('data', (b: Buffer) => {
      if (b.toString().includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited ${code}`));
    });
  });
  return {
    port: p,
    url: `redis://127.0.0.1:${p}`,
    async stop() {
      // A killed server has a signalCode and no exitCode: stopping it again must not wait for an exit.
      if (child.exitCode !== null || child.signalCode !== null) return;
      const done = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await done;
    },
    /** Freezes the server (SIGSTOP): connections stay open and nothing answers, as on a stalled host. */
    pause() {
      child.kill('SIGSTOP');
    },
    resume() {
      child.kill('SIGCONT');
    },
  };
}

/** Deletes every Redis key under a prefix. */
export async function cleanRedis(url: string, prefix: string): Promise<void> {
  const { Redis } = await import('ioredis');
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await r.connect();
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      cursor = next;
      if (keys.length) await r.del(...keys);
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
}

/** Starts `count` nodes at once; if one fails, stops the others before rethrowing (no orphans). */
export async function spawnNodes(env: Record<string, string>, count: number): Promise<NodeProcess[]> {
  const settled = await Promise.allSettled(Array.from({ length: count }, () => spawnNode(env)));
  const ok = settled
    .filter((s): s is PromiseFulfilledResult<NodeProcess> => s.status === 'fulfilled')
    .map((s) => s.value);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) {
    await Promise.all(ok.map((n) => n.kill()));
    throw failed.reason;
  }
  return ok;
}

/** Waits until a node reports `ready` (all dependencies up), e.g. Redis connected on a loaded machine. */
export async function waitReady(node: NodeProcess, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(`${node.url}/readyz`);
      const body = (await res.json()) as { status?: string };
      if (body.status === 'ready') return;
    } catch {}
    if (Date.now() > end) throw new Error(`${node.url} not ready within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** spawnNodes, then waits until every node is ready. */
export async function spawnReadyNodes(env: Record<string, string>, count: number): Promise<NodeProcess[]> {
  const nodes = await spawnNodes(env, count);
  try {
    await Promise.all(nodes.map((n) => waitReady(n)));
  } catch (err) {
    await Promise.all(nodes.map((n) => n.kill()));
    throw err;
  }
  return nodes;
}

/** A socket.io-client socket to `/<appId>` of a node, WebSocket only, no reconnection; resolves on connect. */
export function connectClient(
  url: string,
  appId: string,
  clientId: string,
  deviceId?: string,
): Promise<Socket> {
  const s = ioClient(`${url}/${appId}`, {
    auth: { clientId, ...(deviceId ? { deviceId } : {}) },
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
  });
  return new Promise((resolve, reject) => {
    s.once('connect', () => resolve(s));
    s.once('connect_error', (err) => {
      s.close();
      reject(err);
    });
  });
}
