import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { openStore, type Store } from '../../src/store/index.js';
import { type QueueSettings, WebhookQueue } from '../../src/webhooks/queue.js';
import { dropSchemas, newSchema, queueSettings, TEST_DATABASE_URL } from './helpers.js';

after(dropSchemas);

/**
 * Lease accounting of claims on PostgreSQL, at the level of the queue: a node passes the leases it holds
 * itself, and the store counts another node's leases only when that node owned the merchant last and its
 * ownership lapsed. Two queues with their own node ids stand for two nodes on one schema.
 */
describe('webhook claims: leases across nodes (PostgreSQL)', () => {
  let store: Store;
  const settings = (nodeId: string): QueueSettings => queueSettings(nodeId, false);

  before(async () => {
    store = await openStore({ databaseUrl: TEST_DATABASE_URL, databaseSchema: newSchema(), dataDir: '' });
  });
  after(async () => {
    await store?.close();
  });

  async function enqueue(q: WebhookQueue, merchantKey: string, n: number): Promise<void> {
    await Promise.all(
      Array.from({ length: n }, (_, i) =>
        q.enqueue({
          id: randomUUID(),
          idempotencyKey: `${merchantKey}-${i}-${randomUUID()}`,
          orderNo: `O${i}`,
          eventType: null,
          merchantKey,
          merchantId: null,
          notifyUrl: `http://127.0.0.1:9/${merchantKey}`,
          body: '{}',
        }),
      ),
    );
  }

  it('a node that takes over a lapsed merchant counts the leases the previous owner still holds', async () => {
    const a = new WebhookQueue(store, settings('node-a'));
    const b = new WebhookQueue(store, settings('node-b'));
    await enqueue(a, 'm-lapse', 30);

    const first = await a.claim(100, []);
    assert.equal(first.length, 10, 'the lease cap of one merchant');
    // The owner passes what it holds: nothing more while it holds the cap.
    assert.equal((await a.claim(100, [], { 'm-lapse': 10 })).length, 0);
    // Another node cannot take a merchant a live node owns.
    assert.equal((await b.claim(100, [])).length, 0);

    // Node a stalls: its ownership lapses while its 10 leases are still live.
    await store.query(`UPDATE webhook_merchants SET owner_until = now() - interval '1 second'`);
    assert.equal((await b.claim(100, [])).length, 0, 'node b counts the 10 live leases of the lapsed owner');
    // Once those leases have expired too, node b takes the merchant and a full share.
    await store.query(
      `UPDATE webhook_deliveries SET locked_until = now() - interval '1 second' WHERE locked_by = 'node-a'`,
    );
    assert.equal((await b.claim(100, [])).length, 10);
    const owner = await store.query<{ owner_node: string }>(
      `SELECT owner_node FROM webhook_merchants WHERE merchant_key = 'm-lapse'`,
    );
    assert.equal(owner.rows[0]?.owner_node, 'node-b');
  });

  it('a merchant given up by its owner is taken with a full share, without counting', async () => {
    const a = new WebhookQueue(store, settings('node-c'));
    const b = new WebhookQueue(store, settings('node-d'));
    await enqueue(a, 'm-free', 30);
    const got = await a.claim(100, []);
    assert.equal(got.length, 10);
    // Node c finishes (its leases released) and gives the merchant up, as it does once idle.
    await a.release(got.map((d) => d.id));
    await a.releaseOwnership(['m-free']);
    assert.equal((await b.claim(100, [])).length, 10);
  });
});
