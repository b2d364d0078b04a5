import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EntryArena, SEGMENT_BYTES } from '../../src/history/arena.js';
import { HistoryPolicy, MemoryHistory } from '../../src/history/index.js';
import type { Notification } from '../../src/router/types.js';

describe('history arena', () => {
  it('gives back every entry as it was stored: ASCII, other text, unpaired surrogates, empty, ack', () => {
    const a = new EntryArena();
    const cases = [
      { id: 'n-1', ts: 1_700_000_000_123, data: '{"s":1}', ack: false },
      { id: 'n-2', ts: 1, data: '{"text":"收款 4.00 元","e":"é"}', ack: true },
      { id: 'idé-\u{1F600}', ts: 2.5, data: '"\ud800 lone"', ack: false },
      { id: '', ts: 0, data: '', ack: true },
      { id: 'x'.repeat(300), ts: Number.MAX_SAFE_INTEGER, data: 'null', ack: false },
    ];
    const at = cases.map((c) => a.append(c.id, c.ts, c.data, c.ack));
    at.forEach((pos, i) => {
      assert.deepEqual(a.read(pos), cases[i]);
      assert.equal(a.ts(pos), cases[i]?.ts);
    });
  });

  it('stores a record larger than a segment in a segment of its own, and gives it back', () => {
    const a = new EntryArena();
    const small = a.append('s', 1, '{}', false);
    const data = `"${'y'.repeat(SEGMENT_BYTES + 1000)}"`;
    const big = a.append('big', 2, data, false);
    assert.equal(a.read(big).data, data);
    assert.equal(a.read(small).data, '{}');
    assert.ok(a.heldBytes >= SEGMENT_BYTES * 2 + 1000);
    const after = a.append('after', 3, '{}', false);
    a.free(big);
    assert.equal(a.read(after).id, 'after');
    assert.ok(a.heldBytes < SEGMENT_BYTES * 3, `${a.heldBytes} bytes held`);
  });

  it('keeps a record held by several streams until the last lets it go', () => {
    const a = new EntryArena();
    const pos = a.append('shared', 5, '{"k":1}', false);
    a.retain(pos);
    a.retain(pos);
    const bytes = a.liveBytes;
    a.free(pos);
    a.free(pos);
    assert.equal(a.liveBytes, bytes);
    assert.equal(a.read(pos).id, 'shared');
    a.free(pos);
    assert.equal(a.liveBytes, 0);
  });

  it('gives segments back once their records are freed, whatever the order', () => {
    const a = new EntryArena();
    const data = JSON.stringify({ pad: 'z'.repeat(1000) });
    const held: number[] = [];
    for (let i = 0; i < 5000; i++) held.push(a.append(`n-${i}`, i, data, false));
    const segments = a.segmentCount;
    assert.ok(segments >= 4, `${segments} segments`);
    // Freed out of order (evens, then odds): nothing goes before its segment is empty.
    for (let i = 0; i < held.length; i += 2) a.free(held[i] as number);
    assert.equal(a.segmentCount, segments);
    for (let i = 1; i < held.length; i += 2) {
      assert.equal(a.read(held[i] as number).id, `n-${i}`);
      a.free(held[i] as number);
    }
    assert.equal(a.liveBytes, 0);
    assert.equal(a.segmentCount, 1, 'only the current segment is left');
  });
});

/** One turn of the event loop: what a server does between requests (an arena compaction runs in its own turns). */
const turn = () => new Promise<void>((r) => setImmediate(r));

async function settled(h: MemoryHistory): Promise<void> {
  for (let i = 0; i < 1000 && h.compacting; i++) await turn();
  assert.equal(h.compacting, false);
}

let seq = 0;
function note(target: { topics?: string[]; users?: string[] }, data = '{}'): Notification {
  seq++;
  return { v: 1, id: `n-${seq}`, appId: 'app', ts: Date.now(), data, ...target };
}

