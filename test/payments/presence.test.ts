import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createLogger } from '../../src/logger.js';
import { MachinePresence, type MachinePresenceInfo } from '../../src/payments/presence.js';
import type { Store } from '../../src/store/index.js';
import { testStores } from '../helpers.js';

const INTERVAL = 1000; // stale after 3 s; the tests age rows instead of waiting

function node(store: Store): { presence: MachinePresence; published: MachinePresenceInfo[] } {
  const published: MachinePresenceInfo[] = [];
  const presence = new MachinePresence({
    store,
    logger: createLogger('silent'),
    intervalMs: INTERVAL,
    publish: (c) => published.push(c),
  });
  return { presence, published };
}

async function row(
  store: Store,
  deviceId: string,
): Promise<{ online: boolean; node_id: string; last_seen_at: Date; disconnected_at: Date | null }> {
  const { rows } = await store.query<{
    online: boolean;
    node_id: string;
    last_seen_at: Date;
    disconnected_at: Date | null;
  }>(
    'SELECT online, node_id, last_seen_at, disconnected_at FROM payment_machines WHERE app_id = $1 AND device_id = $2',
    ['app', deviceId],
  );
  assert.ok(rows[0], `row of ${deviceId}`);
  return { ...rows[0], last_seen_at: new Date(rows[0].last_seen_at) };
}

async function nodeRows(store: Store): Promise<string[]> {
  const { rows } = await store.query<{ node_id: string }>(
    'SELECT node_id FROM payment_presence_nodes ORDER BY node_id',
  );
  return rows.map((r) => r.node_id);
}

/** Pushes a machine's own stamp into the past, as if it connected (or was last stamped) `ms` ago. */
async function age(store: Store, deviceId: string, ms: number): Promise<void> {
  await store.query(
    `UPDATE payment_machines SET last_seen_at = now() - $2::float8 * interval '1 millisecond'
     WHERE app_id = 'app' AND device_id = $1`,
    [deviceId, ms],
  );
}

/**
 * Machine presence across nodes (payments/presence.ts): a node refreshes one heartbeat row, not every
 * machine row; the machines of a node that stops refreshing go offline after 3 intervals; while a node of
 * an earlier version (which judges machines by their own rows) holds machines, nodes stamp theirs too.
 */
