import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Socket } from 'socket.io-client';
import {
  AgentClosedError,
  createMachineAgent,
  type MachineAgent,
  OutboxFullError,
  ReportRejectedError,
} from '../../src/sdk/machine.js';
import type { Herald } from '../../src/server.js';
import { call, collect, post, until } from '../helpers.js';
import {
  cleanupSpots,
  client,
  ev,
  get,
  machine,
  merchantApp,
  newOrderId,
  newSpot,
  STORES,
  type StoreSpot,
  startNode,
} from './helpers.js';

const APP = 'pos-app';
type Update = { data: Record<string, unknown> };

after(cleanupSpots);

const fastAgent = (herald: Herald, deviceId: string, merchantId: string, extra = {}) =>
  createMachineAgent({
    url: herald.url(),
    appId: APP,
    deviceId,
    merchantId,
    heartbeatMs: 200,
    backoff: { initialDelayMs: 50, maxDelayMs: 200 },
    ...extra,
  });

describe('machine agent under CLIENT_EVENT_RATE', () => {
  let herald: Herald;
  const agents: MachineAgent[] = [];
  before(async () => {
    // 10 events a second, 8 at once: a burst of 11 reports has 3 refused (rate_limited).
    herald = await startNode(newSpot('embedded'), { clientEventRate: 10, clientEventBurst: 8 });
  });
  after(async () => {
    for (const a of agents) await a.close();
    await herald.stop();
  });

  it('sends refused reports again after retryAfterMs: every report is stored once, on one connection', async () => {
    // Heartbeats every second (not 200 ms): a heartbeat answered late on a busy CI machine reconnects
    // the agent too, and this test is about the server closing a connection, not about heartbeats.
    const agent = fastAgent(herald, 'pos-rate', 'm-rate', {
      backoff: { initialDelayMs: 20, maxDelayMs: 2000 },
      heartbeatMs: 1000,
    });
    agents.push(agent);
    let connects = 0;
    const errors: string[] = [];
    agent.on('connect', () => connects++);
    agent.on('error', (e) => errors.push(String((e as Error).message ?? e)));
    await until(() => agent.connected, 5000, 'the agent to connect');
    const orders = Array.from({ length: 11 }, () => newOrderId());
    const acks = await Promise.all(
      orders.map((orderId) =>
        agent.report(ev({ orderId, appId: APP, merchantId: 'm-rate', type: 'created' }) as never),
      ),
    );
    assert.deepEqual(
      acks.map((a) => (a as { state: string }).state),
      orders.map(() => 'created'),
    );
    const metrics = await (await fetch(`${herald.url()}/metrics`)).text();
    const refused = Number(/^herald_client_events_refused_total (\S+)$/m.exec(metrics)?.[1] ?? 0);
    assert.ok(refused >= 1, `refused ${refused}`);
    // A client that waits before sending again is not taken for a flooder: it never reconnected.
    const closed = Number(/^herald_flooding_clients_closed_total (\S+)$/m.exec(metrics)?.[1] ?? 0);
    assert.equal(closed, 0);
    assert.equal(connects, 1, `reconnected: ${errors.join('; ')}`);
    for (const orderId of orders) {
      const o = await get(herald, `/payments/orders/${orderId}?appId=${APP}`);
      assert.equal(o.status, 200);
      assert.equal((o.body.events as unknown[]).length, 1);
    }
  });
});

