import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SEGMENT_BYTES } from '../../src/history/arena.js';
import { HistoryPolicy, MemoryHistory } from '../../src/history/index.js';
import { MemoryReceipts } from '../../src/history/receipts.js';
import type { Notification } from '../../src/router/types.js';

let seq = 0;
function note(target: { topics?: string[]; users?: string[] }): Notification {
  seq++;
  return { v: 1, id: `n-${seq}`, appId: 'app', ts: Date.now(), data: '{}', ...target };
}

/** The private global order, to check that dead entries do not pile up in it. */
const orderLength = (h: MemoryHistory) =>
  (h as unknown as { order: unknown[]; head: number }).order.length - (h as unknown as { head: number }).head;

describe('in-memory history replays', () => {
  it('replays each notification with its offset and epoch in the stream asked for, and keeps no targets', async () => {
    const h = new MemoryHistory(new HistoryPolicy([], 300, 300_000));
    try {
      const a = { ...note({ topics: ['order:1'], users: ['m-1'] }), ack: true, data: '{"n":1}' };
      const b = note({ topics: ['order:1'], users: ['m-2'] });
      await h.append(a);
      await h.append(b);
      const userPos = a.pos?.['u:m-1'] as [number, string];
      const topicPos = b.pos?.['t:order:1'] as [number, string];
      const topic = await h.since('app', 't:order:1', { offset: 0, epoch: topicPos[1] });
      assert.equal(topic.recovered, true);
      assert.deepEqual(
        topic.entries.map((n) => [n.id, n.pos?.['t:order:1'], n.data, n.ack ?? false]),
        [
          [a.id, [1, topicPos[1]], '{"n":1}', true],
          [b.id, topicPos, '{}', false],
        ],
      );
      const user = await h.since('app', 'u:m-1', { offset: 0, epoch: userPos[1] });
      assert.deepEqual(
        user.entries.map((n) => [n.id, n.pos?.['u:m-1']]),
        [[a.id, userPos]],
      );
      // Only what a replay sends is kept: not the targets of the notification.
      for (const n of [...topic.entries, ...user.entries]) {
        assert.equal(n.users, undefined);
        assert.equal(n.topics, undefined);
        assert.deepEqual(Object.keys(n.pos ?? {}).length, 1);
      }
    } finally {
      await h.close();
    }
  });
});

describe('in-memory history keeps only streams someone can recover', () => {
  it('starts a stream for a notification only when it has a follower; a started stream keeps it either way', async () => {
    const followers = new Set(['t:watched', 'u:m-1']);
    const h = new MemoryHistory(new HistoryPolicy([], 300, 300_000), {
      follows: (appId, stream) => appId === 'app' && followers.has(stream),
    });
    try {
      // An order topic nobody watches and an unconnected user: no entry, no offset in those streams.
      const a = note({ topics: ['order:9', 'watched'], users: ['m-1', 'm-2'] });
      await h.append(a);
      assert.deepEqual(Object.keys(a.pos ?? {}).sort(), ['t:watched', 'u:m-1']);
      assert.deepEqual(h.size, { entries: 2, streams: 2 });
      const none = await h.since('app', 't:order:9', { offset: 0, epoch: '' });
      assert.deepEqual([none.recovered, none.entries.length], [true, 0]);

      // The watcher and the user leave: their streams, started, go on keeping what comes (to recover).
      followers.clear();
      const b = note({ topics: ['watched'], users: ['m-1'] });
      await h.append(b);
      const pos = a.pos?.['t:watched'] as [number, string];
      const topic = await h.since('app', 't:watched', { offset: pos[0], epoch: pos[1] });
      assert.equal(topic.recovered, true);
      assert.deepEqual(
        topic.entries.map((n) => n.id),
        [b.id],
      );

      // A stream given out by `recover` (position) is started, follower or not.
      const p = await h.position('app', 't:order:10');
      const c = note({ topics: ['order:10'] });
      await h.append(c);
      assert.deepEqual(c.pos?.['t:order:10'], [1, p?.epoch]);
    } finally {
      await h.close();
    }
  });
});

