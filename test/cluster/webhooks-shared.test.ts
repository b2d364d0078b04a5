import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { sleep, until } from '../helpers.js';
import { dropSchema, type NodeProcess, spawnNodes, TEST_DATABASE_URL, uniqueName } from './harness.js';

describe('cluster: two nodes drain one webhook queue in PostgreSQL', () => {
  const schema = uniqueName('t_cwh');
  const nodes: NodeProcess[] = [];
  const seen = new Map<string, number>(); // webhook-id -> deliveries
  const orders = new Set<string>();
  const merchant = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => {
      body += c.toString();
    });
    req.on('end', () => {
      const id = String(req.headers['webhook-id']);
      seen.set(id, (seen.get(id) ?? 0) + 1);
      orders.add((JSON.parse(body) as { orderNo: string }).orderNo);
      // A little slow, so that both nodes have deliveries in flight at the same time.
      setTimeout(() => res.end('success'), 15);
    });
  });
  let url = '';

  before(async () => {
    await new Promise<void>((r) => merchant.listen(0, '127.0.0.1', () => r()));
    url = `http://127.0.0.1:${(merchant.address() as { port: number }).port}/notify`;
    const env = {
      DATABASE_URL: TEST_DATABASE_URL,
      DATABASE_SCHEMA: schema,
      WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true',
      WEBHOOK_POLL_INTERVAL: '50ms',
      WEBHOOK_MERCHANT_CONCURRENCY: '20',
    };
    nodes.push(...(await spawnNodes(env, 2)));
  });
  after(async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    merchant.close();
    await dropSchema(schema);
  });

  it('delivers every accepted notification once, whichever node took it in', async () => {
    const total = 120;
    const posts: Promise<Response>[] = [];
    for (let i = 0; i < total; i++) {
      const node = nodes[i % 2] as NodeProcess;
      posts.push(
        fetch(`${node.url}/merchant-notify`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            orderNo: `ORD-${i}`,
            notifyUrl: url,
            payload: { orderNo: `ORD-${i}`, amount: i },
          }),
        }),
      );
    }
    const responses = await Promise.all(posts);
    for (const r of responses) {
      assert.equal(r.status, 202);
      await r.arrayBuffer();
    }
    await until(() => orders.size === total, 30_000, 'all delivered');
    await sleep(500);
    assert.equal(seen.size, total, 'one webhook-id per notification');
    const doubled = [...seen].filter(([, n]) => n > 1);
    assert.deepEqual(doubled, [], 'no attempt was sent twice');
  });
});
