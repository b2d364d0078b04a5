/**
 * The console's node list without a browser: GET /admin/api/nodes on a single node, and the
 * NodeDirectory's reading of a cluster (shared reads, sanitised info, stale nodes, Redis away).
 */
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { after, before, describe, test } from 'node:test';
import { type ClusterNode, NodeDirectory, readNodeInfo } from '../../src/console/nodes.js';
import type { NodeInfo, NodeList, StatsSnapshot } from '../../src/console/types.js';
import { connect, startTestHerald, type TestHerald } from '../helpers.js';

function info(id: string, extra: Partial<NodeInfo> = {}): NodeInfo {
  return {
    id,
    host: 'h',
    pid: 1,
    version: '1.0.0',
    nodeVersion: 'v20.0.0',
    startedAt: 1000,
    uptime: 5,
    connections: 0,
    subscriptions: 0,
    topics: 0,
    apps: 0,
    notifyRate: 0,
    deliveryRate: 0,
    loopP99: 1,
    rssBytes: 1 << 20,
    store: 'embedded',
    bus: 'redis',
    status: 'ready',
    health: {},
    at: Date.now(),
    ...extra,
  };
}

describe('console node list: GET /admin/api/nodes on a single node', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald();
  });
  after(async () => {
    await herald?.cleanup();
  });

  test('lists this node with its figures; the overview carries the same list', async () => {
    const s = await connect(herald, 'shop', { clientId: 'u1' });
    try {
      await s.timeout(3000).emitWithAck('subscribe', ['a', 'b']);
      // The figures are those of the last one-second sample: wait for one that saw the socket.
      let list: NodeList | undefined;
      const end = Date.now() + 8000;
      while (Date.now() < end) {
        const res = await fetch(`${herald.url()}/admin/api/nodes`);
        assert.equal(res.status, 200);
        list = (await res.json()) as NodeList;
        if (list.nodes[0]?.info.connections === 1 && list.nodes[0]?.info.subscriptions === 2) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(list);
      assert.equal(list.mode, 'single');
      assert.equal(list.state, 'ok');
      assert.equal(list.nodes.length, 1);
      const [row] = list.nodes;
      assert.ok(row);
      assert.equal(row.self, true);
      assert.equal(row.lastSeen, null);
      assert.equal(row.stale, false);
      assert.equal(row.id, `${hostname()}-${process.pid}`);
      assert.equal(row.info.host, hostname());
      assert.equal(row.info.pid, process.pid);
      assert.equal(row.info.nodeVersion, process.version);
      assert.equal(typeof row.info.version, 'string');
      assert.equal(row.info.store, 'embedded');
      assert.equal(row.info.bus, 'memory');
      assert.equal(row.info.connections, 1);
      assert.equal(row.info.subscriptions, 2);
      assert.equal(row.info.apps, 1);
      for (const k of ['startedAt', 'uptime', 'notifyRate', 'deliveryRate', 'loopP99', 'rssBytes'] as const) {
        assert.equal(typeof row.info[k], 'number', k);
      }
      assert.ok((row.info.rssBytes ?? 0) > 0);
      assert.deepEqual(list.totals, {
        nodes: 1,
        connections: 1,
        subscriptions: 2,
        notifyRate: row.info.notifyRate,
        deliveryRate: row.info.deliveryRate,
      });

      const overview = (await (await fetch(`${herald.url()}/admin/api/overview`)).json()) as StatsSnapshot;
      assert.equal(overview.nodes?.mode, 'single');
      assert.equal(overview.nodes?.nodes[0]?.id, row.id);
    } finally {
      s.close();
    }
  });
});

