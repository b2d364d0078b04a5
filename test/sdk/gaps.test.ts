import assert from 'node:assert/strict';
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, afterEach, before, describe, it } from 'node:test';
import { Server, type Socket as ServerSocket } from 'socket.io';
import { connect, type HeraldClient, type RecoveryResult } from '../../src/sdk/index.js';
import { sleep, until } from '../helpers.js';

type Pos = { offset: number; epoch: string };
type RecoverArg = { topics?: string[]; streams?: Record<string, Pos> };

/**
 * The SDK's gap detection against a scripted server: offsets of a stream are consecutive, so a
 * notification further ahead than the next one means the socket missed some (a cluster node that lost
 * its link to the others for a moment); the SDK asks for them with `recover` from the position it holds.
 * `meta.also` (the notification's positions in the socket's other streams) is not a gap, and the server's
 * `resync` makes it catch up on every stream.
 */
describe('SDK: gaps in a stream', () => {
  let http: HttpServer;
  let ioServer: Server;
  let url: string;
  let server: ServerSocket | undefined;
  /** Every `recover` the server received, and what it answers (replays first, like Herald). */
  const recovers: RecoverArg[] = [];
  let onRecover: (
    s: ServerSocket,
    arg: RecoverArg,
  ) => Record<string, Pos & { recovered: boolean; replayed: number }> = () => ({});
  const clients: HeraldClient[] = [];

  before(async () => {
    http = createServer();
    ioServer = new Server(http, { transports: ['websocket'] });
    ioServer.of('/gp').on('connection', (s) => {
      server = s;
      s.on('recover', (arg: RecoverArg, ack: (r: unknown) => void) => {
        recovers.push(arg);
        const streams = onRecover(s, arg);
        ack({ ok: true, topics: arg.topics ?? [], streams });
      });
    });
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise<void>((r) => ioServer.close(() => r()));
  });
  afterEach(() => {
    for (const c of clients.splice(0)) c.close();
    recovers.length = 0;
    server = undefined;
    onRecover = () => ({});
  });

  async function client(): Promise<{ c: HeraldClient; got: number[]; results: RecoveryResult[][] }> {
    const c = connect({ url, appId: 'gp', clientId: 'u1', socketOptions: { transports: ['websocket'] } });
    clients.push(c);
    const got: number[] = [];
    const results: RecoveryResult[][] = [];
    c.on((data) => got.push((data as { n: number }).n));
    c.onRecover((r) => results.push(r));
    await until(() => server !== undefined && c.status === 'connected', 5000, 'connected');
    await until(() => recovers.length === 1, 5000, 'the first recover (positions)');
    recovers.length = 0;
    return { c, got, results };
  }

  const send = (n: number, stream: string, offset: number, extra: Record<string, unknown> = {}) =>
    (server as ServerSocket).emit(
      'dataUpdate',
      { n },
      { id: `id-${n}`, ts: Date.now(), stream, offset, epoch: 'e1', ...extra },
    );

  it('asks for the missed notifications from the last position it holds, and hands them over once', async () => {
    const { c, got, results } = await client();
    onRecover = (s, arg) => {
      // Replays of 3 and 4 (and 5 again, already received: dropped by id), then the current position.
      for (const n of [3, 4, 5]) {
        s.emit(
          'dataUpdate',
          { n },
          { id: `id-${n}`, ts: Date.now(), stream: 'u:u1', offset: n, epoch: 'e1', replay: true },
        );
      }
      assert.deepEqual(arg.streams, { 'u:u1': { offset: 2, epoch: 'e1' } });
      return { 'u:u1': { offset: 5, epoch: 'e1', recovered: true, replayed: 3 } };
    };
    send(1, 'u:u1', 1);
    send(2, 'u:u1', 2);
    await until(() => got.length === 2, 2000, 'two live');
    assert.equal(recovers.length, 0, 'consecutive offsets: nothing missed');
    send(5, 'u:u1', 5);
    await until(() => recovers.length === 1 && got.length === 5, 3000, 'the gap recovered');
    assert.deepEqual(got, [1, 2, 5, 3, 4]);
    assert.deepEqual(results, [[{ stream: 'u:u1', recovered: true, replayed: 3 }]]);
    assert.deepEqual(c.positions.get('u:u1'), { offset: 5, epoch: 'e1' });
    send(6, 'u:u1', 6);
    await sleep(200);
    assert.equal(recovers.length, 1, 'back in step: no more recovers');
  });

  it('waits for notifications that arrive out of order before asking for them', async () => {
    const { c, got } = await client();
    send(1, 'u:u1', 1);
    send(3, 'u:u1', 3);
    send(2, 'u:u1', 2);
    send(4, 'u:u1', 4);
    await until(() => got.length === 4, 2000, 'four live');
    await sleep(500);
    assert.equal(recovers.length, 0, 'the gap closed by itself: no recover');
    assert.deepEqual(c.positions.get('u:u1'), { offset: 4, epoch: 'e1' });
  });

  it('takes meta.also as positions in the other streams, not as gaps', async () => {
    const { c, got } = await client();
    await c.subscribe('room');
    recovers.length = 0;
    send(1, 'u:u1', 1);
    // Reached through the topic; its offset in the user's stream comes in `also`.
    send(2, 't:room', 1, { topic: 'room', also: { 'u:u1': [2, 'e1'] } });
    send(3, 'u:u1', 3);
    send(4, 't:room', 2, { topic: 'room' });
    await until(() => got.length === 4, 2000, 'four live');
    await sleep(200);
    assert.equal(recovers.length, 0, JSON.stringify(recovers));
    assert.deepEqual(c.positions.get('u:u1'), { offset: 3, epoch: 'e1' });
    assert.deepEqual(c.positions.get('t:room'), { offset: 2, epoch: 'e1' });
  });

  it('catches up on every stream it follows when the server asks (resync)', async () => {
    const { c } = await client();
    onRecover = (_s, arg) => {
      const out: Record<string, Pos & { recovered: boolean; replayed: number }> = {};
      for (const [stream, p] of Object.entries(arg.streams ?? {}))
        out[stream] = { ...p, recovered: true, replayed: 0 };
      return out;
    };
    await c.subscribe('room');
    recovers.length = 0;
    send(1, 'u:u1', 1);
    send(2, 't:room', 7, { topic: 'room' });
    await until(() => c.positions.get('t:room')?.offset === 7, 2000, 'positions');
    (server as ServerSocket).emit('resync', { reason: 'cluster_resubscribed' });
    await until(() => recovers.length === 1, 3000, 'a recover after the resync');
    assert.deepEqual(recovers[0]?.streams, {
      'u:u1': { offset: 1, epoch: 'e1' },
      't:room': { offset: 7, epoch: 'e1' },
    });
  });
});
