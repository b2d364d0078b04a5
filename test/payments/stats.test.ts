import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { foldCounts } from '../../src/payments/ledger.js';
import type { Herald } from '../../src/server.js';
import { cleanupSpots, ev, get, machine, newOrderId, newSpot, report, STORES, startNode } from './helpers.js';

const APP = 'pos-stats';
const OTHER_APP = 'pos-stats-other';

after(cleanupSpots);

const STATES = ['created', 'paying', 'succeeded', 'failed', 'closed', 'refunded'] as const;

/** Counts per state straight from the orders table (what the counters must agree with). */
async function scanned(
  herald: Herald,
  f: { appId?: string; merchantId?: string; from?: Date; to?: Date },
): Promise<Record<string, number>> {
  const { rows } = await herald.store.query<{ state: string; n: number }>(
    `SELECT state, count(*)::int AS n FROM payment_orders
     WHERE ($1::text IS NULL OR app_id = $1) AND ($2::text IS NULL OR merchant_id = $2)
       AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4)
     GROUP BY state`,
    [f.appId ?? null, f.merchantId ?? null, f.from?.toISOString() ?? null, f.to?.toISOString() ?? null],
  );
  const out: Record<string, number> = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const r of rows) out[r.state] = Number(r.n);
  return out;
}

