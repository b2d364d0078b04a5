import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { io } from 'socket.io-client';
import { notificationIdOf } from '../../src/payments/ledger.js';
import type { Herald } from '../../src/server.js';
import { collect, freePort, until } from '../helpers.js';
import {
  cleanupSpots,
  ev,
  eventually,
  get,
  machine,
  merchantApp,
  newOrderId,
  newSpot,
  report,
  STORES,
  type StoreSpot,
  startNode,
  TEST_DATABASE_URL,
} from './helpers.js';

const APP = 'pos-outbox';
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
type Update = { data: Record<string, unknown>; meta: Record<string, unknown> };

after(cleanupSpots);

/** Rows in the realtime outbox (transitions whose notifications are not known to be published). */
async function outboxRows(herald: Herald): Promise<number> {
  const r = await herald.store.query<{ n: number }>('SELECT count(*)::int AS n FROM payment_outbox_batches');
  return Number(r.rows[0]?.n);
}

/** Starts Herald as a child process on `spot`, with the test hook that kills it after the first commit. */
async function startCrashingNode(spot: StoreSpot): Promise<{ child: ChildProcess; url: string }> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PORT: String(port),
    HOST: '127.0.0.1',
    DATA_DIR: spot.dataDir,
    DATABASE_SCHEMA: spot.databaseSchema,
    LOG_LEVEL: 'silent',
    HERALD_TEST_CRASH_AFTER_PAYMENT_COMMIT: '1',
  };
  if (spot.kind === 'postgres') env.DATABASE_URL = TEST_DATABASE_URL;
  else delete env.DATABASE_URL;
  delete env.HERALD_CONFIG;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env,
    stdio: 'ignore',
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the node exited with ${child.exitCode} while starting`);
    try {
      if ((await fetch(`${url}/readyz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error('the node did not become ready within 60 s');
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, url };
}