for (const kind of STORES) {
  describe(`payments on the ${kind} store: machines`, () => {
    let herald: Herald;
    const sockets: Socket[] = [];
    const agents: MachineAgent[] = [];
    before(async () => {
      herald = await startNode(newSpot(kind));
    });
    after(async () => {
      for (const s of sockets) s.close();
      for (const a of agents) await a.close();
      await herald.stop();
    });

    it('lists machines with online state and last-seen time, and publishes online/offline to devices:<merchantId>', async () => {
      const watcher = await client(herald, APP);
      sockets.push(watcher);
      const got = collect(watcher) as unknown as Update[];
      await call(watcher, 'subscribe', ['devices:m-presence']);

      const pos = await machine(herald, APP, 'pos-p1', 'm-presence');
      await until(() => got.some((u) => u.data.deviceId === 'pos-p1' && u.data.online === true));
      // A socket with a deviceId but no merchantId (a phone, say) is not a machine.
      const phone = await merchantApp(herald, APP, 'm-presence', 'phone-1');
      sockets.push(phone);

      const listed = await get(herald, `/devices?appId=${APP}&merchantId=m-presence`);
      assert.equal(listed.status, 200);
      const devices = listed.body.devices as Record<string, unknown>[];
      assert.deepEqual(
        devices.map((d) => [d.deviceId, d.merchantId, d.online]),
        [['pos-p1', 'm-presence', true]],
      );
      assert.ok(Date.now() - Date.parse(devices[0]?.lastSeenAt as string) < 60_000);

      pos.close();
      await until(() => got.some((u) => u.data.deviceId === 'pos-p1' && u.data.online === false));
      const after = await get(herald, `/devices?appId=${APP}&merchantId=m-presence`);
      const d = (after.body.devices as Record<string, unknown>[])[0];
      assert.equal(d?.online, false);
      assert.equal(typeof d?.disconnectedAt, 'string');
      assert.equal(
        (await get(herald, `/devices?appId=${APP}&merchantId=m-presence&online=true`)).body.total,
        0,
      );
      assert.equal(
        (await get(herald, `/devices?appId=${APP}&merchantId=m-presence&online=false`)).body.total,
        1,
      );
      assert.equal((await get(herald, `/devices?online=maybe`)).status, 400);
    });

    it('sends a command to a machine and answers 200 with its reply, 504 when it is silent, 404 when offline', async () => {
      const pos = await machine(herald, APP, 'pos-cmd', 'm-cmd');
      sockets.push(pos);
      const seen: unknown[] = [];
      pos.on('command', (cmd: { id: string; command: string; args: unknown }, ack: (r: unknown) => void) => {
        seen.push(cmd);
        if (cmd.command === 'print') ack({ printed: true, copies: (cmd.args as { copies: number }).copies });
        // A reply HTTP cannot carry as JSON (a raw client can send one 200 levels deep).
        if (cmd.command === 'deep') ack(JSON.parse(`${'['.repeat(200)}${']'.repeat(200)}`));
        // 'hang' is never answered
      });
      const ok = await post(herald, '/devices/pos-cmd/commands', {
        appId: APP,
        command: 'print',
        args: { copies: 2 },
      });
      assert.equal(ok.status, 200);
      assert.deepEqual(ok.body.reply, { printed: true, copies: 2 });
      assert.equal(ok.body.deviceId, 'pos-cmd');
      assert.equal(typeof ok.body.id, 'string');
      assert.deepEqual(seen[0], { id: ok.body.id, command: 'print', args: { copies: 2 } });

      const deep = await post(herald, '/devices/pos-cmd/commands', { appId: APP, command: 'deep' });
      assert.equal(deep.status, 502, deep.text);
      assert.equal(deep.body.error?.code, 'invalid_reply');
      const deepArgs = await post(
        herald,
        '/devices/pos-cmd/commands',
        `{"appId":"${APP}","command":"print","args":${'['.repeat(200)}${']'.repeat(200)}}`,
      );
      assert.equal(deepArgs.status, 400, deepArgs.text);
      assert.equal(deepArgs.body.error?.code, 'validation_failed');

      const silent = await post(herald, '/devices/pos-cmd/commands', {
        appId: APP,
        command: 'hang',
        timeoutMs: 200,
      });
      assert.equal(silent.status, 504);
      assert.equal(silent.body.error?.code, 'command_timeout');

      const offline = await post(herald, '/devices/pos-nowhere/commands', { appId: APP, command: 'print' });
      assert.equal(offline.status, 404);
      assert.equal(offline.body.error?.code, 'device_offline');
      const otherApp = await post(herald, '/devices/pos-cmd/commands', {
        appId: 'another-app',
        command: 'print',
      });
      assert.equal(otherApp.status, 404, 'a device is addressed within its app');

      const invalid = await post(herald, '/devices/pos-cmd/commands', { command: 'print' });
      assert.equal(invalid.status, 400);
      assert.equal(invalid.body.error?.code, 'validation_failed');
    });

    it('machine agent: reports are acked after storage, rejections are typed, commands reach its handler', async () => {
      const app = await merchantApp(herald, APP, 'm-agent');
      sockets.push(app);
      const appGot = collect(app) as unknown as Update[];
      const agent = fastAgent(herald, 'pos-agent', 'm-agent');
      agents.push(agent);
      agent.onCommand(async ({ command, args }) => ({ done: command, args }));
      const orderId = newOrderId();
      const a1 = await agent.report({ orderId, type: 'created', amount: 4 });
      assert.deepEqual(
        { ok: a1.ok, state: a1.state, orderId: a1.orderId },
        { ok: true, state: 'created', orderId },
      );
      const a2 = await agent.report({ orderId, type: 'succeeded', amount: 4 });
      assert.equal(a2.state, 'succeeded');
      await until(() =>
        appGot.some((u) => u.data.orderId === orderId && u.data.announcement === '收款 4.00 元'),
      );

      await assert.rejects(agent.report({ orderId: newOrderId(), type: 'refunded' }), (err: unknown) => {
        assert.ok(err instanceof ReportRejectedError);
        assert.equal(err.code, 'invalid_transition');
        assert.equal(err.retryable, true);
        return true;
      });
      await assert.rejects(agent.report({ orderId, type: 'succeeded', amount: 5 }), {
        code: 'invalid_event',
      });
      assert.equal(agent.pending, 0);

      const cmd = await post(herald, '/devices/pos-agent/commands', {
        appId: APP,
        command: 'reboot',
        args: [1],
      });
      assert.equal(cmd.status, 200);
      assert.deepEqual(cmd.body.reply, { done: 'reboot', args: [1] });

      const listed = await get(herald, `/devices?appId=${APP}&merchantId=m-agent`);
      assert.equal((listed.body.devices as { online: boolean }[])[0]?.online, true);
    });
  });

  describe(`payments on the ${kind} store: machine agent across a node restart`, () => {
    it('keeps unacknowledged reports in its outbox and re-sends them after reconnecting, each stored once', async () => {
      const spot: StoreSpot = newSpot(kind);
      let herald = await startNode(spot);
      const port = herald.address().port;
      const agent = fastAgent(herald, 'pos-replay', 'm-replay');
      const orderId = newOrderId();
      try {
        assert.equal((await agent.report({ orderId, type: 'created', amount: 3 })).state, 'created');

        // A report made as the node stops may be stored without its ack reaching the machine; the
        // reports made while it is down cannot be sent at all. All wait in the outbox.
        const inFlight = agent.report({ orderId, type: 'paying' });
        await herald.stop();
        await until(() => !agent.connected, 3000, 'the agent to notice');
        const whileDown = [
          agent.report({ orderId, type: 'succeeded', amount: 3 }),
          agent.report({ orderId: `${orderId}-2`, type: 'created', amount: 1 }),
        ];
        assert.ok(agent.pending >= 2);

        herald = await startNode(spot, { port });
        const acks = await Promise.all([inFlight, ...whileDown]);
        assert.ok(acks.every((a) => a.ok === true));
        // The in-flight one is either stored now or answered as a duplicate with the order's state.
        assert.ok(['paying', 'succeeded'].includes(acks[0]?.state as string));
        assert.deepEqual(
          acks.slice(1).map((a) => a.state),
          ['succeeded', 'created'],
        );
        assert.equal(agent.pending, 0);
        const order = await get(herald, `/payments/orders/${orderId}?appId=${APP}`);
        assert.equal(order.body.state, 'succeeded');
        assert.deepEqual(
          (order.body.events as { type: string }[]).map((e) => e.type),
          ['created', 'paying', 'succeeded'],
          'each report stored exactly once',
        );
        assert.equal((await get(herald, `/payments/orders/${orderId}-2?appId=${APP}`)).body.state, 'created');
      } finally {
        await agent.close();
        await herald.stop();
      }
    });
  });
}

describe('machine agent outbox', () => {
  it('rejects reports beyond outboxLimit with a clear error, and pending ones with AgentClosedError on close', async () => {
    // Nothing listens on port 9 (discard): the agent cannot connect and keeps its reports.
    const agent = createMachineAgent({
      url: 'http://127.0.0.1:9',
      appId: APP,
      deviceId: 'pos-full',
      merchantId: 'm-full',
      outboxLimit: 2,
      backoff: { initialDelayMs: 1000 },
    });
    const first = agent.report(ev({ orderId: 'o-1', type: 'created' }) as never);
    const second = agent.report(ev({ orderId: 'o-2', type: 'created' }) as never);
    await assert.rejects(agent.report({ orderId: 'o-3', type: 'created' }), (err: unknown) => {
      assert.ok(err instanceof OutboxFullError);
      assert.equal(err.code, 'outbox_full');
      assert.match(err.message, /outboxLimit/);
      return true;
    });
    assert.equal(agent.pending, 2);
    await agent.close();
    await assert.rejects(first, AgentClosedError);
    await assert.rejects(second, AgentClosedError);
    await assert.rejects(agent.report({ orderId: 'o-4', type: 'created' }), AgentClosedError);
  });
});
