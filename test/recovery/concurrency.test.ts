/**
 * Recovery calls that overlap on one connection (the SDK's resync after a reconnect and an app's own
 * `subscribe`, which the SDK sends as `recover` too): what each replays still comes before anything new.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { SocketConn } from '../../src/gateway/index.js';
import { registerRecovery } from '../../src/gateway/recovery.js';
import {
  type History,
  HistoryPolicy,
  MemoryHistory,
  type RecoveryResult,
  type StreamPosition,
} from '../../src/history/index.js';
import { MemoryReceipts } from '../../src/history/receipts.js';
import { type Notification, newPositions } from '../../src/router/types.js';
import {
  call,
  closeAll,
  collect,
  connect,
  fence,
  post,
  startTestHerald,
  type TestHerald,
  until,
} from '../helpers.js';

/** Serves `recover` on the node's gateway from `history` (in place of the node's own). */
function recoverWith(herald: TestHerald, history: History, receipts: MemoryReceipts): void {
  registerRecovery({
    gateway: herald.gateway,
    history,
    receipts,
    maxTopicsPerCall: herald.config.maxTopicsPerCall,
    maxTopicsPerConnection: herald.config.maxTopicsPerConnection,
    subscribe: (conn, topics) => herald.gateway.subscribe(conn, topics),
  });
}

/** A history whose `since` answers only when the test lets it (Redis taking its time). */
class SlowHistory implements History {
  readonly asked: string[] = [];
  private open: (() => void) | undefined;
  private readonly gate = new Promise<void>((r) => {
    this.open = r;
  });
  constructor(private readonly missed: Notification[]) {}
  release(): void {
    this.open?.();
  }
  async append(): Promise<void> {}
  async since(_appId: string, stream: string, _from: StreamPosition): Promise<RecoveryResult> {
    this.asked.push(stream);
    await this.gate;
    return { recovered: true, offset: this.missed.length, epoch: 'e1', entries: this.missed };
  }
  async position(): Promise<StreamPosition | undefined> {
    return { offset: 0, epoch: 'e1' };
  }
  async close(): Promise<void> {}
}

function missed(appId: string, stream: string, n: number): Notification[] {
  return Array.from({ length: n }, (_, i) => {
    const pos = newPositions();
    pos[stream] = [i + 1, 'e1'];
    return { v: 1, id: `old-${i + 1}`, appId, ts: Date.now(), data: JSON.stringify({ old: i + 1 }), pos };
  });
}

describe('recovery: overlapping recover calls on one connection', () => {
  let herald: TestHerald;
  let receipts: MemoryReceipts;
  before(async () => {
    herald = await startTestHerald();
    receipts = new MemoryReceipts(60_000);
  });
  after(async () => {
    receipts.close();
    await herald.cleanup();
  });

  it('a recover that ends while another still replays does not let new notifications overtake the replay', async () => {
    const APP = 'rc-app';
    const history = new SlowHistory(missed(APP, 'u:rc', 2));
    recoverWith(herald, history, receipts);
    const s = await connect(herald, APP, { clientId: 'rc' });
    const got = collect(s);
    // The resync after a reconnect: replays the user stream (history slow to answer).
    const first = call<{ ok: boolean }>(s, 'recover', { streams: { 'u:rc': { offset: 0, epoch: 'e1' } } });
    await until(() => history.asked.length === 1, 3000, 'the replay to start');
    // Meanwhile the app subscribes to a topic: a second recover, which ends first.
    const second = await call<{ ok: boolean }>(s, 'recover', { topics: ['news'] });
    assert.equal(second.ok, true);
    // A new notification for the user, published while the first recover still replays.
    const res = await post(herald, '/notify', { appId: APP, users: ['rc'], data: { live: 1 } });
    assert.equal(res.status, 202);
    await new Promise((r) => setTimeout(r, 100));
    history.release();
    assert.equal((await first).ok, true);
    await fence(herald, APP, s);
    assert.deepEqual(
      got.map((g) => g.data),
      [{ old: 1 }, { old: 2 }, { live: 1 }],
      'the replay, then what is new',
    );
    closeAll(s);
  });
});

