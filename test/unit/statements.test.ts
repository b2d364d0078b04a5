import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { statement } from '../../src/store/index.js';
import { testStores } from '../helpers.js';

/** Prepared statements (store/types.ts `statement`) on both stores. */
describe('prepared statements', () => {
  const stores = testStores('t_stmt');

  const twice = statement('test_twice', 'SELECT $1::int * 2 AS n');

  for (const kind of ['postgres', 'embedded'] as const) {
    it(`run with their parameters, again and again, in and out of transactions (${kind})`, async () => {
      const store = await stores.open(kind);
      // More runs than PostgreSQL's plan cache needs before it may pick a generic plan.
      for (let i = 0; i < 8; i++) {
        const r = await store.query<{ n: number }>(twice, [i]);
        assert.equal(r.rows[0]?.n, i * 2);
      }
      const inTx = await store.transaction((tx) => tx.query<{ n: number }>(twice, [21]));
      assert.equal(inTx.rows[0]?.n, 42);
      if (kind === 'postgres') {
        // Prepared on the connection under its name, in the configured schema.
        const names = await store.transaction((tx) =>
          Promise.all([
            tx.query<{ n: number }>(twice, [1]),
            tx.query<{ name: string }>('SELECT name FROM pg_prepared_statements'),
          ]),
        );
        assert.ok(names[1].rows.some((r) => r.name === 'herald_test_twice'));
      }
      await assert.rejects(store.query(twice, ['not a number']), /invalid input syntax/);
    });

    it(`plan: 'custom' statements are prepared but planned at every run (${kind})`, async () => {
      const store = await stores.open(kind, 'custom');
      const probe = statement(
        'test_custom_probe',
        `SELECT $1::int + 1 AS n, current_setting('plan_cache_mode') AS mode,
           (SELECT count(*) FROM pg_prepared_statements WHERE name = 'herald_test_custom_probe')::int AS prepared`,
        { plan: 'custom' },
      );
      for (let i = 0; i < 8; i++) {
        const r = await store.query<{ n: number; mode: string; prepared: number }>(probe, [i]);
        assert.equal(r.rows[0]?.n, i + 1);
        if (kind === 'postgres') {
          // On connections of their own that never cache a generic plan, prepared under the name.
          assert.equal(r.rows[0]?.mode, 'force_custom_plan');
          assert.equal(r.rows[0]?.prepared, 1);
        }
      }
      // In a transaction (a connection of the main pool) it runs unnamed: no generic plan there either.
      const inTx = await store.transaction((tx) =>
        tx.query<{ n: number; mode: string; prepared: number }>(probe, [41]),
      );
      assert.equal(inTx.rows[0]?.n, 42);
      if (kind === 'postgres') {
        assert.equal(inTx.rows[0]?.mode, 'auto');
        assert.equal(inTx.rows[0]?.prepared, 0);
        // The other statements keep the main pool, where generic plans may be cached.
        const mode = await store.query<{ mode: string }>("SELECT current_setting('plan_cache_mode') AS mode");
        assert.equal(mode.rows[0]?.mode, 'auto');
      }
    });
  }
});
