import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openStore, type Store } from '../../src/store/index.js';
import { type QueueSettings, WebhookQueue } from '../../src/webhooks/queue.js';
import { queueSettings } from './helpers.js';

/**
 * The embedded store (PGlite) has no autovacuum: a table from which rows are deleted keeps their space
 * unless something runs VACUUM, and new rows never reuse it. The attempt log loses its oldest hour at
 * every cleanup once the retention is reached, so without a VACUUM it grew for as long as the node ran.
 * (PostgreSQL's autovacuum does this by itself.)
 */
describe('webhook retention upkeep (embedded store)', () => {
  let store: Store;
  let dir: string;
  let q: WebhookQueue;
  const settings: QueueSettings = queueSettings('node-a', true);
  const DAY = 86_400_000;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'herald-upkeep-'));
    store = await openStore({ databaseUrl: undefined, databaseSchema: 'herald', dataDir: dir });
    q = new WebhookQueue(store, settings);
  });
  after(async () => {
    await store?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the attempt log reuses the space of the logs the cleanup deletes, so it stops growing', async () => {
    const size = async () => {
      const r = await store.query<{ s: string }>(
        `SELECT pg_total_relation_size('webhook_attempts')::text AS s`,
      );
      return Number(r.rows[0]?.s);
    };
    // Each "hour": 2,000 attempts that have just passed the retention (a day), then the cleanup.
    const hour = async (h: number) => {
      await store.query(
        `INSERT INTO webhook_attempts (delivery_id, order_no, merchant_key, url, attempt, outcome, status_code,
           response_body, duration_ms, created_at)
         SELECT 'd-' || $1::int || '-' || g, 'O-' || $1::int || '-' || g, 'm-' || (g % 50),
           'https://merchant.example/notify', 1, 'success', 200, 'success', 20, now() - interval '25 hours'
         FROM generate_series(1, 2000) g`,
        [h],
      );
      const r = await q.cleanup(DAY, 365 * DAY);
      assert.equal(r.logs, 2000);
    };
    const sizes: number[] = [];
    for (let h = 0; h < 30; h++) {
      await hour(h);
      sizes.push(await size());
    }
    // A few hours to settle (the indexes keep entries of deleted rows until a VACUUM cleans them, which
    // PostgreSQL does once they are worth it), then level; without the VACUUM it grew ~500 KB an hour.
    const [settled, last] = [sizes[9] as number, sizes[29] as number];
    assert.ok(last <= 1.25 * settled, `attempt log bytes after each hour: ${sizes.join(', ')}`);
    assert.ok(last <= 4 * (sizes[0] as number), `attempt log bytes after each hour: ${sizes.join(', ')}`);
  });
});
