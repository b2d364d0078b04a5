import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EmbeddedStore, statementLabel } from '../../src/store/embedded.js';
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

describe('prepared statements: parameters as they are bound', () => {
  const stores = testStores('t_bind');
  const echo = statement(
    'test_bind_echo',
    'SELECT $1::text AS a, $2::text AS b, $3::int AS n, $4::text[] AS list, $5::jsonb AS doc, $6::text AS big',
  );

  for (const kind of ['postgres', 'embedded'] as const) {
    it(`come back unchanged: multi-byte text, null, empty, numbers, arrays, JSON, 300 KB (${kind})`, async () => {
      const store = await stores.open(kind);
      const big = '收款 4.00 元 😀 '.repeat(20_000);
      for (const a of ['收款 4.00 元', '😀 ab', '', 'plain']) {
        const r = await store.query<Record<string, unknown>>(echo, [
          a,
          null,
          42,
          ['x', '收', 'y z', ''],
          JSON.stringify({ k: '元', n: [1, 2] }),
          big,
        ]);
        const row = r.rows[0] as Record<string, unknown>;
        assert.equal(row.a, a);
        assert.equal(row.b, null);
        assert.equal(row.n, 42);
        assert.deepEqual(row.list, ['x', '收', 'y z', '']);
        assert.deepEqual(row.doc, { k: '元', n: [1, 2] });
        assert.equal(row.big, big);
      }
      // A short statement after a long one: nothing of the long one's buffer leaks into it.
      const short = await store.query<{ a: string; big: string }>(echo, ['s', null, 1, [], '{}', '']);
      assert.equal(short.rows[0]?.a, 's');
      assert.equal(short.rows[0]?.big, '');
    });
  }
});

describe('embedded store turns (herald_embedded_store_* metrics)', () => {
  const stores = testStores('t_turns');

  it('names unnamed statements by verb and first table, bounded', () => {
    assert.equal(statementLabel('SELECT id FROM payment_orders WHERE x = $1'), 'select payment_orders');
    assert.equal(
      statementLabel('WITH d AS (DELETE FROM payment_count_deltas RETURNING 1) SELECT 1'),
      'with payment_count_deltas',
    );
    assert.equal(statementLabel('  update webhook_queue SET a = 1'), 'update webhook_queue');
    assert.equal(statementLabel('VACUUM payment_machines'), 'vacuum payment_machines');
    assert.equal(statementLabel('SELECT 1'), 'select');
    assert.equal(statementLabel(''), 'sql');
  });

  it('reports each statement and transaction: its name, its wait behind others, how long it held the store', async () => {
    const store = await stores.open('embedded');
    assert.ok(store instanceof EmbeddedStore);
    const turns: { op: string; waitMs: number; holdMs: number }[] = [];
    store.observe((op, waitMs, holdMs) => turns.push({ op, waitMs, holdMs }));
    await store.query(statement('test_turn', 'SELECT $1::int AS n'), [1]);
    await store.query('CREATE TABLE IF NOT EXISTS turn_probe (n int)');
    // Two at once: the second waits for the first, which holds the store ~50 ms.
    await Promise.all([
      store.query('SELECT pg_sleep(0.05) FROM turn_probe UNION ALL SELECT pg_sleep(0.05)'),
      store.query('INSERT INTO turn_probe (n) VALUES (1)'),
    ]);
    await store.transaction(async (tx) => {
      await tx.query('SELECT n FROM turn_probe');
      await new Promise((r) => setTimeout(r, 30));
      await tx.query('SELECT 1');
    });
    store.observe(undefined);
    await store.query('SELECT 1');
    assert.deepEqual(
      turns.map((t) => t.op),
      [
        'herald_test_turn',
        'create turn_probe',
        'select turn_probe',
        'insert turn_probe',
        'transaction select turn_probe',
      ],
    );
    const [, , sleep, insert, tx] = turns as [
      unknown,
      unknown,
      (typeof turns)[0],
      (typeof turns)[0],
      (typeof turns)[0],
    ];
    assert.ok(sleep.holdMs >= 45, `the sleep held ${sleep.holdMs} ms`);
    assert.ok(insert.waitMs >= 40, `the insert waited ${insert.waitMs} ms`);
    // A transaction holds the store for its whole span, the main thread's work between statements too.
    assert.ok(tx.holdMs >= 28, `the transaction held ${tx.holdMs} ms`);
  });
});
