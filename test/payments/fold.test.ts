import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { encodeMinutes, encodeStates, foldCounts } from '../../src/payments/ledger.js';
import type { Store } from '../../src/store/index.js';
import { testStores } from '../helpers.js';

/** Writes `n` delta rows as the intake does: each one order `created` for merchant `m<i % 3>`, one event. */
async function addDeltas(store: Store, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const m = `m${i % 3}`;
    await store.query('INSERT INTO payment_count_deltas (states, minutes) VALUES ($1, $2)', [
      encodeStates([{ a: 'app', m, h: null, s: 'created', d: 1 }]),
      encodeMinutes([{ a: 'app', m, e: 1, t: 1 }]),
    ]);
  }
}

/** What the counters hold: created orders per merchant ('' is the app's total), events over all minutes. */
async function counters(store: Store): Promise<{ created: Record<string, number>; events: number }> {
  const s = await store.query<{ merchant_id: string; n: string | number }>(
    `SELECT merchant_id, sum(n)::text AS n FROM payment_state_counts
     WHERE app_id = 'app' AND state = 'created' GROUP BY merchant_id ORDER BY merchant_id`,
  );
  const m = await store.query<{ e: string | number | null }>(
    `SELECT sum(events)::text AS e FROM payment_minute_counts WHERE app_id = 'app' AND merchant_id = ''`,
  );
  return {
    created: Object.fromEntries(s.rows.map((r) => [r.merchant_id, Number(r.n)])),
    events: Number(m.rows[0]?.e ?? 0),
  };
}

async function pendingIds(store: Store): Promise<number[]> {
  const r = await store.query<{ id: string }>('SELECT id::text AS id FROM payment_count_deltas');
  return r.rows.map((x) => Number(x.id)).sort((a, b) => a - b);
}

/**
 * The sweep's fold of the payment counter deltas (ledger.ts `foldCounts`): rows read a chunk at a time
 * without a lock, then deleted and counted in one statement, which changes nothing when another node
 * folded some of the rows meanwhile.
 */
describe('payment counter fold', () => {
  const stores = testStores('t_fold');
  for (const kind of ['postgres', 'embedded'] as const) {
    const open = (name: string) => stores.open(kind, name);

    it(`takes the oldest rows a chunk at a time, past ids of more digits, and counts each once (${kind})`, async () => {
      const store = await open('paging');
      await addDeltas(store, 25);
      const ids = await pendingIds(store);
      assert.equal(ids.length, 25);

      // 3 chunks of 4: the 12 oldest rows (ids 1-12: a text order would take 1, 10, 11, 12, 13, ...).
      const part = await foldCounts(store, 4, 3);
      assert.equal(part.rows, 12);
      assert.equal(part.more, true);
      // Created per merchant and the app's total; events per merchant and total, per minute.
      assert.ok(part.counters >= 8, `${part.counters} counters`);
      assert.deepEqual(await pendingIds(store), ids.slice(12));
      assert.deepEqual(await counters(store), { created: { '': 12, m0: 4, m1: 4, m2: 4 }, events: 12 });

      const rest = await foldCounts(store, 4, 10);
      assert.equal(rest.rows, 13);
      assert.equal(rest.more, false);
      assert.deepEqual(await pendingIds(store), []);
      assert.deepEqual(await counters(store), { created: { '': 25, m0: 9, m1: 8, m2: 8 }, events: 25 });

      assert.deepEqual(await foldCounts(store, 4, 10), { rows: 0, counters: 0, more: false });
    });

    it(`writes nothing when another node folded some of the rows meanwhile (${kind})`, async () => {
      const store = await open('conflict');
      await addDeltas(store, 6);
      const ids = await pendingIds(store);
      // Another node folds (deletes) the oldest row between this fold's read and its write.
      let raced = false;
      const racing = new Proxy(store, {
        get(target, prop) {
          const v = Reflect.get(target, prop, target) as unknown;
          if (typeof v !== 'function') return v;
          if (prop !== 'query') return v.bind(target);
          return async (sql: unknown, params?: unknown[]) => {
            if (!raced && typeof sql === 'string' && sql.includes('DELETE FROM payment_count_deltas')) {
              raced = true;
              await target.query('DELETE FROM payment_count_deltas WHERE id = $1', [ids[0]]);
            }
            return target.query(sql as string, params);
          };
        },
      });
      const r = await foldCounts(racing, 100, 1);
      assert.ok(raced, 'the fold wrote through query()');
      assert.deepEqual(r, { rows: 0, counters: 0, more: false, conflict: true });
      assert.deepEqual(await pendingIds(store), ids.slice(1), 'the other rows are still pending');
      assert.deepEqual(await counters(store), { created: {}, events: 0 }, 'no counter written');

      // The next fold takes what is left.
      const rest = await foldCounts(store, 100, 1);
      assert.equal(rest.rows, 5);
      assert.equal(rest.more, false);
      assert.deepEqual(await counters(store), { created: { '': 5, m0: 1, m1: 2, m2: 2 }, events: 5 });
    });
  }
});
