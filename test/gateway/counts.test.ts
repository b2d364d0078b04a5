import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Socket } from 'socket.io-client';
import {
  call,
  closeAll,
  collect,
  connect,
  sleep,
  startTestHerald,
  type TestHerald,
  until,
} from '../helpers.js';

type Count = { type: 'count'; topic: string; count: number; connections: number };
const COUNT_INTERVAL = 100;

/** Watches a topic's count; `last()` is the latest value received, `all` every update after the initial one. */
async function watch(herald: TestHerald, app: string, topic: string, clientId: string) {
  const socket = await connect(herald, app, { clientId });
  const got = collect(socket);
  await call(socket, 'subscribeCount', topic);
  await until(() => got.length >= 1, 3000, 'the initial count');
  const counts = () =>
    got
      .map((g) => g.data as Count)
      .filter((d) => d.type === 'count' && d.topic === topic)
      .map(({ count, connections }) => ({ count, connections }));
  return {
    socket,
    counts,
    last: () => counts()[counts().length - 1],
    /** Waits until the latest value is `want`. */
    async becomes(want: { count: number; connections: number }, what = JSON.stringify(want)) {
      await until(
        () => {
          const l = counts()[counts().length - 1];
          return l?.count === want.count && l.connections === want.connections;
        },
        3000,
        `count ${what}; saw ${JSON.stringify(counts())}`,
      );
    },
  };
}

