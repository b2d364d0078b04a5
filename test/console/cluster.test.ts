/**
 * The console's node list in cluster mode, in a real headless Chromium: two Herald processes on the
 * real Redis (own key prefix), the Overview of node A lists both, follows B's figures live and drops
 * B when it stops; a node whose Redis goes away says "cluster unreachable" and shows itself only.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { io, type Socket } from 'socket.io-client';
import type { NodeList } from '../../src/console/types.js';
import {
  cleanRedis,
  type NodeProcess,
  spawnReadyNodes,
  startRedis,
  TEST_REDIS_URL,
  uniqueName,
} from '../cluster/harness.js';
import { startTestHerald, type TestHerald } from '../helpers.js';
import { ensureConsoleBuilt, launch, open, PHONE, shot, waitText } from './helpers.js';

function client(url: string, appId: string, clientId: string): Promise<Socket> {
  const s = io(`${url}/${appId}`, {
    extraHeaders: { 'x-client-id': clientId },
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
  });
  return new Promise((resolve, reject) => {
    s.once('connect', () => resolve(s));
    s.once('connect_error', (err) => {
      s.close();
      reject(err);
    });
  });
}

async function nodeList(url: string): Promise<NodeList> {
  const res = await fetch(`${url}/admin/api/nodes`);
  assert.equal(res.status, 200);
  return (await res.json()) as NodeList;
}

/** Polls GET /admin/api/nodes until `ok` holds (bounded). */
async function untilList(
  url: string,
  ok: (l: NodeList) => boolean,
  what: string,
  ms = 15_000,
): Promise<NodeList> {
  const end = Date.now() + ms;
  let last: NodeList | undefined;
  while (Date.now() < end) {
    last = await nodeList(url);
    if (ok(last)) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what}: not within ${ms} ms; last list ${JSON.stringify(last)}`);
}

const rowCount = (page: import('playwright-core').Page) =>
  page.locator('[data-testid=nodes-table] tbody tr').count();

describe('web console: node list of a cluster', () => {
  let browser: Browser;
  const prefix = `${uniqueName('hconsole')}:`;
  const nodes: NodeProcess[] = [];
  const sockets: Socket[] = [];

  before(async () => {
    ensureConsoleBuilt();
    browser = await launch();
    nodes.push(
      ...(await spawnReadyNodes({ REDIS_URL: TEST_REDIS_URL, REDIS_PREFIX: prefix, PRESENCE_TTL: '3s' }, 2)),
    );
  });

  after(async () => {
    for (const s of sockets) s.close();
    await browser?.close();
    await Promise.all(nodes.map((n) => n.kill()));
    await cleanRedis(TEST_REDIS_URL, prefix);
  });

  test('the Overview of node A lists both nodes, follows B live, and drops B when it stops', async () => {
    const [a, b] = nodes as [NodeProcess, NodeProcess];
    // The API first: both nodes, A marked as itself, B with what its heartbeat said.
    const list = await untilList(
      a.url,
      (l) => l.nodes.length === 2 && l.nodes.every((n) => n.info.pid !== undefined),
      'both nodes with their info',
    );
    assert.equal(list.mode, 'cluster');
    assert.equal(list.state, 'ok');
    assert.equal(list.presenceTtlMs, 3000);
    assert.equal(list.heartbeatMs, 750);
    const [self, other] = list.nodes;
    assert.ok(self && other);
    assert.equal(self.self, true);
    assert.equal(self.info.pid, a.child.pid);
    assert.equal(other.self, false);
    assert.equal(other.info.pid, b.child.pid);
    assert.equal(other.info.bus, 'redis');
    assert.equal(typeof other.lastSeen, 'number');
    assert.equal(typeof other.info.version, 'string');
    assert.equal(typeof other.info.startedAt, 'number');

    const c = await open(browser, `${a.url}/console`);
    try {
      const { page } = c;
      await waitText(page, '[data-testid=live-status]', (t) => t.includes('live'));
      await waitText(page, '[data-testid=nodes-count]', (t) => t === '2', 15_000);
      const selfRow = page.locator(`tr[data-node="${self.id}"]`);
      const otherRow = page.locator(`tr[data-node="${other.id}"]`);
      await selfRow.waitFor();
      await otherRow.waitFor();
      assert.equal(await selfRow.getAttribute('data-self'), 'true');
      assert.match((await selfRow.textContent()) ?? '', /this node/);
      assert.equal(await otherRow.getAttribute('data-self'), null);
      assert.match((await otherRow.textContent()) ?? '', new RegExp(`pid ${b.child.pid} · Herald `));
      assert.match((await page.locator('#nodes').textContent()) ?? '', /cluster on Redis/);

      // Clients on B show in A's list (B's figures come with its heartbeats), and in the totals.
      sockets.push(await client(b.url, 'shop', 'user-b1'), await client(b.url, 'shop', 'user-b2'));
      sockets.push(await client(a.url, 'chat', 'user-a1'));
      await waitText(page, `tr[data-node="${other.id}"] [data-col=connections]`, (t) => t === '2', 15_000);
      await waitText(page, `tr[data-node="${self.id}"] [data-col=connections]`, (t) => t === '1', 15_000);
      await waitText(page, '[data-testid=nodes-total-connections]', (t) => t === '3', 15_000);
      // Each node's store and bus checks travel with its heartbeat too.
      await waitText(
        page,
        `tr[data-node="${other.id}"]`,
        (t) => /ready/.test(t) && /redis ✓/.test(t),
        15_000,
      );
      await shot(page, 'overview-cluster-laptop');
      await page.setViewportSize(PHONE);
      await page.locator('#nodes').scrollIntoViewIfNeeded();
      await shot(page, 'overview-cluster-phone');
      const overflow = await page.evaluate(
        () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
      );
      assert.ok(overflow <= 1, `the page is wider than the phone by ${overflow}px`);

      // A graceful stop leaves the cluster at once: B's row goes without waiting for the TTL.
      assert.equal(await b.stop(), 0);
      nodes.splice(nodes.indexOf(b), 1);
      await waitText(page, '[data-testid=nodes-count]', (t) => t === '1', 10_000);
      assert.equal(await otherRow.count(), 0);
      assert.equal(await rowCount(page), 1);
      await selfRow.waitFor();
      const left = await nodeList(a.url);
      assert.deepEqual(
        left.nodes.map((n) => n.id),
        [self.id],
      );
      assert.deepEqual(c.errors, []);
    } finally {
      await c.close();
    }
  });
});

describe('web console: node list while Redis is away', () => {
  test('the Overview says "cluster unreachable" and shows this node only', async () => {
    ensureConsoleBuilt();
    const browser = await launch();
    const redis = await startRedis();
    const prefix = `${uniqueName('hconsole')}:`;
    // In this process (a second spawned node would only add start-up time on a loaded machine).
    let node: TestHerald | undefined;
    // startRedis's stop() waits for an exit that has already happened when called twice.
    let redisUp = true;
    try {
      node = await startTestHerald({ redisUrl: redis.url, redisPrefix: prefix, presenceTtl: 3000 });
      const url = node.url();
      const c = await open(browser, `${url}/console`);
      try {
        const { page } = c;
        await waitText(page, '[data-testid=nodes-count]', (t) => t === '1', 15_000);
        await page.locator('[data-testid=nodes][data-state=ok]').waitFor();

        await redis.stop();
        redisUp = false;
        await page.locator('[data-testid=nodes][data-state=unreachable]').waitFor({ timeout: 15_000 });
        const alert = await waitText(page, '[data-testid=nodes-unreachable]', (t) => t.length > 0);
        assert.match(alert, /Cluster unreachable/);
        // This node's own bus check says so too (the health checks run every second with a console open).
        await waitText(page, '[data-testid=nodes-table] tr[data-self=true] [data-check=bus]', (t) =>
          /✗/.test(t),
        );
        assert.match((await page.locator('#nodes').textContent()) ?? '', /cluster unreachable/);
        assert.equal(await rowCount(page), 1);
        assert.equal(await page.locator('[data-testid=nodes-table] tr[data-self=true]').count(), 1);
        await shot(page, 'overview-cluster-unreachable-laptop');

        const list = await nodeList(url);
        assert.equal(list.state, 'unreachable');
        assert.equal(list.nodes.length, 1);
        assert.equal(list.nodes[0]?.self, true);
        assert.equal(list.nodes[0]?.info.pid, process.pid);
        assert.deepEqual(c.errors, []);
      } finally {
        await c.close();
      }
    } finally {
      await node?.cleanup();
      if (redisUp) await redis.stop();
      await browser.close();
    }
  });
});
