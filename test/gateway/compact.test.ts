/**
 * Compact listener tables and arrays of idle connections (src/gateway/compact.ts): the same listeners
 * keep working, and V8 really holds the copies with fast properties (checked with its natives syntax,
 * enabled for this process only).
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { after, before, describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { type Socket as ClientSocket, io } from 'socket.io-client';
import { compactArray, compactEvents } from '../../src/gateway/compact.js';
import type { SocketConn } from '../../src/gateway/index.js';
import { call, closeAll, fence, post, startTestHerald, type TestHerald, until } from '../helpers.js';

setFlagsFromString('--allow-natives-syntax');
const hasFastProperties = new Function('o', 'return %HasFastProperties(o)') as (o: object) => boolean;

type Events = Record<string | symbol, unknown>;
const eventsOf = (e: unknown) => (e as { _events: Events })._events;

describe('compactEvents / compactArray', () => {
  it('keeps every listener, in order, and makes the table fast', () => {
    const e = new EventEmitter();
    const calls: string[] = [];
    const sym = Symbol('s');
    e.on('a', () => calls.push('a1'));
    e.on('a', () => calls.push('a2'));
    e.once('b', () => calls.push('b'));
    e.on(sym, () => calls.push('sym'));
    for (const name of ['c', 'd', 'f', 'g', 'h']) e.on(name, () => calls.push(name));
    assert.equal(hasFastProperties(eventsOf(e)), false, 'EventEmitter keeps a dictionary');
    const keys = Reflect.ownKeys(eventsOf(e));
    compactEvents(e);
    assert.equal(hasFastProperties(eventsOf(e)), true);
    assert.equal(Object.getPrototypeOf(eventsOf(e)), null);
    assert.deepEqual(Reflect.ownKeys(eventsOf(e)), keys);
    e.emit('a');
    e.emit('b');
    e.emit('b');
    e.emit(sym);
    e.emit('h');
    // Names of Object.prototype are no listeners (null prototype).
    assert.equal(e.emit('toString'), false);
    assert.deepEqual(calls, ['a1', 'a2', 'b', 'sym', 'h']);
    assert.equal(e.listenerCount('a'), 2);
    assert.equal(e.listenerCount('b'), 0);
    // Listeners added and removed afterwards behave as before.
    const late = () => calls.push('late');
    e.on('a', late);
    e.off('a', late);
    e.removeAllListeners('c');
    e.emit('a');
    e.emit('c');
    assert.deepEqual(calls.slice(5), ['a1', 'a2']);
    const byName = (x: string | symbol, y: string | symbol) => String(x).localeCompare(String(y));
    assert.deepEqual(e.eventNames().sort(byName), ['a', 'd', 'f', 'g', 'h', sym].sort(byName));
  });

  it('leaves objects without a listener table, or with a prototype, alone', () => {
    const plain = { _events: { x: 1 } };
    compactEvents(plain);
    assert.deepEqual(plain._events, { x: 1 });
    compactEvents(null);
    compactEvents(undefined);
    compactEvents({});
  });

  it('copies a grown array to its exact length, same elements', () => {
    const owner: { list: number[]; empty: number[]; other: unknown } = { list: [], empty: [], other: 5 };
    owner.list.push(1, 2, 3);
    const before = owner.list;
    compactArray(owner, 'list');
    compactArray(owner, 'empty');
    compactArray(owner, 'other');
    compactArray(owner, 'missing');
    assert.notEqual(owner.list, before);
    assert.deepEqual(owner.list, [1, 2, 3]);
    assert.deepEqual(owner.empty, []);
    assert.equal(owner.other, 5);
  });
});

describe('connections are compacted and keep working', () => {
  let herald: TestHerald;
  const sockets: ClientSocket[] = [];
  before(async () => {
    herald = await startTestHerald();
  });
  after(async () => {
    closeAll(...sockets);
    await herald.cleanup();
  });

  /** The server side of the only connection of `clientId`. */
  function serverSide(clientId: string) {
    const conn = [...herald.router.allConns()].find((c) => c.clientId === clientId) as SocketConn;
    const socket = conn.socket as unknown as {
      conn: { transport: { name: string; socket?: unknown }; cleanupFn: unknown[] };
      _anyListeners: unknown[];
    };
    return { conn, socket };
  }

  function expectCompact(clientId: string) {
    const { socket } = serverSide(clientId);
    assert.equal(socket.conn.transport.name, 'websocket');
    for (const [what, emitter] of [
      ['Socket.IO socket', socket],
      ['engine.io socket', socket.conn],
      ['transport', socket.conn.transport],
      ['ws socket', socket.conn.transport.socket],
    ] as const) {
      assert.equal(hasFastProperties(eventsOf(emitter)), true, what);
      assert.equal(Object.getPrototypeOf(eventsOf(emitter)), null, what);
    }
    assert.equal(socket._anyListeners.length, 1);
  }

  async function roundTrip(s: ClientSocket, clientId: string) {
    const got: unknown[] = [];
    s.on('dataUpdate', (d: Record<string, unknown>) => {
      if (!('__fence' in d)) got.push(d);
    });
    assert.deepEqual(await call(s, 'subscribe', [`t:${clientId}`]), { ok: true, topics: [`t:${clientId}`] });
    const res = await post(herald, '/notify', {
      appId: 'compact',
      eventTopics: [`t:${clientId}`],
      users: [clientId],
      data: { to: clientId },
    });
    assert.equal(res.status, 202, res.text);
    await fence(herald, 'compact', s);
    assert.deepEqual(got, [{ to: clientId }]);
  }

  it('over WebSocket from the start', async () => {
    const s = io(`${herald.url()}/compact`, {
      extraHeaders: { 'x-client-id': 'ws-client' },
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
    });
    sockets.push(s);
    await new Promise<void>((r) => s.once('connect', () => r()));
    expectCompact('ws-client');
    await roundTrip(s, 'ws-client');
    // Disconnecting still reaches the server's listeners: the socket leaves the router.
    s.close();
    await until(() => ![...herald.router.allConns()].some((c) => c.clientId === 'ws-client'));
  });

  it('long-polling first, then upgraded to WebSocket (the transport compacted at the upgrade)', async () => {
    const s = io(`${herald.url()}/compact`, {
      extraHeaders: { 'x-client-id': 'upgrader' },
      forceNew: true,
      reconnection: false,
    });
    sockets.push(s);
    await new Promise<void>((r) => s.once('connect', () => r()));
    await until(() => serverSide('upgrader').socket.conn.transport.name === 'websocket', 5000, 'the upgrade');
    expectCompact('upgrader');
    await roundTrip(s, 'upgrader');
    s.close();
    await until(() => ![...herald.router.allConns()].some((c) => c.clientId === 'upgrader'));
  });
});