describe('in-memory history bounds', () => {
  it('keeps at most maxEntries over all streams, dropping the oldest of all first', async () => {
    const h = new MemoryHistory(new HistoryPolicy([], 300, 300_000), {
      maxEntries: 1000,
      maxStreams: 100_000,
    });
    try {
      // 3 streams per notification (an order topic, a merchant, a device), as payment transitions have.
      for (let i = 0; i < 3000; i++)
        await h.append(note({ topics: [`order:${i}`], users: ['m-1', `u-${i % 7}`] }));
      assert.equal(h.size.entries, 1000);
      assert.ok(h.evicted.entries > 0);
      // An early order's stream lost its entry: a client that saw nothing of it cannot recover.
      const early = await h.since('app', 't:order:0', { offset: 0, epoch: '' });
      assert.equal(early.recovered, false);
      assert.equal(early.entries.length, 0);
      // The newest entries are all there; the merchant stream kept only its newest ones, in order.
      const late = await h.since('app', 't:order:2999', { offset: 0, epoch: '' });
      assert.equal(late.recovered, true);
      assert.equal(late.entries.length, 1);
      const pos = await h.position('app', 'u:m-1');
      const m = await h.since('app', 'u:m-1', { offset: 2990, epoch: pos?.epoch ?? '' });
      assert.ok(m.entries.length > 0);
      assert.deepEqual(
        m.entries.map((n) => n.pos?.['u:m-1']?.[0]),
        Array.from({ length: 10 }, (_, i) => 2991 + i),
      );
    } finally {
      await h.close();
    }
  });

  it('does not hold on to entries dropped by the per-stream size', async () => {
    const h = new MemoryHistory(new HistoryPolicy([], 10, 300_000), {
      maxEntries: 100_000,
      maxStreams: 1000,
    });
    try {
      const ids: string[] = [];
      for (let i = 0; i < 50_000; i++) {
        const n = note({ topics: ['chat'] });
        ids.push(n.id);
        await h.append(n);
      }
      assert.equal(h.size.entries, 10);
      assert.ok(orderLength(h) <= 2 * 10 + 4096, `global order holds ${orderLength(h)}`);
      // The dropped entries still in the global order until it is compacted are (stream, offset) pairs:
      // they keep none of their notifications, the stream holds the last 10 only.
      const { order, head } = h as unknown as { order: { kept: number[] }[]; head: number };
      const waiting = order.slice(head);
      assert.ok(waiting.length > 10, `${waiting.length} in the global order`);
      assert.ok(waiting.every((s) => s === waiting[0]));
      assert.equal(waiting[0]?.kept.length, 10);
      // Nor their bytes: the arena holds the 10 records, in at most a few segments.
      assert.ok(h.bytes.live < 10 * 100, `${h.bytes.live} bytes live`);
      assert.ok(h.bytes.held <= 6 * SEGMENT_BYTES, `${h.bytes.held} bytes held`);
      const all = await h.since('app', 't:chat', {
        offset: 0,
        epoch: (await h.position('app', 't:chat'))?.epoch ?? '',
      });
      assert.deepEqual(
        all.entries.map((n) => n.id),
        ids.slice(-10),
      );
      const r = await h.since('app', 't:chat', {
        offset: 49_995,
        epoch: (await h.position('app', 't:chat'))?.epoch ?? '',
      });
      assert.deepEqual(
        [r.recovered, r.offset, r.entries.map((n) => [n.id, n.pos?.['t:chat']?.[0]])],
        [true, 50_000, ids.slice(-5).map((id, i) => [id, 49_996 + i])],
      );
    } finally {
      await h.close();
    }
  });

  it('forgets the oldest streams past maxStreams, idle ones first', async () => {
    const h = new MemoryHistory(new HistoryPolicy([], 100, 300_000), {
      maxEntries: 100_000,
      maxStreams: 1000,
    });
    try {
      for (let i = 0; i < 5000; i++) await h.append(note({ topics: [`order:${i}`] }));
      // Creation sweeps once 1.5 x maxStreams is reached, so the count never runs away between sweeps.
      assert.ok(h.size.streams <= 1500, `${h.size.streams} streams`);
      h.sweep();
      assert.equal(h.size.streams, 1000);
      assert.equal(h.size.entries, 1000, 'the entries of forgotten streams are gone too');
      const kept = await h.since('app', 't:order:4999', { offset: 0, epoch: '' });
      assert.equal(kept.entries.length, 1);
      const gone = await h.since('app', 't:order:0', { offset: 1, epoch: 'whatever' });
      assert.equal(gone.recovered, false);
    } finally {
      await h.close();
    }
  });

  it('still expires entries by TTL in the sweep', async () => {
    const h = new MemoryHistory(new HistoryPolicy([], 100, 1000), { maxEntries: 100_000, maxStreams: 1000 });
    try {
      for (let i = 0; i < 100; i++) await h.append(note({ topics: ['a', 'b'] }));
      assert.equal(h.size.entries, 200);
      h.sweep(Date.now() + 5000);
      assert.equal(h.size.entries, 0);
      assert.equal(h.size.streams, 2, 'idle streams keep their offset for an hour');
    } finally {
      await h.close();
    }
  });
});