describe('gateway: subscriber counts', () => {
  let herald: TestHerald;
  const APP = 'count-app';
  before(async () => {
    herald = await startTestHerald({ countInterval: COUNT_INTERVAL });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('goes up on subscribe and down on unsubscribe and on disconnect', async () => {
    const w = await watch(herald, APP, 'room:1', 'watcher-1');
    assert.deepEqual(w.last(), { count: 0, connections: 0 });
    const a = await connect(herald, APP, { clientId: 'a' });
    const b = await connect(herald, APP, { clientId: 'b' });
    await call(a, 'subscribe', 'room:1');
    await w.becomes({ count: 1, connections: 1 });
    await call(b, 'subscribe', ['room:1', 'room:other']);
    await w.becomes({ count: 2, connections: 2 });
    await call(a, 'unsubscribe', 'room:1');
    await w.becomes({ count: 1, connections: 1 });
    b.close(); // disconnect without unsubscribing
    await w.becomes({ count: 0, connections: 0 }, 'after disconnect');
    // Re-subscribing after a drop to zero counts again.
    await call(a, 'subscribe', 'room:1');
    await w.becomes({ count: 1, connections: 1 });
    // Watching a topic does not subscribe to it.
    const ack = await call<{ counts: Record<string, unknown> }>(w.socket, 'subscribeCount', 'room:1');
    assert.deepEqual(ack.counts, { 'room:1': { count: 1, connections: 1 } });
    closeAll(a, w.socket);
  });

  it('counts distinct client ids: one user on three devices is 1 with 3 connections', async () => {
    const w = await watch(herald, APP, 'room:multi', 'watcher-2');
    const devices: Socket[] = [];
    for (const d of ['phone', 'web', 'tablet']) {
      const s = await connect(herald, APP, { clientId: 'user123', deviceId: d });
      await call(s, 'subscribe', 'room:multi');
      devices.push(s);
    }
    await w.becomes({ count: 1, connections: 3 });
    const other = await connect(herald, APP, { clientId: 'user456' });
    await call(other, 'subscribe', 'room:multi');
    await w.becomes({ count: 2, connections: 4 });
    devices[0]?.close();
    await w.becomes({ count: 2, connections: 3 }, 'one device of user123 left');
    await call(devices[1] as Socket, 'unsubscribe', 'room:multi');
    await w.becomes({ count: 2, connections: 2 }, 'user123 still on the tablet');
    devices[2]?.close();
    await w.becomes({ count: 1, connections: 1 }, 'user123 gone');
    // The same socket subscribing twice does not count twice.
    await call(other, 'subscribe', 'room:multi');
    const w2 = await connect(herald, APP, { clientId: 'watcher-2b' });
    const ack = await call<{ counts: Record<string, unknown> }>(w2, 'subscribeCount', 'room:multi');
    assert.deepEqual(ack.counts, { 'room:multi': { count: 1, connections: 1 } });
    closeAll(other, w.socket, w2, ...devices);
  });

  it('anonymous clients count one each', async () => {
    const w = await watch(herald, APP, 'room:anon', 'watcher-3');
    const a1 = await connect(herald, APP);
    const a2 = await connect(herald, APP);
    await call(a1, 'subscribe', 'room:anon');
    await call(a2, 'subscribe', 'room:anon');
    await w.becomes({ count: 2, connections: 2 });
    closeAll(a1, a2, w.socket);
  });

  it('coalesces a burst of 50 joins into few updates; the last one is the true value, up and down', async () => {
    const w = await watch(herald, APP, 'activity:live-stream-001', 'admin-dashboard');
    const users = await Promise.all(
      Array.from({ length: 50 }, (_, i) => connect(herald, APP, { clientId: `user${i + 1}` })),
    );
    const before = w.counts().length;
    // One after the other (each acked before the next), as fast as the round trips allow: spread over
    // several event-loop turns, so only the interval can merge them.
    const start = Date.now();
    for (const u of users) await call(u, 'subscribe', ['activity:live-stream-001']);
    await w.becomes({ count: 50, connections: 50 });
    const elapsed = Date.now() - start;
    const joinUpdates = w.counts().length - before;
    // At most one update per interval (plus the leading and trailing ones).
    const allowed = Math.ceil(elapsed / COUNT_INTERVAL) + 2;
    assert.ok(joinUpdates >= 1);
    assert.ok(joinUpdates <= allowed, `50 joins in ${elapsed} ms gave ${joinUpdates} updates: not coalesced`);
    assert.ok(joinUpdates < 50);
    // Counts never go past the truth, and only go up while users only join.
    const seen = w.counts().slice(before);
    for (let i = 1; i < seen.length; i++) assert.ok((seen[i]?.count ?? 0) >= (seen[i - 1]?.count ?? 0));
    // Nothing is sent later that would move the value away from the truth.
    await sleep(COUNT_INTERVAL * 3);
    assert.deepEqual(w.last(), { count: 50, connections: 50 });

    const mark = w.counts().length;
    const leaveStart = Date.now();
    for (const u of users.slice(0, 30)) u.close();
    await w.becomes({ count: 20, connections: 20 }, 'after 30 left');
    const leaveAllowed = Math.ceil((Date.now() - leaveStart) / COUNT_INTERVAL) + 2;
    assert.ok(w.counts().length - mark <= leaveAllowed, 'leaving is coalesced too');
    await sleep(COUNT_INTERVAL * 3);
    assert.deepEqual(w.last(), { count: 20, connections: 20 });
    closeAll(w.socket, ...users);
  });

  it('an isolated change still arrives promptly after a burst (trailing update)', async () => {
    const w = await watch(herald, APP, 'room:trail', 'watcher-4');
    const s = await Promise.all(
      Array.from({ length: 5 }, (_, i) => connect(herald, APP, { clientId: `t${i}` })),
    );
    for (const x of s) x.emit('subscribe', 'room:trail');
    await w.becomes({ count: 5, connections: 5 });
    // One more change right after the burst: it falls inside the interval, so it must come as a trailing update.
    s[0]?.close();
    await w.becomes({ count: 4, connections: 4 });
    closeAll(w.socket, ...s);
  });

  it('several watchers each get the updates; a watcher that leaves stops being written to', async () => {
    const w1 = await watch(herald, APP, 'room:ww', 'ww1');
    const w2 = await watch(herald, APP, 'room:ww', 'ww2');
    const a = await connect(herald, APP, { clientId: 'ww-sub' });
    await call(a, 'subscribe', 'room:ww');
    await w1.becomes({ count: 1, connections: 1 });
    await w2.becomes({ count: 1, connections: 1 });
    w2.socket.close();
    await call(a, 'unsubscribe', 'room:ww');
    await w1.becomes({ count: 0, connections: 0 });
    assert.equal(herald.router.watchersOf(APP, 'room:ww').size, 1);
    closeAll(a, w1.socket);
  });

  it('a count watcher that is also subscribed counts itself', async () => {
    const s = await connect(herald, APP, { clientId: 'self' });
    const got = collect(s);
    await call(s, 'subscribe', 'room:self');
    const ack = await call<{ counts: Record<string, unknown> }>(s, 'subscribeCount', 'room:self');
    assert.deepEqual(ack.counts, { 'room:self': { count: 1, connections: 1 } });
    await call(s, 'unsubscribe', 'room:self');
    await until(
      () => got.some((g) => (g.data as Count).type === 'count' && (g.data as Count).count === 0),
      3000,
      'own unsubscribe',
    );
    s.close();
  });
});