describe('machine presence heartbeats', () => {
  const stores = testStores('t_presence');
  for (const kind of ['postgres', 'embedded'] as const) {
    it(`keeps a live node's machines online by its heartbeat alone, and turns a silent node's offline (${kind})`, async () => {
      const store = await stores.open(kind, 'live');
      const a = node(store);
      const b = node(store);
      await a.presence.heartbeat();
      await b.presence.heartbeat();
      a.presence.connected('app', 'pos-1', 'm1', 's1');
      await a.presence.flush();
      assert.deepEqual(
        a.published.map((p) => [p.deviceId, p.online]),
        [['pos-1', true]],
      );
      // Connected well over 3 intervals ago: a's ticks write its heartbeat only, and b sees it online.
      await age(store, 'pos-1', 10 * INTERVAL);
      const connectedStamp = (await row(store, 'pos-1')).last_seen_at.getTime();
      await a.presence.tick();
      await b.presence.tick();
      const r = await row(store, 'pos-1');
      assert.equal(r.online, true);
      assert.equal(r.last_seen_at.getTime(), connectedStamp, 'the machine row is not stamped');
      assert.equal(b.published.length, 0);
      const listed = await b.presence.list(store, { appId: 'app' }, 1, 10);
      assert.equal(listed.total, 1);
      assert.equal(listed.devices[0]?.online, true);
      const seen = Date.parse(listed.devices[0]?.lastSeenAt ?? '');
      assert.ok(seen >= connectedStamp + 9 * INTERVAL, 'last seen is the node heartbeat');
      assert.equal((await b.presence.list(store, { appId: 'app', online: true }, 1, 10)).total, 1);

      // a stops (no goodbye). Its heartbeat 1 interval old: not yet stale.
      const beatAgo = async (ms: number): Promise<Date> => {
        const { rows } = await store.query<{ seen_at: Date }>(
          `UPDATE payment_presence_nodes SET seen_at = now() - $2::float8 * interval '1 millisecond'
           WHERE node_id = $1 RETURNING seen_at`,
          [a.presence.nodeId, ms],
        );
        return new Date(rows[0]?.seen_at as Date);
      };
      await beatAgo(INTERVAL);
      await b.presence.tick();
      assert.equal(b.published.length, 0, 'not yet stale');
      // 4 intervals old: b marks the machine offline, last seen at a's heartbeat, and publishes it once.
      const lastBeat = await beatAgo(4 * INTERVAL);
      await b.presence.tick();
      assert.deepEqual(
        b.published.map((p) => [p.deviceId, p.online, p.disconnectedAt]),
        [['pos-1', false, lastBeat.toISOString()]],
      );
      assert.equal((await row(store, 'pos-1')).online, false);
      const after = await b.presence.list(store, { appId: 'app' }, 1, 10);
      assert.equal(after.devices[0]?.online, false);
      assert.equal(after.devices[0]?.lastSeenAt, lastBeat.toISOString());
      await b.presence.tick();
      assert.equal(b.published.length, 1, 'published once');
    });

    it(`stamps its machines while a node of an earlier version holds machines (${kind})`, async () => {
      const store = await stores.open(kind, 'legacy');
      const a = node(store);
      await a.presence.heartbeat();
      a.presence.connected('app', 'pos-new', 'm1', 's1');
      await a.presence.flush();

      // No older node: the tick leaves the machine's own stamp alone.
      await age(store, 'pos-new', 10_000);
      const before = (await row(store, 'pos-new')).last_seen_at.getTime();
      await a.presence.tick();
      assert.equal((await row(store, 'pos-new')).last_seen_at.getTime(), before);

      // An older node (no heartbeat row) stamps its machine: a stamps its own as well.
      await store.query(
        `INSERT INTO payment_machines (app_id, device_id, merchant_id, online, node_id, connected_at, last_seen_at)
         VALUES ('app', 'pos-old', 'm1', true, 'old-node', now(), now())`,
      );
      await a.presence.tick();
      const stamped = (await row(store, 'pos-new')).last_seen_at.getTime();
      assert.ok(stamped > before + 5_000, 'stamped for the older node');
      assert.equal((await row(store, 'pos-new')).online, true);
      assert.deepEqual(
        a.published.map((p) => [p.deviceId, p.online]),
        [['pos-new', true]],
      );

      // The older node stops stamping: its machine goes offline, and a stops stamping.
      await age(store, 'pos-old', 10_000);
      await a.presence.tick();
      assert.deepEqual(
        a.published.map((p) => [p.deviceId, p.online]),
        [
          ['pos-new', true],
          ['pos-old', false],
        ],
      );
      await age(store, 'pos-new', 10_000);
      const aged = (await row(store, 'pos-new')).last_seen_at.getTime();
      await a.presence.tick();
      assert.equal((await row(store, 'pos-new')).last_seen_at.getTime(), aged);
      assert.equal((await row(store, 'pos-new')).online, true);
    });

    it(`turns its machines back online after another node took it for dead (${kind})`, async () => {
      const store = await stores.open(kind, 'reaped');
      const a = node(store);
      const b = node(store);
      await a.presence.heartbeat();
      await b.presence.heartbeat();
      a.presence.connected('app', 'pos-1', 'm1', 's1');
      a.presence.connected('app', 'pos-2', 'm1', 's2');
      await a.presence.flush();

      // a's heartbeat comes late (say the store was unreachable for it): b turns its machines offline.
      await store.query(
        `UPDATE payment_presence_nodes SET seen_at = now() - interval '10 seconds' WHERE node_id = $1`,
        [a.presence.nodeId],
      );
      await age(store, 'pos-1', 10_000);
      await age(store, 'pos-2', 10_000);
      await b.presence.tick();
      assert.deepEqual(b.published.map((p) => [p.deviceId, p.online]).sort(), [
        ['pos-1', false],
        ['pos-2', false],
      ]);
      // Meanwhile pos-2 reconnected to b: it is b's now, and a must not take it back.
      b.presence.connected('app', 'pos-2', 'm1', 's9');
      await b.presence.flush();

      // a is alive: its next heartbeat learns it was taken for dead and puts pos-1 back online.
      a.published.length = 0;
      await a.presence.tick();
      assert.deepEqual(
        a.published.map((p) => [p.deviceId, p.online]),
        [['pos-1', true]],
      );
      const r1 = await row(store, 'pos-1');
      assert.equal(r1.online, true);
      assert.equal(r1.node_id, a.presence.nodeId);
      const r2 = await row(store, 'pos-2');
      assert.equal(r2.online, true);
      assert.equal(r2.node_id, b.presence.nodeId);
      // Once only: the mark is cleared by the heartbeat.
      a.published.length = 0;
      await a.presence.tick();
      assert.equal(a.published.length, 0);
    });

    it(`after a restart of the embedded store's one process, its machines were last seen at its last heartbeat (${kind})`, async () => {
      const store = await stores.open(kind, 'restart');
      const before = node(store);
      await before.presence.heartbeat();
      before.presence.connected('app', 'pos-1', 'm1', 's1');
      await before.presence.flush();
      await age(store, 'pos-1', 60_000);
      const { rows } = await store.query<{ seen_at: Date }>(
        `UPDATE payment_presence_nodes SET seen_at = now() - interval '2 seconds' WHERE node_id = $1
         RETURNING seen_at`,
        [before.presence.nodeId],
      );
      const lastBeat = new Date(rows[0]?.seen_at as Date).toISOString();

      const after = node(store);
      await after.presence.resetAfterRestart();
      assert.deepEqual(
        after.published.map((p) => [p.deviceId, p.online, p.lastSeenAt, p.disconnectedAt]),
        [['pos-1', false, lastBeat, lastBeat]],
      );
      assert.deepEqual(await nodeRows(store), [], "the previous life's heartbeat row is gone");
    });

    it(`drops a change whose ids the store refuses instead of holding every other machine back (${kind})`, async () => {
      const store = await stores.open(kind, 'refused');
      const a = node(store);
      // Ids the handshake refuses (a NUL character) reaching presence anyway: the store refuses them.
      a.presence.connected('app', 'pos-ok', 'm1', 's1');
      a.presence.connected('app', 'pos-bad', 'm\u0000', 's2');
      // The first write fails as a whole (logged); the next flush (the sweep's) writes the other machine.
      await a.presence.flush();
      await a.presence.flush();
      assert.equal((await row(store, 'pos-ok')).online, true);
      assert.deepEqual(
        a.published.map((p) => [p.deviceId, p.online]),
        [['pos-ok', true]],
      );
      const { rows } = await store.query(
        "SELECT 1 FROM payment_machines WHERE app_id = 'app' AND device_id = 'pos-bad'",
      );
      assert.equal(rows.length, 0);
    });

    it(`forgets the heartbeat rows of nodes long gone, and its own on close (${kind})`, async () => {
      const store = await stores.open(kind, 'prune');
      const a = node(store);
      await store.query(
        `INSERT INTO payment_presence_nodes (node_id, seen_at) VALUES
           ('gone-long', now() - interval '2 hours'), ('gone-lately', now() - interval '2 minutes')`,
      );
      a.presence.connected('app', 'pos-1', 'm1', 's1');
      await a.presence.tick();
      assert.deepEqual(await nodeRows(store), [a.presence.nodeId, 'gone-lately'].sort());
      await a.presence.close();
      assert.deepEqual(await nodeRows(store), ['gone-lately']);
      assert.equal((await row(store, 'pos-1')).online, false);
      assert.deepEqual(
        a.published.map((p) => [p.deviceId, p.online]),
        [
          ['pos-1', true],
          ['pos-1', false],
        ],
      );
    });
  }
});
