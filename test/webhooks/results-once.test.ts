import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openStore, type Store } from '../../src/store/index.js';
import {
  type DeliveryUpdate,
  type MerchantUpdate,
  type QueueSettings,
  WebhookQueue,
} from '../../src/webhooks/queue.js';
import type { ClaimedDelivery } from '../../src/webhooks/types.js';
import { dropSchemas, newSchema, queueSettings, STORES, TEST_DATABASE_URL } from './helpers.js';

after(dropSchemas);

/**
 * A results write is retried when the store fails to answer; when the statement had committed (the
 * connection broke after the commit, before the answer) the retry must change nothing: the attempt log
 * holds one row per attempt and the merchants' totals, response times and failure counts (and so the
 * breaker) count each attempt once. Each batch has an id, passed again on every retry of it.
 */
for (const kind of STORES) {
  describe(`webhook results are written once per batch (${kind} store)`, () => {
    let store: Store;
    let dir: string;
    let q: WebhookQueue;
    const settings: QueueSettings = queueSettings('node-a', kind === 'embedded');

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'herald-results-once-'));
      store = await openStore(
        kind === 'postgres'
          ? { databaseUrl: TEST_DATABASE_URL, databaseSchema: newSchema(), dataDir: dir }
          : { databaseUrl: undefined, databaseSchema: 'herald', dataDir: dir },
      );
      q = new WebhookQueue(store, settings);
    });
    after(async () => {
      await store?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    async function enqueue(merchantKey: string, n: number): Promise<void> {
      for (let i = 0; i < n; i++) {
        await q.enqueue({
          id: randomUUID(),
          idempotencyKey: `${merchantKey}-${i}-${randomUUID()}`,
          orderNo: `O-${merchantKey}-${i}`,
          eventType: null,
          merchantKey,
          merchantId: null,
          notifyUrl: `http://127.0.0.1:9/${merchantKey}`,
          body: '{}',
        });
      }
    }

    function update(row: ClaimedDelivery, ok: boolean, durationMs: number): DeliveryUpdate {
      return {
        id: row.id,
        status: ok ? 'delivered' : 'retrying',
        attempts: row.attempts + 1,
        delayMs: ok ? null : 60_000,
        statusCode: ok ? 200 : 500,
        error: ok ? null : 'HTTP 500',
        orderNo: row.orderNo,
        merchantKey: row.merchantKey,
        url: row.notifyUrl,
        outcome: ok ? 'success' : 'http_error',
        responseBody: ok ? 'success' : 'oops',
        durationMs,
      };
    }

    /** The merchant aggregate of `updates`, in order (as the engine's aggregate() makes it). */
    function merchant(merchantKey: string, updates: readonly DeliveryUpdate[]): MerchantUpdate {
      const m: MerchantUpdate = {
        merchantKey,
        times: [],
        successes: 0,
        failures: 0,
        hadSuccess: false,
        trailingFailures: 0,
        goneUrl: null,
        lastGone: false,
        lastCode: null,
        lastError: null,
      };
      for (const u of updates) {
        m.times.push(u.durationMs);
        if (u.outcome === 'success') {
          m.successes++;
          m.hadSuccess = true;
          m.trailingFailures = 0;
        } else {
          m.failures++;
          m.trailingFailures++;
        }
        m.lastCode = u.statusCode;
        m.lastError = u.error;
      }
      return m;
    }

    /** What a results write changes for one merchant. */
    async function state(merchantKey: string) {
      const attempts = await store.query<{ delivery_id: string; n: number }>(
        `SELECT delivery_id, count(*)::int AS n FROM webhook_attempts WHERE merchant_key = $1
         GROUP BY delivery_id ORDER BY delivery_id`,
        [merchantKey],
      );
      const m = await store.query<{
        success_total: number;
        failure_total: number;
        consecutive_failures: number;
        samples: number;
        avg_ms: number;
        breaker_state: string;
      }>(
        `SELECT success_total::int AS success_total, failure_total::int AS failure_total, consecutive_failures,
           cardinality(recent_ms) AS samples, avg_ms, breaker_state
         FROM webhook_merchants WHERE merchant_key = $1`,
        [merchantKey],
      );
      const d = await store.query<{ id: string; status: string; attempts: number; due: Date }>(
        `SELECT id, status, attempts, next_attempt_at AS due FROM webhook_deliveries WHERE merchant_key = $1
         ORDER BY id`,
        [merchantKey],
      );
      return { attempts: attempts.rows, merchant: m.rows[0], deliveries: d.rows };
    }

    it('a batch written again with the same id changes nothing; a batch with another id is applied', async () => {
      const key = `m-once-${kind}`;
      await enqueue(key, 2);
      const claimed = await q.claim(10, []);
      assert.equal(claimed.length, 2);
      const [a, b] = claimed as [ClaimedDelivery, ClaimedDelivery];
      const updates = [update(a, true, 120), update(b, false, 80)];
      const merchants = [merchant(key, updates)];
      const batchId = randomUUID();

      const first = await q.complete(batchId, updates, merchants);
      assert.equal(first.length, 1, 'the merchant of the batch');
      const written = await state(key);
      assert.deepEqual(
        written.attempts.map((r) => r.n),
        [1, 1],
        'one attempt-log row per attempt',
      );
      assert.deepEqual(written.merchant, {
        success_total: 1,
        failure_total: 1,
        consecutive_failures: 1,
        samples: 2,
        avg_ms: 100,
        breaker_state: 'closed',
      });

      // The same batch again, as after a statement that committed but whose answer was lost: nothing
      // changes, and the answer is what the first write answered (the caller never saw it).
      assert.deepEqual(await q.complete(batchId, updates, merchants), first, 'the first answer again');
      assert.deepEqual(await state(key), written, 'nothing changed');

      // The failed webhook's next attempt is another batch: it is applied.
      await store.query('UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = $1', [b.id]);
      const again = await q.claim(10, [], {});
      assert.deepEqual(
        again.map((r) => r.id),
        [b.id],
      );
      const retry = [update(again[0] as ClaimedDelivery, false, 60)];
      const t = await q.complete(randomUUID(), retry, [merchant(key, retry)]);
      assert.equal(t.length, 1);
      const after2 = await state(key);
      assert.deepEqual(Object.fromEntries(after2.attempts.map((r) => [r.delivery_id, r.n])), {
        [a.id]: 1,
        [b.id]: 2,
      });
      assert.equal(after2.merchant?.success_total, 1);
      assert.equal(after2.merchant?.failure_total, 2);
      assert.equal(after2.merchant?.consecutive_failures, 2);
      assert.equal(after2.merchant?.samples, 3);
      assert.equal(after2.deliveries.find((d) => d.id === b.id)?.attempts, 2);
    });

    it('failures written twice do not open the breaker (the same batch at once, or again)', async () => {
      const key = `m-breaker-${kind}`;
      await enqueue(key, 3);
      const claimed = await q.claim(10, []);
      assert.equal(claimed.length, 3);
      const updates = claimed.map((r) => update(r, false, 50));
      const merchants = [merchant(key, updates)];
      const batchId = randomUUID();
      // Both at once: on PostgreSQL they run on two connections, and the second waits for the first.
      const results = await Promise.all([
        q.complete(batchId, updates, merchants),
        q.complete(batchId, updates, merchants),
      ]);
      // One applied the batch; the other (on PostgreSQL it failed on the batch id and was run again)
      // answers what the first did.
      assert.deepEqual(results[1], results[0]);
      assert.equal(results[0]?.length, 1);
      assert.deepEqual(await q.complete(batchId, updates, merchants), results[0]);
      const s = await state(key);
      assert.deepEqual(
        s.attempts.map((r) => r.n),
        [1, 1, 1],
      );
      // 3 failures, below the threshold of 5: counted twice they would have opened the breaker.
      assert.equal(s.merchant?.consecutive_failures, 3);
      assert.equal(s.merchant?.failure_total, 3);
      assert.equal(s.merchant?.breaker_state, 'closed');
    });

    it('a batch that opened the breaker, written again, answers the opening again (alerts, open breaker)', async () => {
      const key = `m-open-${kind}`;
      await enqueue(key, 5);
      const claimed = await q.claim(10, []);
      assert.equal(claimed.length, 5);
      const updates = claimed.map((r) => update(r, false, 40));
      const merchants = [merchant(key, updates)];
      const batchId = randomUUID();
      const first = await q.complete(batchId, updates, merchants);
      assert.deepEqual(
        first.map((t) => [t.merchantKey, t.oldState, t.newState, t.consecutiveFailures]),
        [[key, 'closed', 'open', 5]],
      );
      const written = await state(key);
      assert.equal(written.merchant?.breaker_state, 'open');
      // The answer was lost: written again, the opening is answered again, and nothing is counted twice.
      const again = await q.complete(batchId, updates, merchants);
      assert.deepEqual(again, first);
      assert.deepEqual(await state(key), written);
    });

    it('retention deletes batch ids older than a day and keeps the others', async () => {
      const old = randomUUID();
      const fresh = randomUUID();
      await store.query(
        `INSERT INTO webhook_result_batches (id, created_at) VALUES ($1, now() - interval '25 hours'), ($2, now() - interval '23 hours')`,
        [old, fresh],
      );
      await q.cleanup(30 * 86_400_000, 365 * 86_400_000);
      const r = await store.query<{ id: string }>(
        'SELECT id::text AS id FROM webhook_result_batches WHERE id IN ($1, $2)',
        [old, fresh],
      );
      assert.deepEqual(
        r.rows.map((x) => x.id),
        [fresh],
      );
    });
  });
}
