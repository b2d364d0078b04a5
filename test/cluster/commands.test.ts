import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { io, type Socket } from 'socket.io-client';
import { sleep } from '../helpers.js';
import { cleanRedis, type NodeProcess, spawnReadyNodes, TEST_REDIS_URL, uniqueName } from './harness.js';

async function command(node: NodeProcess, deviceId: string, body: unknown) {
  const res = await fetch(`${node.url}/devices/${deviceId}/commands`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('cluster: commands reach a machine connected to another node', () => {
  const prefix = `${uniqueName('hcmd')}:`;
  let nodes: NodeProcess[] = [];
  let machine: Socket | undefined;

  before(async () => {
    nodes = await spawnReadyNodes({ REDIS_URL: TEST_REDIS_URL, REDIS_PREFIX: prefix }, 2);
  });
  after(async () => {
    machine?.close();
    await Promise.all(nodes.map((n) => n.kill()));
    await cleanRedis(TEST_REDIS_URL, prefix);
  });

  it('forwards POST /devices/:id/commands to the node holding the machine; 404 when it is nowhere; 504 when it stays silent', async () => {
    const [a, b] = nodes as [NodeProcess, NodeProcess];
    machine = io(`${b.url}/kiosk`, {
      auth: { clientId: 'pos-7', deviceId: 'pos-7', merchantId: 'm-1' },
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
    });
    machine.on('command', (cmd: { command: string; args: { copies: number } }, ack: (r: unknown) => void) => {
      if (cmd.command === 'print') ack({ printed: true, copies: cmd.args.copies });
    });
    await new Promise<void>((r) => machine?.once('connect', () => r()));
    await sleep(200); // node A learns of the app channel subscription of node B

    const ok = await command(a, 'pos-7', {
      appId: 'kiosk',
      command: 'print',
      args: { copies: 2 },
      timeoutMs: 3000,
    });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.deepEqual(ok.body.reply, { printed: true, copies: 2 });

    const offline = await command(a, 'pos-404', {
      appId: 'kiosk',
      command: 'print',
      args: { copies: 1 },
      timeoutMs: 1000,
    });
    assert.equal(offline.status, 404, JSON.stringify(offline.body));

    const silent = await command(a, 'pos-7', { appId: 'kiosk', command: 'hang', args: {}, timeoutMs: 500 });
    assert.equal(silent.status, 504, JSON.stringify(silent.body));
  });
});