for (const kind of STORES) {
  describe(`payments on the ${kind} store: realtime outbox`, () => {
    it('publishes a transition committed by a node killed before it published, with the same notification id', async () => {
      const spot = newSpot(kind);
      const orderId = newOrderId();
      const event = ev({ orderId, type: 'created', amount: 4, merchantId: 'm-crash', appId: APP });

      // 1. A node that dies (SIGKILL) right after the commit of the first transition.
      const { child, url } = await startCrashingNode(spot);
      const exited = new Promise<NodeJS.Signals | null>((r) =>
        child.once('exit', (_code, signal) => r(signal)),
      );
      const pos = io(`${url}/${APP}`, {
        extraHeaders: { 'x-device-id': 'pos-crash', 'x-merchant-id': 'm-crash' },
        transports: ['websocket'],
        forceNew: true,
        reconnection: false,
      });
      try {
        await new Promise<void>((resolve, reject) => {
          pos.once('connect', () => resolve());
          pos.once('connect_error', reject);
        });
        let acked = false;
        pos.emit('payment:report', event, () => {
          acked = true;
        });
        assert.equal(await exited, 'SIGKILL');
        assert.equal(acked, false, 'the node died before answering');
      } finally {
        pos.close();
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }

      // 2. A new node on the same store: the transition is stored, its notification waits in the outbox.
      let herald: Herald | undefined = await startNode(spot, { paymentSweepInterval: 600_000 });
      try {
        const order = await get(herald, `/payments/orders/${orderId}?appId=${APP}`);
        assert.equal(order.body.state, 'created');
        assert.equal(await outboxRows(herald), 1);

        const app = await merchantApp(herald, APP, 'm-crash');
        const got = collect(app) as unknown as Update[];
        assert.equal(await herald.payments.republishOutbox(0), 1);
        await until(
          () => got.some((u) => u.data.orderId === orderId),
          5000,
          'the notification after restart',
        );
        const u = got.find((x) => x.data.orderId === orderId) as Update;
        assert.deepEqual(
          { status: u.data.status, announcement: u.data.announcement, id: u.meta.id },
          {
            status: 'created',
            announcement: '新订单 4.00 元',
            id: notificationIdOf(APP, String(event.eventId)),
          },
        );
        // Published once: the row is gone and a second pass publishes nothing.
        assert.equal(await outboxRows(herald), 0);
        assert.equal(await herald.payments.republishOutbox(0), 0);

        // The machine sends the unanswered report again: stored once, answered duplicate.
        const again = await machine(herald, APP, 'pos-crash', 'm-crash');
        const ack = await report(again, event);
        assert.deepEqual(
          { duplicate: ack.duplicate, state: ack.state },
          { duplicate: true, state: 'created' },
        );
        again.close();
        app.close();
      } finally {
        await herald.stop();
        herald = undefined;
      }
    });

    it('deletes published rows with the next batch under a steady stream, on their own once it stops', async () => {
      const herald = await startNode(newSpot(kind));
      try {
        // Statements that delete published rows on their own (not within a batch write).
        let alone = 0;
        const store = herald.store as unknown as {
          query: (sql: unknown, params?: unknown) => Promise<unknown>;
        };
        const real = store.query.bind(herald.store);
        store.query = (sql, params) => {
          if (typeof sql === 'string' && sql.startsWith('DELETE FROM payment_outbox_batches')) alone++;
          return real(sql, params);
        };
        const pos = await machine(herald, APP, 'pos-stream', 'm-stream');
        // A report every 25 ms for 1.5 s, each a transition (one outbox row), not waiting for answers.
        const acks: Promise<Record<string, unknown>>[] = [];
        for (let i = 0; i < 60; i++) {
          acks.push(report(pos, ev({ orderId: newOrderId(), type: 'created', amount: 1 })));
          await new Promise((r) => setTimeout(r, 25));
        }
        const answers = await Promise.all(acks);
        assert.ok(answers.every((a) => a.state === 'created'));
        const during = alone;
        // Then the node is quiet: the rows published last are deleted on their own.
        await eventually(async () => (await outboxRows(herald)) === 0, 5000, 'the outbox emptied');
        // Every 200 ms before (7 or more in 1.5 s): the timer deleted rows the next batch would have.
        assert.ok(during <= 2, `${during} deletes on their own during the stream`);
        assert.ok(alone >= 1 && alone <= during + 1, `${alone} deletes on their own in all`);
        pos.close();
      } finally {
        await herald.stop();
      }
    });

    it('a sweep with nothing to close or publish again opens no transaction', async () => {
      const herald = await startNode(newSpot(kind), { paymentTimeout: 60_000 });
      try {
        const pos = await machine(herald, APP, 'pos-idle', 'm-idle');
        assert.equal(
          (await report(pos, ev({ orderId: newOrderId(), type: 'created', amount: 2 }))).state,
          'created',
        );
        // The first sweep runs the hourly retention too (a transaction per app).
        await herald.payments.sweep();
        let transactions = 0;
        const store = herald.store as unknown as { transaction: (fn: unknown) => Promise<unknown> };
        const real = store.transaction.bind(herald.store);
        store.transaction = (fn) => {
          transactions++;
          return real(fn as never);
        };
        const swept = await herald.payments.sweep();
        assert.deepEqual(
          { ...swept, transactions },
          { closed: 0, webhooks: 0, republished: 0, transactions: 0 },
        );
        // Once an order is due, the sweep takes it in a transaction.
        await herald.store.query(`UPDATE payment_open_orders SET created_at = now() - interval '2 minutes'`);
        assert.equal((await herald.payments.sweep()).closed, 1);
        assert.ok(transactions >= 1);
        pos.close();
      } finally {
        await herald.stop();
      }
    });

    it('publishes again, from the sweep, a notification whose publish failed, once, with its id', async () => {
      const herald = await startNode(newSpot(kind), { paymentSweepInterval: 100 });
      try {
        const app = await merchantApp(herald, APP, 'm-fail');
        const got = collect(app) as unknown as Update[];
        const pos = await machine(herald, APP, 'pos-fail', 'm-fail');
        // The bus refuses the first publish (as when Redis is unreachable).
        const notify = herald.notify as unknown as { publish: (input: unknown) => Promise<unknown> };
        const real = notify.publish.bind(herald.notify);
        let refused = 0;
        notify.publish = (input) => {
          if (refused === 0) {
            refused++;
            return Promise.reject(new Error('bus unavailable'));
          }
          return real(input);
        };
        const orderId = newOrderId();
        const event = ev({ orderId, type: 'created', amount: 7 });
        assert.equal((await report(pos, event)).state, 'created');
        assert.equal(refused, 1);
        await until(
          () => got.some((u) => u.data.orderId === orderId),
          10_000,
          'the notification from the sweep',
        );
        const mine = got.filter((u) => u.data.orderId === orderId);
        assert.equal(mine[0]?.meta.id, notificationIdOf(APP, String(event.eventId)));
        await eventually(async () => (await outboxRows(herald)) === 0, 5000, 'the outbox row deleted');
        assert.equal(got.filter((u) => u.data.orderId === orderId).length, 1);
        pos.close();
        app.close();
      } finally {
        await herald.stop();
      }
    });
  });
}