describe('in-memory receipts bounds', () => {
  it('keeps at most max notifications, forgetting the oldest', async () => {
    const r = new MemoryReceipts(3_600_000, 1000);
    try {
      const notes = Array.from({ length: 1500 }, () => note({ users: ['u'] }));
      for (const n of notes) await r.expect(n);
      assert.equal(r.size, 1000);
      assert.equal(r.evicted, 500);
      assert.equal(await r.get((notes[0] as Notification).id), undefined);
      assert.equal(
        await r.record('app', (notes[0] as Notification).id, { clientId: 'u', deviceId: null, at: 1 }),
        false,
      );
      const last = notes[1499] as Notification;
      assert.equal(await r.record('app', last.id, { clientId: 'u', deviceId: null, at: 1 }), true);
      assert.equal((await r.get(last.id))?.receipts.length, 1);
    } finally {
      r.close();
    }
  });

  it('receipts: the oldest expected go first, whatever was looked up or recorded since; re-published ones last', async () => {
    const r = new MemoryReceipts(60_000, 3);
    try {
      const [a, b, c, d] = Array.from({ length: 4 }, () => note({ users: ['u'] })) as Notification[];
      for (const n of [a, b, c] as Notification[]) await r.expect(n);
      // Receipts and reads do not make a notification younger.
      assert.equal(
        await r.record('app', (a as Notification).id, { clientId: 'u', deviceId: null, at: 1 }),
        true,
      );
      assert.ok(await r.get((a as Notification).id));
      // Expected again (same id): it goes to the back, so b is now the oldest.
      await r.expect(a as Notification);
      await r.expect(d as Notification);
      assert.equal(await r.get((b as Notification).id), undefined);
      assert.ok(await r.get((a as Notification).id));
      assert.equal(r.evicted, 1);
      // The sweep drops the expired ones only (from the oldest end).
      const old = { ...note({ users: ['u'] }), ts: Date.now() - 120_000 };
      const fresh = new MemoryReceipts(60_000, 10);
      await fresh.expect(old);
      await fresh.expect(c as Notification);
      fresh.sweep();
      assert.equal(fresh.size, 1);
      assert.equal(await fresh.get(old.id), undefined);
      assert.ok(await fresh.get((c as Notification).id));
      fresh.close();
    } finally {
      r.close();
    }
  });

  it('records one receipt per client and device, also for a broadcast heard by many', async () => {
    const r = new MemoryReceipts(3_600_000, 1000);
    try {
      const n = note({ topics: ['all'] });
      await r.expect(n);
      for (let round = 0; round < 2; round++) {
        for (let i = 0; i < 50; i++) {
          assert.equal(
            await r.record('app', n.id, { clientId: `c-${i % 25}`, deviceId: `d-${i}`, at: i }),
            true,
          );
        }
      }
      assert.equal((await r.get(n.id))?.receipts.length, 50);
      assert.equal(await r.record('other-app', n.id, { clientId: 'x', deviceId: null, at: 1 }), false);
    } finally {
      r.close();
    }
  });

  it('sweeps expired receipts from the front', async () => {
    const r = new MemoryReceipts(1000, 1000);
    try {
      for (let i = 0; i < 10; i++) await r.expect(note({ users: ['u'] }));
      r.sweep(Date.now() + 500);
      assert.equal(r.size, 10);
      r.sweep(Date.now() + 2000);
      assert.equal(r.size, 0);
    } finally {
      r.close();
    }
  });
});
