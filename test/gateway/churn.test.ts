/**
 * Connections that come and go while their events are in flight: nothing a connection did may outlive it
 * (subscriptions, count watches, the app's index), and counts stay exact.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { call, closeAll, collect, connect, startTestHerald, type TestHerald, until } from '../helpers.js';

/** A raw Engine.IO long-polling session connected to `/<app>` (so that a test decides what one POST holds). */
async function pollingSession(herald: TestHerald, app: string, clientId: string) {
  const base = `${herald.url()}/socket.io/?EIO=4&transport=polling`;
  const headers = { 'x-client-id': clientId };
  const open = await (await fetch(base, { headers })).text();
  const sid = (JSON.parse(open.slice(1)) as { sid: string }).sid;
  const url = `${base}&sid=${sid}`;
  const send = async (body: string) => {
    const res = await fetch(url, { method: 'POST', body, headers: { 'content-type': 'text/plain' } });
    await res.text();
  };
  await send(`40/${app},{}`);
  const ack = await (await fetch(url)).text();
  assert.match(ack, new RegExp(`^40/${app},`), ack);
  return { send };
}

describe('gateway: events that arrive with the close of their connection', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({ countInterval: 50 });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('a subscribe, subscribeCount or recover sent in the same request as the close leaves no ghost subscriber', async () => {
    const APP = 'ghost-app';
    // One POST: the events, then Engine.IO's close packet. Socket.IO runs an event's listeners on the next
    // tick, after the close it decoded in the same request: the events of a socket already gone.
    const s = await pollingSession(herald, APP, 'ghost');
    await s.send(
      [
        `42/${APP},["subscribe",["room","lobby"]]`,
        `42/${APP},["subscribeCount","room"]`,
        `42/${APP},["recover",{"topics":["hall"]}]`,
        '1',
      ].join('\x1e'),
    );
    await until(() => herald.router.connectionCount() === 0, 3000, 'the polling socket to leave');
    // Let the events' listeners (next tick) and any count update run.
    await new Promise((r) => setTimeout(r, 150));
    for (const topic of ['room', 'lobby', 'hall'])
      assert.deepEqual(herald.router.localCount(APP, topic), { count: 0, connections: 0 }, topic);
    assert.equal(herald.router.watchersOf(APP, 'room').size, 0);
    // The app's index is gone with its last socket (in a cluster it keeps the app channel subscribed).
    assert.deepEqual(
      herald.router.stats().filter((a) => a.appId === APP),
      [],
    );
    // A client of the app that subscribes now is the topic's only subscriber.
    const x = await connect(herald, APP, { clientId: 'real' });
    const wx = await connect(herald, APP, { clientId: 'watcher' });
    const gotX = collect(wx);
    await call(wx, 'subscribeCount', 'room');
    await call(x, 'subscribe', 'room');
    await until(
      () => gotX.some((g) => (g.data as { count?: number }).count === 1),
      3000,
      `count 1; saw ${JSON.stringify(gotX.map((g) => g.data))}`,
    );
    assert.deepEqual(herald.router.localCount(APP, 'room'), { count: 1, connections: 1 });
    closeAll(x, wx);
  });
});