describe('recovery: a replay larger than the send-buffer limit', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({ historySize: 300, historyTtl: 60_000, maxSocketBuffer: 64 * 1024 });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('reaches a client that reads it, in order, and the recover is answered (not dropped as a slow client)', async () => {
    const APP = 'big-replay';
    const s1 = await connect(herald, APP, { clientId: 'big' });
    const first = await call<{ streams: Record<string, { epoch: string }> }>(s1, 'recover', {});
    const epoch = first.streams['u:big']?.epoch as string;
    closeAll(s1);
    await until(() => herald.router.connectionCount() === 0, 3000, 'the first socket to leave');
    // 300 KB missed: almost five times MAX_SOCKET_BUFFER.
    const pad = 'x'.repeat(3000);
    for (let i = 1; i <= 100; i++) {
      const res = await post(herald, '/notify', { appId: APP, users: ['big'], data: { i, pad } });
      assert.equal(res.status, 202);
    }
    const s2 = await connect(herald, APP, { clientId: 'big' });
    const got = collect(s2);
    let disconnected = '';
    s2.on('disconnect', (reason) => {
      disconnected = reason;
    });
    const ack = await call<{
      ok: boolean;
      streams: Record<string, { replayed: number; recovered: boolean }>;
    }>(s2, 'recover', { streams: { 'u:big': { offset: 0, epoch } } });
    assert.equal(ack.ok, true);
    assert.deepEqual(ack.streams['u:big'], { ...ack.streams['u:big'], recovered: true, replayed: 100 });
    assert.deepEqual(
      got.map((g) => (g.data as { i: number }).i),
      Array.from({ length: 100 }, (_, i) => i + 1),
    );
    await fence(herald, APP, s2);
    assert.equal(disconnected, '');
    assert.equal(s2.connected, true);
    closeAll(s2);
  });
});

describe('recovery: notifications published while a replay waits for the socket', () => {
  let herald: TestHerald;
  let receipts: MemoryReceipts;
  let history: MemoryHistory;
  before(async () => {
    herald = await startTestHerald({ maxSocketBuffer: 64 * 1024 });
    receipts = new MemoryReceipts(60_000);
    history = new MemoryHistory(new HistoryPolicy([], 300, 60_000));
  });
  after(async () => {
    receipts.close();
    await history.close();
    await herald.cleanup();
  });

  it('a notification published during a paced replay arrives once, after the replay', async () => {
    const APP = 'paced';
    recoverWith(herald, history, receipts);
    const note = (target: Partial<Notification>, data: unknown): Notification => ({
      v: 1,
      id: randomUUID(),
      appId: APP,
      ts: Date.now(),
      data: JSON.stringify(data),
      ...target,
    });
    // What the client missed: 300 KB on its user stream (the replay must wait for the socket), one on a topic.
    const pad = 'x'.repeat(3000);
    for (let i = 1; i <= 100; i++) await history.append(note({ users: ['pc'] }, { i, pad }));
    await history.append(note({ topics: ['room'] }, { room: 1 }));
    const s = await connect(herald, APP, { clientId: 'pc' });
    const got = collect(s);
    const conn = [...herald.router.allConns()].find((c) => c.clientId === 'pc') as SocketConn;
    // The moment the replay first waits for the socket, a notification to the topic is published: kept in
    // the topic's history and delivered live (held until the replay is done).
    const roomFor = conn.roomFor.bind(conn);
    let published = false;
    conn.roomFor = async (frame, deadline) => {
      if (!published) {
        published = true;
        const live = note({ topics: ['room'] }, { room: 2 });
        await history.append(live);
        herald.router.deliver(live);
      }
      return roomFor(frame, deadline);
    };
    const ack = await call<{ ok: boolean }>(s, 'recover', {
      topics: ['room'],
      streams: { 'u:pc': { offset: 0, epoch: '' }, 't:room': { offset: 0, epoch: '' } },
    });
    assert.equal(ack.ok, true);
    assert.equal(published, true, 'the replay waited for the socket');
    await fence(herald, APP, s);
    const rooms = got.map((g) => (g.data as { room?: number }).room).filter((r) => r !== undefined);
    assert.deepEqual(rooms, [1, 2], 'the missed one replayed, the new one once');
    assert.equal(got.length, 102);
    closeAll(s);
  });
});