async function eventsInLastMinutes(herald: Herald, appId: string, minutes: number): Promise<number> {
  const { rows } = await herald.store.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM payment_events WHERE app_id = $1
       AND received_at >= date_trunc('minute', now()) - ($2::int - 1) * interval '1 minute'`,
    [appId, minutes],
  );
  return Number(rows[0]?.n);
}

/** Rewrites every pending counter delta row in format 1 (`[{a, m, h, s, d}]`, `[{a, m, e, t}]`). */
async function asFormat1(herald: Herald): Promise<void> {
  const { rows } = await herald.store.query<{ id: number; states: string; minutes: string }>(
    'SELECT id, states, minutes FROM payment_count_deltas',
  );
  assert.ok(rows.length > 0, 'pending delta rows');
  for (const r of rows) {
    const s = JSON.parse(r.states) as { v: 2; g: [string, string | null, (string | number)[]][] };
    const m = JSON.parse(r.minutes) as { v: 2; g: [string, (string | number)[]][] };
    assert.equal(s.v, 2);
    const states = s.g.flatMap(([a, h, flat]) =>
      Array.from({ length: flat.length / 3 }, (_, i) => ({
        a,
        m: flat[3 * i],
        h,
        s: flat[3 * i + 1],
        d: flat[3 * i + 2],
      })),
    );
    const minutes = m.g.flatMap(([a, flat]) =>
      Array.from({ length: flat.length / 3 }, (_, i) => ({
        a,
        m: flat[3 * i],
        e: flat[3 * i + 1],
        t: flat[3 * i + 2],
      })),
    );
    await herald.store.query('UPDATE payment_count_deltas SET states = $2, minutes = $3 WHERE id = $1', [
      r.id,
      JSON.stringify(states),
      JSON.stringify(minutes),
    ]);
  }
}

function query(f: { appId?: string; merchantId?: string; from?: Date; to?: Date }): string {
  const q = new URLSearchParams({ minutes: '5' });
  if (f.appId) q.set('appId', f.appId);
  if (f.merchantId) q.set('merchantId', f.merchantId);
  if (f.from) q.set('from', f.from.toISOString());
  if (f.to) q.set('to', f.to.toISOString());
  return `/payments/stats?${q}`;
}

/** Asserts that GET /payments/stats agrees with a scan of the orders for several filters and windows. */
async function assertMatches(herald: Herald, label: string): Promise<void> {
  const now = Date.now();
  const filters = [
    { appId: APP },
    { appId: APP, merchantId: 'm-a' },
    { appId: APP, merchantId: 'm-b' },
    { appId: OTHER_APP },
    {},
    { appId: APP, from: new Date(now - 90 * 60_000), to: new Date(now + 90 * 60_000) },
    { appId: APP, from: new Date(now - 20 * 60_000) },
    { appId: APP, merchantId: 'm-a', to: new Date(now + 1000) },
    { appId: APP, from: new Date(now - 5000), to: new Date(now + 5000) },
    { from: new Date(now - 3 * 3_600_000), to: new Date(now - 2 * 3_600_000) },
  ];
  for (const f of filters) {
    const res = await get(herald, query(f));
    assert.equal(res.status, 200, `${label}: ${query(f)}`);
    const want = await scanned(herald, f);
    assert.deepEqual(res.body.counts, want, `${label}: counts of ${query(f)}`);
    const total = Object.values(want).reduce((a, b) => a + b, 0);
    assert.equal(res.body.total, total, `${label}: total of ${query(f)}`);
  }
  for (const appId of [APP, OTHER_APP]) {
    const res = await get(herald, query({ appId }));
    const tp = res.body.throughput as { perMinute: { events: number }[] };
    const sum = tp.perMinute.reduce((n, m) => n + m.events, 0);
    assert.equal(sum, await eventsInLastMinutes(herald, appId, 5), `${label}: events per minute of ${appId}`);
  }
}

for (const kind of STORES) {
  describe(`payments on the ${kind} store: stats from counters`, () => {
    it('keeps counts per state and events per minute equal to what the orders and events say', async () => {
      // No automatic sweep: the counter deltas stay unfolded until the test folds them.
      const herald = await startNode(newSpot(kind), {
        paymentSweepInterval: 600_000,
        paymentTimeout: 600_000,
      });
      try {
        const a = await machine(herald, APP, 'pos-sa', 'm-a');
        const b = await machine(herald, APP, 'pos-sb', 'm-b');
        const other = await machine(herald, OTHER_APP, 'pos-so', 'm-a');
        const lifecycles: [typeof a, string[]][] = [
          [a, ['created', 'paying', 'succeeded']],
          [a, ['created', 'paying', 'failed']],
          [a, ['created', 'succeeded', 'refunded']],
          [a, ['paying']],
          [b, ['created', 'closed']],
          [b, ['created', 'paying', 'succeeded', 'paying']],
          [b, ['created']],
          [other, ['created', 'paying', 'succeeded']],
        ];
        const run = async (list: typeof lifecycles) => {
          for (const [socket, types] of list) {
            const orderId = newOrderId();
            for (const type of types) {
              const r = await report(socket, ev({ orderId, type, amount: 3 }));
              assert.equal(r.ok, true, JSON.stringify(r));
            }
          }
        };
        await run(lifecycles);
        await assertMatches(herald, 'unfolded deltas');

        // Delta rows in the format of earlier versions (arrays of objects) are still counted and folded:
        // the pending rows are rewritten in it, then read and folded like the others.
        await asFormat1(herald);
        await assertMatches(herald, 'unfolded deltas of the earlier format');
        await run(lifecycles.slice(0, 2));
        await assertMatches(herald, 'unfolded deltas of both formats');

        // A fold takes the rows a chunk at a time and writes the counters once: a part of the rows
        // folded, the rest pending, the figures do not change.
        const before = await herald.store.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM payment_count_deltas',
        );
        const rows = Number(before.rows[0]?.n);
        assert.ok(rows > 6, `${rows} delta rows`);
        const part = await foldCounts(herald.store, 2, 3);
        assert.equal(part.rows, 6);
        assert.equal(part.more, true);
        assert.ok(part.counters > 0);
        await assertMatches(herald, 'partly folded');

        // Fold the deltas into the counters: the figures do not change.
        await herald.payments.sweep();
        const pending = await herald.store.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM payment_count_deltas',
        );
        assert.equal(Number(pending.rows[0]?.n), 0);
        await assertMatches(herald, 'folded');

        // New transitions of folded orders, and new orders, on top of folded counters.
        await run(lifecycles);
        const orderId = newOrderId();
        await report(a, ev({ orderId, type: 'created', amount: 5 }));
        await report(a, ev({ orderId, type: 'closed', meta: { reason: 'cancelled' } }));
        await assertMatches(herald, 'folded and unfolded');
        await herald.payments.sweep();
        await assertMatches(herald, 'folded again');
        // Every sweep step that ran is timed (two sweeps so far).
        const metrics = await (await fetch(`${herald.url()}/metrics`)).text();
        for (const step of ['timeouts', 'webhooks', 'fold', 'outbox']) {
          assert.match(metrics, new RegExp(`herald_payment_sweep_seconds_count\\{step="${step}"\\} 2\n`));
        }

        const all = await get(herald, query({ appId: APP }));
        // Succeeded 4 + 1 (the extra run of the first two lifecycles), refunded 2, failed 2 + 1, closed 3.
        assert.equal(all.body.successRate, (5 + 2) / (5 + 2 + 3 + 3));
        for (const s of [a, b, other]) s.close();
      } finally {
        await herald.stop();
      }
    });
  });
}
