import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MachineTail } from '../../src/console/feeds.js';
import { createLogger } from '../../src/logger.js';
import { MachinePresence } from '../../src/payments/presence.js';
import type { Store } from '../../src/store/index.js';
import { testStores } from '../helpers.js';

const presence = (store: Store) =>
  new MachinePresence({ store, logger: createLogger('silent'), intervalMs: 1000, publish: () => {} });

/**
 * The console's machine feed (console/feeds.ts MachineTail) reports every online/offline change once,
 * also an offline change made by another node for a silent node's machine, whose disconnect time (the
 * silent node's last heartbeat) lies before the feed's previous read.
 */
describe('console machine feed', () => {
  const stores = testStores('t_mtail');
  for (const kind of ['postgres', 'embedded'] as const) {
    it(`reports a machine going online, and offline when another node reaps it, once each (${kind})`, async () => {
      const store = await stores.open(kind, 'feed');
      const tail = new MachineTail(store);
      assert.deepEqual(await tail.poll(), [], 'the first read only sets the start');
      const a = presence(store);
      const b = presence(store);
      await a.heartbeat();
      await b.heartbeat();
      a.connected('app', 'pos-1', 'm1', 's1');
      await a.flush();
      const online = await tail.poll();
      assert.deepEqual(
        online.map((i) => [i.deviceId, i.online]),
        [['pos-1', true]],
      );
      assert.deepEqual(await tail.poll(), [], 'not twice');

      // a goes silent: its machine connected an hour ago, its last heartbeat a minute ago (both before
      // the feed's last read).
      await store.query(
        `UPDATE payment_presence_nodes SET seen_at = now() - interval '1 minute' WHERE node_id = $1`,
        [a.nodeId],
      );
      await store.query(
        `UPDATE payment_machines SET last_seen_at = now() - interval '1 minute', connected_at = now() - interval '1 hour'`,
      );
      await b.tick();
      const offline = await tail.poll();
      assert.deepEqual(
        offline.map((i) => [i.deviceId, i.online]),
        [['pos-1', false]],
      );
      assert.ok(
        Date.now() - Date.parse(offline[0]?.at ?? '') > 50_000,
        'at: the silent node’s last heartbeat',
      );
      assert.deepEqual(await tail.poll(), [], 'not twice');
    });
  }
});

/**
 * More than 500 machines changing between two reads (a node restart reconnecting its terminals, a reaper
 * marking a dead node's machines offline in one statement) must not stop the feed: the read's row limit
 * once also cut off the row that carries the store's clock, so the tail never moved on and later changes
 * were never reported.
 */
describe('console machine feed under a burst of changes', () => {
  const stores = testStores('t_mburst');
  it('keeps reporting new changes after more than 500 machines changed at once', async () => {
    const store = await stores.open('embedded', 'burst');
    const tail = new MachineTail(store);
    assert.deepEqual(await tail.poll(), [], 'the first read only sets the start');
    await store.query(
      `INSERT INTO payment_machines (app_id, device_id, merchant_id, online, connected_at, last_seen_at, changed_at)
       SELECT 'app', 'burst-' || i, 'm1', true, now(), now(), now() FROM generate_series(1, 600) AS i`,
    );
    const burst = await tail.poll();
    assert.ok(burst.length > 0 && burst.length <= 500, `a capped batch, got ${burst.length}`);
    // Past the overlap window of the burst, one more machine comes online.
    await new Promise((r) => setTimeout(r, 2100));
    await store.query(
      `INSERT INTO payment_machines (app_id, device_id, merchant_id, online, connected_at, last_seen_at, changed_at)
       VALUES ('app', 'late', 'm1', true, now(), now(), now())`,
    );
    const later = [...(await tail.poll()), ...(await tail.poll())];
    assert.deepEqual(
      later.filter((i) => i.deviceId === 'late').map((i) => [i.deviceId, i.online]),
      [['late', true]],
      'the change after the burst is reported',
    );
  });
});