describe('console node list: NodeDirectory over a cluster', () => {
  const self = info('me', { connections: 3, notifyRate: 1.5 });

  test('concurrent callers share one read of Redis, and a fresh list is served again without reading', async () => {
    let calls = 0;
    const dir = new NodeDirectory({
      self: () => self,
      presenceTtlMs: 10_000,
      maxAgeMs: 60_000,
      cluster: {
        nodeId: 'me',
        async nodes() {
          calls++;
          return [{ id: 'me', self: true, lastSeen: Date.now(), info: {} }];
        },
      },
    });
    const lists = await Promise.all(Array.from({ length: 10 }, () => dir.list()));
    await dir.list();
    assert.equal(calls, 1);
    assert.equal(dir.reads, 1);
    for (const l of lists) assert.equal(l.nodes.length, 1);
  });

  test('this node first with its own figures, the others as they wrote them; late nodes are stale', async () => {
    const now = Date.now();
    const nodes: ClusterNode[] = [
      {
        id: 'zz',
        self: false,
        lastSeen: now - 100,
        info: { ...info('zz', { connections: 2, notifyRate: 0.5 }) },
      },
      // Its last heartbeat is older than two periods (2.5 s each with a 10 s TTL).
      { id: 'aa', self: false, lastSeen: now - 6000, info: { host: 'old', connections: 4 } },
      // Wrote nothing usable (another version): listed with what could be read.
      { id: 'mm', self: false, lastSeen: now, info: { connections: 'many', pid: null, health: [1] } },
      { id: 'me', self: true, lastSeen: now - 50, info: { connections: 999 } },
    ];
    const dir = new NodeDirectory({
      self: () => self,
      presenceTtlMs: 10_000,
      cluster: { nodeId: 'me', nodes: async () => nodes },
    });
    const list = await dir.list();
    assert.equal(list.mode, 'cluster');
    assert.equal(list.state, 'ok');
    assert.equal(list.heartbeatMs, 2500);
    assert.equal(list.presenceTtlMs, 10_000);
    assert.deepEqual(
      list.nodes.map((n) => [n.id, n.self, n.stale]),
      [
        ['me', true, false],
        ['aa', false, true],
        ['mm', false, false],
        ['zz', false, false],
      ],
    );
    assert.equal(list.nodes[0]?.info.connections, 3, "this node's own figures, not its heartbeat's");
    assert.equal(list.nodes[0]?.lastSeen, now - 50);
    assert.deepEqual(list.nodes[1]?.info, { host: 'old', connections: 4 });
    assert.deepEqual(list.nodes[2]?.info, {});
    assert.deepEqual(list.totals, {
      nodes: 4,
      connections: 3 + 4 + 2,
      subscriptions: 0,
      notifyRate: 2,
      deliveryRate: 0,
    });
  });

  test('this node is listed before its first heartbeat', async () => {
    const dir = new NodeDirectory({
      self: () => self,
      presenceTtlMs: 10_000,
      cluster: {
        nodeId: 'me',
        nodes: async () => [{ id: 'other', self: false, lastSeen: Date.now(), info: {} }],
      },
    });
    const list = await dir.list();
    assert.deepEqual(
      list.nodes.map((n) => [n.id, n.self, n.lastSeen]),
      [
        ['me', true, null],
        ['other', false, list.nodes[1]?.lastSeen],
      ],
    );
  });

  test('Redis away or not answering: "unreachable" with this node only, and the next read tries again', async () => {
    let mode: 'fail' | 'hang' | 'ok' = 'fail';
    const dir = new NodeDirectory({
      self: () => self,
      presenceTtlMs: 3000,
      maxAgeMs: 0,
      timeoutMs: 100,
      cluster: {
        nodeId: 'me',
        nodes: () => {
          if (mode === 'fail') return Promise.reject(new Error("Stream isn't writeable"));
          if (mode === 'hang') return new Promise<never>(() => undefined);
          return Promise.resolve([
            { id: 'me', self: true, lastSeen: Date.now(), info: {} },
            { id: 'b', self: false, lastSeen: Date.now(), info: {} },
          ]);
        },
      },
    });
    const failed = await dir.list();
    assert.equal(failed.state, 'unreachable');
    assert.match(failed.error ?? '', /^Cluster unreachable: .*Stream isn't writeable/);
    assert.deepEqual(
      failed.nodes.map((n) => [n.id, n.self, n.lastSeen]),
      [['me', true, null]],
    );
    assert.equal(failed.totals.connections, 3);

    mode = 'hang';
    const hung = await dir.list();
    assert.equal(hung.state, 'unreachable');
    assert.match(hung.error ?? '', /did not answer within 100 ms/);

    mode = 'ok';
    const back = await dir.list();
    assert.equal(back.state, 'ok');
    assert.equal(back.error, undefined);
    assert.equal(back.nodes.length, 2);
  });

  test('readNodeInfo keeps the fields of the expected type only', () => {
    assert.deepEqual(
      readNodeInfo({
        id: 'x',
        pid: '12',
        uptime: Number.NaN,
        rssBytes: 10,
        store: 'mysql',
        bus: 'redis',
        health: { bus: { ok: false, critical: 'yes', error: 'down' }, junk: 'no', store: { ok: true } },
        extra: 1,
      }),
      {
        id: 'x',
        rssBytes: 10,
        bus: 'redis',
        health: { bus: { ok: false, critical: false, error: 'down' }, store: { ok: true, critical: false } },
      },
    );
  });
});
