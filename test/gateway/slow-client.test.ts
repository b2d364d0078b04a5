import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { closeAll, collect, connect, post, startTestHerald, type TestHerald, until } from '../helpers.js';

/**
 * A Socket.IO client over a raw WebSocket that connects to `/<app>`, subscribes, then stops reading
 * from its TCP socket: what the server writes piles up in the server's send buffer.
 */
async function stalledClient(url: string, appId: string, topic: string): Promise<WebSocket> {
  const ws = new WebSocket(`${url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  await new Promise<void>((resolve, reject) => {
    ws.on('error', reject);
    ws.on('message', (raw) => {
      const m = raw.toString();
      if (m.startsWith('0')) ws.send(`40/${appId},${JSON.stringify({ clientId: 'slow-reader' })}`);
      else if (m.startsWith(`40/${appId},`)) ws.send(`42/${appId},1["subscribe","${topic}"]`);
      else if (m.startsWith(`43/${appId},1`)) resolve();
      else if (m === '2') ws.send('3');
    });
  });
  // Stop reading: the kernel buffers fill up, then the server's own buffer grows.
  (ws as unknown as { _socket: { pause(): void } })._socket.pause();
  return ws;
}

describe('a client that does not read', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({ maxSocketBuffer: 256 * 1024 });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('is disconnected once its send buffer passes MAX_SOCKET_BUFFER; the others are served', async () => {
    const url = herald.url();
    const slow = await stalledClient(url, 'shop', 'feed');
    const fast = await connect(herald, 'shop', { clientId: 'fast-reader' });
    const got = collect(fast);
    await fast.emitWithAck('subscribe', 'feed');

    const blob = 'x'.repeat(16 * 1024);
    let sent = 0;
    // 16 KiB notifications until the server gives up on the slow reader (bounded: 64 MiB at most).
    while (sent < 4096) {
      const r = await post(herald, '/notify', {
        appId: 'shop',
        eventTopics: ['feed'],
        data: { i: sent, blob },
      });
      assert.equal(r.status, 202);
      sent++;
      if (sent % 16 === 0) {
        const text = await (await fetch(`${url}/metrics`)).text();
        if (/^herald_slow_clients_dropped_total 1$/m.test(text)) break;
      }
    }
    assert.ok(sent < 4096, 'the slow client was dropped');
    const metrics = await (await fetch(`${url}/metrics`)).text();
    assert.match(metrics, /^herald_slow_clients_dropped_total 1$/m);
    // The reader that keeps up got every notification, in order.
    await until(() => got.length === sent, 10_000, 'the fast reader to get everything');
    assert.deepEqual(
      got.map((g) => (g.data as { i: number }).i),
      Array.from({ length: sent }, (_, i) => i),
    );
    // The server closed the stalled connection (its socket is gone from the node's count).
    await until(
      () => herald.router.appIds().length === 1 && connectionsOf(herald) === 1,
      10_000,
      'one socket left',
    );
    slow.terminate();
    closeAll(fast);
  });
});

function connectionsOf(herald: TestHerald): number {
  let n = 0;
  for (const _ of herald.router.allConns()) n++;
  return n;
}

describe('connect GC pacing', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({ connectGcEvery: 2 });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('asks for a young-generation collection after every CONNECT_GC_EVERY connections, and counts them', async () => {
    const sockets = [];
    for (let i = 0; i < 5; i++) sockets.push(await connect(herald, 'shop', { clientId: `c${i}` }));
    const metrics = await (await fetch(`${herald.url()}/metrics`)).text();
    assert.match(metrics, /^herald_connect_gc_total 2$/m);
    // The sockets still work after the collections.
    const got = collect(sockets[4] as (typeof sockets)[number]);
    await (sockets[4] as (typeof sockets)[number]).emitWithAck('subscribe', 'feed');
    assert.equal(
      (await post(herald, '/notify', { appId: 'shop', eventTopics: ['feed'], data: { n: 1 } })).status,
      202,
    );
    await until(() => got.length === 1, 3000, 'delivery after the collections');
    closeAll(...sockets);
  });
});
