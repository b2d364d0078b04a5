/**
 * The command connection's stall check (src/bus/stall.ts): a connection that owes a reply for the stall
 * timeout is dropped, never sooner, and a slow Redis that keeps answering is not. A fake Redis on
 * loopback that answers PING with +PONG after a delay the test sets, or never.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { watchStalls } from '../../src/bus/stall.js';

/**
 * A fake Redis: every PING is answered after `delayMs` (never when negative), anything else (ioredis's
 * CLIENT SETINFO at connect) at once. Commands are told apart by their RESP array headers.
 */
async function fakeRedis(delayMs: () => number) {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('data', (chunk) => {
      for (const command of chunk.toString().split(/(?=\*\d+\r\n\$)/)) {
        if (!/PING/i.test(command)) {
          s.write('+OK\r\n');
          continue;
        }
        const d = delayMs();
        if (d >= 0) setTimeout(() => s.writable && s.write('+PONG\r\n'), d);
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

const closers: (() => void)[] = [];
after(() => {
  for (const c of closers) c();
});

async function client(port: number) {
  const redis = new Redis({
    host: '127.0.0.1',
    port,
    lazyConnect: true,
    enableReadyCheck: false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  redis.on('error', () => undefined);
  await redis.connect();
  closers.push(() => redis.disconnect());
  return redis;
}

describe('watchStalls', () => {
  it('drops a connection that owes a reply for the stall timeout, not sooner', {
    timeout: 5000,
  }, async () => {
    const fake = await fakeRedis(() => -1);
    closers.push(fake.close);
    const redis = await client(fake.port);
    const stop = watchStalls(redis, 400);
    closers.push(stop);
    const started = Date.now();
    const err = await redis.ping().then(
      () => undefined,
      (e: Error) => e,
    );
    const waited = Date.now() - started;
    assert.ok(err instanceof Error, 'the command in flight fails');
    assert.ok(waited >= 400, `dropped after ${waited} ms, before the stall timeout`);
    assert.ok(waited < 400 + 100 + 400, `dropped after ${waited} ms (timeout 400 + one 100 ms period)`);
    assert.notEqual(redis.status, 'ready');
  });

  it('keeps a slow Redis that answers every command within the timeout, however long it stays busy', async () => {
    const fake = await fakeRedis(() => 250);
    closers.push(fake.close);
    const redis = await client(fake.port);
    const stop = watchStalls(redis, 400);
    closers.push(stop);
    // Commands owed back to back for 1.5 s: the front of the queue changes every 250 ms.
    const until = Date.now() + 1500;
    let answered = 0;
    while (Date.now() < until) {
      await Promise.all([redis.ping(), redis.ping()]);
      answered += 2;
    }
    assert.ok(answered >= 8, `${answered} answered`);
    assert.equal(redis.status, 'ready');
  });

  it('stops checking when told to', async () => {
    const fake = await fakeRedis(() => -1);
    closers.push(fake.close);
    const redis = await client(fake.port);
    const stop = watchStalls(redis, 200);
    stop();
    const pending = redis.ping().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(redis.status, 'ready', 'not dropped once stopped');
    redis.disconnect();
    await pending;
  });
});
