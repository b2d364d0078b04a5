import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { Socket } from 'socket.io-client';
import type { Herald } from '../../src/server.js';
import { until } from '../helpers.js';
import { cleanupSpots, get, machine, twoNodesOnPostgres } from './helpers.js';

const APP = 'pos-presence-race';

after(cleanupSpots);

async function holder(
  herald: Herald,
  deviceId: string,
): Promise<{ online: boolean; node: string } | undefined> {
  const { rows } = await herald.store.query<{ online: boolean; node_id: string }>(
    'SELECT online, node_id FROM payment_machines WHERE app_id = $1 AND device_id = $2',
    [APP, deviceId],
  );
  const r = rows[0];
  return r ? { online: r.online, node: r.node_id } : undefined;
}

describe('machine presence: a machine moving between two nodes', () => {
  const nodes = twoNodesOnPostgres();
  const sockets: Socket[] = [];
  after(() => {
    for (const s of sockets) s.close();
  });

  it('stays online when it comes back to a node that has not yet seen its old socket go', async () => {
    const { a, b } = nodes;
    const deviceId = 'pos-flap';
    const connectTo = async (herald: Herald) => {
      const s = await machine(herald, APP, deviceId, 'm-1');
      sockets.push(s);
      await until(() => herald.payments.presence.isMachineSocket(APP, deviceId, s.id as string));
      await herald.payments.presence.flush();
      return s;
    };
    // Its socket at node A drops, but A has not noticed yet (its ping timeout is tens of seconds): to A
    // the old socket is still connected, as s1 here is.
    await connectTo(a);
    assert.deepEqual(await holder(a, deviceId), { online: true, node: a.payments.presence.nodeId });
    // It reconnects through the load balancer to node B...
    const s2 = await connectTo(b);
    assert.deepEqual(await holder(a, deviceId), { online: true, node: b.payments.presence.nodeId });
    // ...that connection drops at once, and it reconnects to node A, which still holds its old socket.
    await connectTo(a);
    s2.close();
    await until(() => b.payments.presence.localCount() === 0, 3000, 'B to see its socket go');
    await b.payments.presence.flush();
    // Connected to A: online, whichever node's GET /devices is asked.
    for (const node of [a, b]) {
      const listed = await get(node, `/devices?appId=${APP}`);
      const devices = listed.body.devices as { deviceId: string; online: boolean }[];
      assert.deepEqual(
        devices.map((d) => [d.deviceId, d.online]),
        [[deviceId, true]],
      );
    }
    assert.deepEqual(await holder(a, deviceId), { online: true, node: a.payments.presence.nodeId });
  });

  it('is online again at the next heartbeat when it held connections on both nodes and one closed', async () => {
    const { a, b } = nodes;
    const deviceId = 'pos-twice';
    const open = async (herald: Herald) => {
      const s = await machine(herald, APP, deviceId, 'm-2');
      sockets.push(s);
      await until(() => herald.payments.presence.isMachineSocket(APP, deviceId, s.id as string));
      await herald.payments.presence.flush();
      return s;
    };
    // Live connections on A and then on B at once (a reconnect before the first one was seen to close).
    await open(a);
    const onB = await open(b);
    assert.deepEqual(await holder(a, deviceId), { online: true, node: b.payments.presence.nodeId });
    // The one on B closes: B, which the row names, turns the machine offline, though A still holds it.
    onB.close();
    await until(() => b.payments.presence.localCount() === 0, 3000, 'B to see its socket go');
    await b.payments.presence.flush();
    assert.equal((await holder(a, deviceId))?.online, false);
    // A's next heartbeat puts it back online, held by A.
    await a.payments.presence.tick();
    assert.deepEqual(await holder(a, deviceId), { online: true, node: a.payments.presence.nodeId });
    const listed = await get(b, `/devices?appId=${APP}`);
    const devices = listed.body.devices as { deviceId: string; online: boolean }[];
    assert.deepEqual(
      devices.filter((d) => d.deviceId === deviceId).map((d) => d.online),
      [true],
    );
  });
});