describe('in-memory history on the arena', () => {
  it('moves the few long-lived entries out of sparse segments, and replays them unchanged', async () => {
    // A quiet stream keeps its entries (size 100) while a busy one keeps its last 5: without moving the
    // quiet stream's entries, each would keep a whole segment of dropped busy entries alive.
    const h = new MemoryHistory(
      new HistoryPolicy([{ prefix: 't:busy', size: 5, ttlMs: 300_000 }], 100, 300_000),
      { maxEntries: 100_000, maxStreams: 1000 },
    );
    try {
      const pad = JSON.stringify({ pad: 'p'.repeat(2000) });
      const quiet: Notification[] = [];
      for (let round = 0; round < 40; round++) {
        const q = note({ topics: ['quiet'], users: ['u-1'] }, JSON.stringify({ round, text: '收款' }));
        quiet.push(q);
        await h.append(q);
        for (let i = 0; i < 600; i++) await h.append(note({ topics: ['busy'] }, pad));
        await turn();
      }
      await settled(h);
      assert.ok(h.compactions > 0);
      // 24,000 busy entries of ~2 KB went through (~48 MB); what is held stays near what is live.
      assert.ok(h.bytes.held <= 2 * h.bytes.live + 6 * SEGMENT_BYTES, JSON.stringify(h.bytes));
      const epoch = (await h.position('app', 't:quiet'))?.epoch ?? '';
      const r = await h.since('app', 't:quiet', { offset: 0, epoch });
      assert.equal(r.recovered, true);
      assert.deepEqual(
        r.entries.map((n) => [n.id, n.data, n.ts, n.pos?.['t:quiet']?.[0]]),
        quiet.map((q, i) => [q.id, q.data, q.ts, i + 1]),
      );
      // The same records, shared with the user's stream, came along once.
      const userEpoch = (await h.position('app', 'u:u-1'))?.epoch ?? '';
      const u = await h.since('app', 'u:u-1', { offset: 0, epoch: userEpoch });
      assert.deepEqual(
        u.entries.map((n) => n.id),
        quiet.map((q) => q.id),
      );
      const busy = await h.since('app', 't:busy', {
        offset: 0,
        epoch: (await h.position('app', 't:busy'))?.epoch ?? '',
      });
      assert.equal(busy.entries.length, 5);
      assert.equal(busy.entries[4]?.data, pad);
    } finally {
      await h.close();
    }
  });

  it('compacts in slices of its own, a long walk never in one go, and stops with the history', async () => {
    const h = new MemoryHistory(
      new HistoryPolicy([{ prefix: 't:busy', size: 5, ttlMs: 3_600_000 }], 300, 3_600_000),
      { maxEntries: 200_000 },
    );
    try {
      const data = JSON.stringify({ s: 1, type: 'payment', status: 'success', orderId: 'order-1234567' });
      // One quiet entry in five lives long, the busy ones are dropped: every segment stays a fifth full.
      for (let i = 0; i < 150_000; i++) {
        const topic = i % 5 === 0 ? `quiet-${i % 40_000}` : `busy-${i % 100}`;
        h.appendNow(note({ topics: [topic] }, data));
      }
      assert.equal(h.compacting, true, 'a compaction started');
      assert.equal(h.compactStep(0), false, 'a slice with no time left does not walk it all');
      await settled(h);
      assert.ok(h.bytes.held <= 2 * h.bytes.live + 6 * SEGMENT_BYTES, JSON.stringify(h.bytes));
      const quiet = await h.since('app', 't:quiet-5', {
        offset: 0,
        epoch: (await h.position('app', 't:quiet-5'))?.epoch ?? '',
      });
      assert.ok(quiet.entries.length > 0);
      assert.equal(quiet.entries[0]?.data, data);
    } finally {
      await h.close();
    }
    assert.equal(h.compacting, false);
  });

  it('keeps at most maxBytes of entries, the oldest of all going first', async () => {
    const maxBytes = 4 * SEGMENT_BYTES;
    const h = new MemoryHistory(new HistoryPolicy([], 300, 300_000), { maxEntries: 100_000, maxBytes });
    try {
      // 64 KB notifications to 20 users: 2,000 of them (131 MB) would fit in maxEntries many times over.
      const big = JSON.stringify({ blob: 'b'.repeat(64 * 1024) });
      const sent: Notification[] = [];
      for (let i = 0; i < 2000; i++) {
        const n = note({ users: [`u-${i % 20}`] }, big);
        sent.push(n);
        await h.append(n);
        assert.ok(h.bytes.live <= maxBytes, `${h.bytes.live} bytes live after ${i + 1}`);
        if (i % 20 === 0) await turn();
      }
      await settled(h);
      assert.ok(h.bytes.held <= 2 * maxBytes + 6 * SEGMENT_BYTES, JSON.stringify(h.bytes));
      assert.ok(h.evicted.entries > 1900, `${h.evicted.entries} evicted`);
      // What is kept is the newest: each user's last few, replayed whole.
      const kept = h.size.entries;
      assert.ok(kept >= 40 && kept <= 64, `${kept} kept`);
      const epoch = (await h.position('app', 'u:u-19'))?.epoch ?? '';
      const r = await h.since('app', 'u:u-19', { offset: 0, epoch });
      assert.equal(r.recovered, false, 'the first ones were evicted');
      const last = sent.filter((n) => n.users?.[0] === 'u-19').slice(-r.entries.length);
      assert.ok(r.entries.length >= 2);
      assert.deepEqual(
        r.entries.map((n) => [n.id, n.data.length]),
        last.map((n) => [n.id, big.length]),
      );
    } finally {
      await h.close();
    }
  });

  it('keeps a notification older than the TTL for a stream that holds it, when another dropped it at once', async () => {
    const h = new MemoryHistory(new HistoryPolicy([], 300, 60_000));
    const size = (n: Notification) => 21 + n.id.length + n.data.length;
    try {
      const fresh = note({ users: ['u'] }, '{"n":1}');
      await h.append(fresh);
      // An outbox publishing an old notification again: the empty topic stream drops it as soon as it is
      // appended (a TTL drops from the front), the user's stream keeps it behind its fresh entry.
      const old = { ...note({ topics: ['t'], users: ['u'] }, '{"old":true}'), ts: Date.now() - 120_000 };
      await h.append(old);
      assert.equal(h.size.entries, 2);
      assert.equal(h.bytes.live, size(fresh) + size(old), 'the record the user stream holds is counted');
      const later = note({ topics: ['t'], users: ['u'] }, '{"n":2}');
      await h.append(later);
      const epoch = (await h.position('app', 'u:u'))?.epoch ?? '';
      const r = await h.since('app', 'u:u', { offset: 0, epoch });
      assert.deepEqual(
        r.entries.map((n) => [n.id, n.data]),
        [fresh, old, later].map((n) => [n.id, n.data]),
      );
      h.sweep(Date.now() + 61_000);
      assert.equal(h.bytes.live, 0);
    } finally {
      await h.close();
    }
  });

  it('lets go of every byte when its entries expire', async () => {
    const h = new MemoryHistory(new HistoryPolicy([], 1000, 60_000), { maxEntries: 100_000 });
    try {
      for (let i = 0; i < 2000; i++) await h.append(note({ users: [`u-${i % 50}`] }, '{"a":1}'));
      assert.ok(h.bytes.live > 0);
      h.sweep(Date.now() + 61_000);
      assert.deepEqual(h.size.entries, 0);
      assert.equal(h.bytes.live, 0);
      assert.ok(h.bytes.held <= SEGMENT_BYTES, `${h.bytes.held} bytes held`);
    } finally {
      await h.close();
    }
  });
});
