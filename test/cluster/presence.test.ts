import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { io, type Socket } from 'socket.io-client';
import { sleep } from '../helpers.js';
import {
  cleanRedis,
  dropSchema,
  type NodeProcess,
  spawnReadyNodes,
  TEST_DATABASE_URL,
  TEST_REDIS_URL,
  uniqueName,
} from './harness.js';

const APP = 'pos';

interface Device {
  deviceId: string;
  merchantId: string;
  online: boolean;
  lastSeenAt: string;
  disconnectedAt: string | null;
}

async function devices(node: NodeProcess, merchantId: string): Promise<Device[]> {
  const res = await fetch(`${node.url}/devices?appId=${APP}&merchantId=${merchantId}`);
  assert.equal(res.status, 200);
  return ((await res.json()) as { devices: Device[] }).devices;
}

function connect(node: NodeProcess, headers: Record<string, string>): Promise<Socket> {
  const s = io(`${node.url}/${APP}`, {
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
    extraHeaders: headers,
  });
  return new Promise((resolve, reject) => {
    s.once('connect', () => resolve(s));
    s.once('connect_error', reject);
  });
}

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * Machine presence across real node processes sharing PostgreSQL (payments/presence.ts): a node keeps
 * its machines online with one heartbeat row, and when it dies without a goodbye another node marks its
 * machines offline after 3 intervals and publishes it to `devices:<merchantId>`.
 */
describe('cluster: machine presence when a node dies', () => {
  const schema = uniqueName('t_cpres');
  const prefix = `${uniqueName('hpres')}:`;
  let nodes: NodeProcess[] = [];
  const sockets: Socket[] = [];

  before(async () => {
    nodes = await spawnReadyNodes(
      {
        DATABASE_URL: TEST_DATABASE_URL,
        DATABASE_SCHEMA: schema,
        REDIS_URL: TEST_REDIS_URL,
        REDIS_PREFIX: prefix,
        MACHINE_PRESENCE_INTERVAL: '300ms',
        PAYMENT_SWEEP_INTERVAL: '100ms',
      },
      2,
    );
  });
  after(async () => {
    for (const s of sockets) s.close();
    await Promise.all(nodes.map((n) => n.kill()));
    await cleanRedis(TEST_REDIS_URL, prefix);
    await dropSchema(schema);
  });

  it('keeps a live node’s machine online past 3 intervals, and turns a SIGKILLed node’s offline', async () => {
    const [a, b] = nodes as [NodeProcess, NodeProcess];
    const watcher = await connect(b, { 'x-client-id': 'dashboard' });
    sockets.push(watcher);
    const changes: { deviceId: string; online: boolean }[] = [];
    watcher.on('dataUpdate', (d: { type?: string; deviceId: string; online: boolean }) => {
      if (d.type === 'device') changes.push({ deviceId: d.deviceId, online: d.online });
    });
    await watcher.emitWithAck('subscribe', ['devices:m-1']);

    const pos = await connect(a, { 'x-device-id': 'pos-a1', 'x-merchant-id': 'm-1' });
    sockets.push(pos);
    await until(() => changes.some((c) => c.deviceId === 'pos-a1' && c.online), 10_000, 'online change');
    await until(async () => (await devices(b, 'm-1'))[0]?.online === true, 10_000, 'listed online');

    // Well past 3 intervals (900 ms): node a's heartbeat keeps it online, and its last-seen time moves.
    const first = Date.parse((await devices(b, 'm-1'))[0]?.lastSeenAt ?? '');
    await sleep(2000);
    const live = (await devices(b, 'm-1'))[0];
    assert.equal(live?.online, true);
    assert.ok(Date.parse(live?.lastSeenAt ?? '') > first, 'last seen follows the node heartbeat');
    assert.deepEqual(changes, [{ deviceId: 'pos-a1', online: true }]);

    // Node a dies without a goodbye: b marks the machine offline (3 intervals, then b's next tick).
    const killedAt = Date.now();
    await a.kill();
    nodes = [b];
    await until(() => changes.some((c) => c.deviceId === 'pos-a1' && !c.online), 15_000, 'offline change');
    const gone = (await devices(b, 'm-1'))[0];
    assert.equal(gone?.online, false);
    assert.ok(gone?.disconnectedAt, 'disconnectedAt set');
    // The disconnect time is a's last heartbeat: before the kill, and not long before it.
    const at = Date.parse(gone.disconnectedAt);
    assert.ok(at <= killedAt + 50 && at > killedAt - 2000, `disconnectedAt ${gone.disconnectedAt}`);
    assert.equal(changes.filter((c) => !c.online).length, 1);
  });
});
