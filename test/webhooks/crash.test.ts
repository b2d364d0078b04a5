import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import {
  call,
  delayed,
  dropSchemas,
  FAST,
  Merchant,
  newSchema,
  ok,
  STORES,
  sleep,
  TEST_DATABASE_URL,
  waitFor,
} from './helpers.js';

after(dropSchemas);

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

interface Node {
  child: ChildProcess;
  base: string;
  exited: Promise<number | null>;
}

/** Starts `node --import tsx src/main.ts` as a real process with `env`, and waits for /healthz. */
async function spawnNode(env: Record<string, string>, logFile: string): Promise<Node> {
  const port = await freePort();
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env, PORT: String(port), HOST: '127.0.0.1' };
  for (const k of ['DATABASE_URL', 'REDIS_URL', 'HERALD_CONFIG', 'HERALD_APPS', 'ADMIN_TOKEN']) {
    if (!(k in env)) delete childEnv[k];
  }
  const out = openSync(logFile, 'a');
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: childEnv,
    stdio: ['ignore', out, out],
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const base = `http://127.0.0.1:${port}`;
  let dead = false;
  void exited.then(() => {
    dead = true;
  });
  await waitFor(
    async () => {
      if (dead)
        throw new Error(
          `node exited during start-up; see ${logFile}:\n${readFileSync(logFile, 'utf8').slice(-2000)}`,
        );
      try {
        return (await fetch(`${base}/healthz`)).ok;
      } catch {
        return false;
      }
    },
    90_000,
    'the child node to listen',
  );
  return { child, base, exited };
}

for (const store of STORES) {
  describe(`crash safety: SIGKILL mid-delivery, restart (${store} store)`, () => {
    it('every accepted webhook is delivered after a restart, none stuck, each with its webhook-id', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'herald-crash-'));
      const log = join(dir, 'node.log');
      const merchant = await Merchant.start(delayed(40, ok));
      const env: Record<string, string> = {
        DATA_DIR: join(dir, 'data'),
        LOG_LEVEL: 'warn',
        WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true',
        WEBHOOK_RETRY_DELAYS: Array(10).fill('50ms').join(','),
        WEBHOOK_POLL_INTERVAL: '20ms',
        WEBHOOK_TIMEOUT: '2s',
        WEBHOOK_LEASE: '3s',
        WEBHOOK_MERCHANT_CONCURRENCY: '4',
        WEBHOOK_DEFAULT_SECRET: FAST.webhookDefaultSecret!,
        SHUTDOWN_TIMEOUT: '5s',
      };
      if (store === 'postgres') {
        env.DATABASE_URL = TEST_DATABASE_URL;
        env.DATABASE_SCHEMA = newSchema();
      }
      let node: Node | undefined;
      try {
        node = await spawnNode(env, log);
        const accepted = new Set<string>();
        const enqueue = async (i: number) => {
          const r = await call(node!.base, 'POST', '/merchant-notify', {
            orderNo: `CRASH${i}`,
            notifyUrl: merchant.url(),
            payload: { i },
          });
          if (r.status === 202) accepted.add(String(r.body.data.id));
          return r.status;
        };
        for (let i = 0; i < 150; i += 10) {
          const statuses = await Promise.all(Array.from({ length: 10 }, (_, j) => enqueue(i + j)));
          assert.deepEqual(new Set(statuses), new Set([202]));
        }
        // More intake races with the kill: whatever was answered 202 must be delivered too.
        let stopIntake = false;
        const intake = (async () => {
          for (let i = 150; !stopIntake && i < 400; i++) await enqueue(i).catch(() => 0);
        })();
        await waitFor(() => merchant.received.length >= 40, 30_000, 'deliveries to be under way');
        node.child.kill('SIGKILL');
        await node.exited;
        stopIntake = true;
        await intake;
        const seenBeforeRestart = merchant.ids().size;
        assert.ok(seenBeforeRestart < accepted.size, 'the kill came mid-delivery');

        node = await spawnNode(env, log);
        const n = node;
        await waitFor(
          () => [...accepted].every((id) => merchant.ids().has(id)),
          60_000,
          'every accepted webhook to reach the merchant',
        );
        const q = await waitFor(
          async () => {
            const r = await call(n.base, 'GET', '/admin/merchant-notify/queue-status');
            const d = r.body.data;
            return d.queue_length === 0 && d.in_flight_count === 0 ? d : undefined;
          },
          30_000,
          'an empty queue',
        );
        assert.equal(q.failed_count, 0);
        const stats = await call(n.base, 'GET', '/admin/merchant-notify/stats');
        // A request cut by the kill may have been stored without its 202 reaching the client: it is
        // delivered too (the client retries with the same idempotency key and gets `duplicate`).
        assert.ok(Number(stats.body.data.total) >= accepted.size);
        assert.equal(stats.body.data.delivered, stats.body.data.total, 'every stored webhook is delivered');
        // Graceful stop of the second run: SIGTERM exits 0.
        n.child.kill('SIGTERM');
        assert.equal(await n.exited, 0);
        node = undefined;
        await sleep(10);
      } finally {
        if (node && node.child.exitCode === null) {
          node.child.kill('SIGKILL');
          await node.exited;
        }
        await merchant.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
