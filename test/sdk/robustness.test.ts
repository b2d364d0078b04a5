import assert from 'node:assert/strict';
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { Server, type Socket as ServerSocket } from 'socket.io';
import { createMachineAgent, type MachineAgent, ReportRejectedError } from '../../src/sdk/machine.js';
import { until } from '../helpers.js';

/** A bare Socket.IO server standing in for Herald, so tests can answer with whatever they like. */
describe('machine agent robustness', () => {
  let http: HttpServer;
  let ioServer: Server;
  let url: string;
  let onReport: (event: unknown, ack: (...args: unknown[]) => void) => void = () => {};
  const sockets: ServerSocket[] = [];
  const agents: MachineAgent[] = [];
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);

  const agent = () => {
    const a = createMachineAgent({
      url,
      appId: 'rb',
      deviceId: 'rb-dev',
      merchantId: 'rb-m',
      heartbeatMs: 0,
      ackTimeoutMs: 100,
      backoff: { initialDelayMs: 10, maxDelayMs: 50 },
    });
    agents.push(a);
    return a;
  };

  const event = (extra: Record<string, unknown>) =>
    ({ orderId: 'o1', type: 'paying', ...extra }) as unknown as Parameters<MachineAgent['report']>[0];

  const rejectsInvalid = async (p: Promise<unknown>) =>
    assert.rejects(p, (err: unknown) => {
      assert.ok(err instanceof ReportRejectedError);
      assert.equal(err.code, 'invalid_event');
      return true;
    });

  before(async () => {
    http = createServer();
    ioServer = new Server(http, { transports: ['websocket'] });
    ioServer.of('/rb').on('connection', (s) => {
      sockets.push(s);
      s.on('payment:report', (ev: unknown, ack: (...args: unknown[]) => void) => onReport(ev, ack));
    });
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise<void>((r) => ioServer.close(() => r()));
  });
  beforeEach(() => {
    uncaught.length = 0;
    process.on('uncaughtException', onUncaught);
  });
  afterEach(async () => {
    for (const a of agents.splice(0)) await a.close();
    process.off('uncaughtException', onUncaught);
  });

  it('refuses events it cannot encode before they enter the outbox', async () => {
    const reports: unknown[] = [];
    onReport = (ev, ack) => {
      reports.push(ev);
      ack({ ok: true, eventId: 'e', orderId: 'o1', state: 'paying' });
    };
    const a = agent();
    await until(() => a.connected, 3000, 'connected');
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    let deep: Record<string, unknown> = {};
    for (let i = 0; i < 10_000; i++) deep = { d: deep };

    await rejectsInvalid(a.report(event({ amount: 4n })));
    await rejectsInvalid(a.report(event({ meta: circular })));
    await rejectsInvalid(a.report(event({ meta: deep })));
    await rejectsInvalid(a.report(event({ amount: Number.NaN })));
    assert.equal(a.pending, 0);

    // A value that encodes once but throws when socket.io-client encodes it: send() settles it.
    let calls = 0;
    const flaky = {
      toJSON() {
        if (++calls > 1) throw new Error('changed its mind');
        return 'x';
      },
    };
    await rejectsInvalid(a.report(event({ meta: { flaky } })));
    assert.equal(a.pending, 0);

    // Past the ack timeout nothing is resent from a timer, and a good report still goes through.
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(uncaught, []);
    assert.equal((await a.report(event({ amount: 4 }))).ok, true);
    assert.equal(reports.length, 1);
  });

  it('treats malformed acks as transient and retries', async () => {
    const answers: ((ack: (...args: unknown[]) => void) => void)[] = [
      (ack) => ack(null),
      (ack) => ack(),
      (ack) => ack({ ok: false }),
      (ack) => ack('nonsense'),
      (ack) => ack({ ok: false, error: { code: 42 } }),
      (ack) => ack({ ok: true, eventId: 'e', orderId: 'o1', state: 'paying' }),
    ];
    let n = 0;
    onReport = (_ev, ack) => answers[Math.min(n++, answers.length - 1)]?.(ack);
    const a = agent();
    const ack = await a.report(event({ amount: 4 }));
    assert.equal(ack.ok, true);
    assert.equal(n, answers.length);
    assert.equal(a.pending, 0);

    // A refusal without a message still rejects with its code.
    onReport = (_ev, ack) => ack({ ok: false, error: { code: 'invalid_event' } });
    await rejectsInvalid(a.report(event({ amount: 4 })));
    assert.equal(a.pending, 0);
    assert.deepEqual(uncaught, []);
  });

  it('answers an unencodable command reply with an error at once', async () => {
    const a = agent();
    await until(() => a.connected && sockets.some((s) => s.connected), 3000, 'connected');
    const server = sockets.filter((s) => s.connected).at(-1) as ServerSocket;
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    const replies: Record<string, unknown> = { big: { n: 4n }, circular, ok: { fine: true } };
    a.onCommand(({ command }) => replies[command]);

    for (const command of ['big', 'circular']) {
      const started = Date.now();
      const answer = (await server
        .timeout(5000)
        .emitWithAck('command', { id: command, command, args: null })) as {
        ok: boolean;
        error: { code: string; message: string };
      };
      assert.ok(Date.now() - started < 1000, 'answered well before the command timeout');
      assert.equal(answer.ok, false);
      assert.equal(answer.error.code, 'invalid_reply');
      assert.match(answer.error.message, /JSON/);
    }
    assert.deepEqual(
      await server.timeout(5000).emitWithAck('command', { id: 'ok', command: 'ok', args: null }),
      {
        fine: true,
      },
    );
    assert.deepEqual(uncaught, []);
  });
});
