/**
 * The customer's seed examples (shared/seeds/001_*.txt) as written: socket.io-client with its default
 * transports (long-polling, then the upgrade to WebSocket) and extraHeaders, events emitted without
 * acks, and `fetch('/notify', { method: 'POST', body: JSON.stringify(...) })` without a content-type.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { io, type Socket } from 'socket.io-client';
import { call, closeAll, fence, startTestHerald, type TestHerald, until } from '../helpers.js';

type Payload = Record<string, unknown> & { type?: string; count?: number; status?: string };

describe('seed examples (001), as written', () => {
  let herald: TestHerald;
  let base: string;
  const sockets: Socket[] = [];
  before(async () => {
    herald = await startTestHerald();
    base = herald.url();
  });
  after(async () => {
    closeAll(...sockets);
    await herald.cleanup();
  });

  /** `io('http://localhost:3000/<app>', { extraHeaders })` with the seed's options only. */
  function client(
    app: string,
    headers: Record<string, string>,
    opts: { transports?: string[] } = {},
  ): Socket {
    const s = io(`${base}/${app}`, { extraHeaders: headers, forceNew: true, ...opts });
    sockets.push(s);
    return s;
  }
  /** Payloads a seed client's `dataUpdate` handler sees (the fences of the tests left out). */
  function payloads(s: Socket): Payload[] {
    const got: Payload[] = [];
    s.on('dataUpdate', (payload: Payload) => {
      if (!('__fence' in payload)) got.push(payload);
    });
    return got;
  }
  /** Waits until the events emitted so far were handled: the server handles a socket's events in order. */
  const settled = (s: Socket) => call(s, 'subscribe', []);
  /** The seed's `fetch('/notify', ...)`: no headers at all. */
  async function notify(body: unknown): Promise<Response> {
    const res = await fetch(`${base}/notify`, { method: 'POST', body: JSON.stringify(body) });
    assert.equal(res.status, 202, await res.clone().text());
    return res;
  }

  it('e-commerce payment: processing then success, once each, on the subscribed device', async () => {
    const paymentClient = client('ecommerce-app', {
      'x-client-id': 'user-567',
      'x-device-id': 'mobile-ios-001',
    });
    const got = payloads(paymentClient);
    paymentClient.emit('subscribe', ['payment:processing', 'order:12345:status', 'user:567:notifications']);
    await settled(paymentClient);
    const target = {
      appId: 'ecommerce-app',
      users: ['user-567'],
      devices: ['mobile-ios-001'],
      eventTopics: ['order:12345:status'],
    };
    await notify({
      ...target,
      data: {
        type: 'payment',
        status: 'processing',
        orderId: 'order-12345',
        amount: 99.99,
        paymentMethod: 'alipay',
        timestamp: Date.now(),
      },
    });
    await notify({
      ...target,
      data: {
        type: 'payment',
        status: 'success',
        orderId: 'order-12345',
        transactionId: 'txn-abc123',
        amount: 99.99,
      },
    });
    await fence(herald, 'ecommerce-app', paymentClient);
    assert.deepEqual(
      got.map((p) => [p.type, p.status]),
      [
        ['payment', 'processing'],
        ['payment', 'success'],
      ],
    );
    assert.equal(got[1]?.orderId, 'order-12345');
    assert.equal(got[1]?.amount, 99.99);
  });

  it('chat: online count, group message to the room, private message to one user', async () => {
    const chatClient = client('chat-app', { 'x-client-id': 'alice', 'x-device-id': 'mobile-001' });
    const aliceGot = payloads(chatClient);
    chatClient.emit('subscribe', ['chat:room-general']);
    chatClient.emit('subscribeCount', ['chat:room-general']);
    let onlineCount = -1;
    chatClient.on('dataUpdate', (payload: Payload) => {
      if (payload.type === 'count') onlineCount = payload.count as number;
    });
    await until(() => onlineCount === 1, 3000, 'alice counted online');

    const bob = client('chat-app', { 'x-client-id': 'bob', 'x-device-id': 'web-001' });
    const bobGot = payloads(bob);
    bob.emit('subscribe', ['chat:room-general']);
    await until(() => onlineCount === 2, 3000, 'bob counted online');

    const sendGroupMessage = (roomId: string, message: string) =>
      notify({
        appId: 'chat-app',
        eventTopics: [`chat:${roomId}`],
        data: {
          type: 'message',
          messageType: 'group',
          from: 'alice',
          content: message,
          timestamp: Date.now(),
        },
      });
    const sendPrivateMessage = (toUser: string, message: string) =>
      notify({
        appId: 'chat-app',
        users: [toUser],
        data: { type: 'message', messageType: 'private', from: 'alice', to: toUser, content: message },
      });
    await sendGroupMessage('room-general', 'Hello everyone!');
    await sendPrivateMessage('bob', 'Hi Bob, how are you?');
    await fence(herald, 'chat-app', chatClient, bob);
    const messages = (got: Payload[]) => got.filter((p) => p.type === 'message').map((p) => p.messageType);
    assert.deepEqual(messages(aliceGot), ['group']);
    assert.deepEqual(messages(bobGot), ['group', 'private']);

    bob.close();
    await until(() => onlineCount === 1, 3000, 'bob left');
  });

  it('live count: the dashboard follows 50 users joining, by region too', async () => {
    const statsClient = client('activity-app', { 'x-client-id': 'admin-dashboard' });
    let onlineCount = -1;
    const regions: Record<string, number> = {};
    statsClient.on('dataUpdate', (payload: Payload) => {
      if (payload.type !== 'count') return;
      if (payload.topic === 'activity:live-stream-001') onlineCount = payload.count as number;
      else regions[payload.topic as string] = payload.count as number;
    });
    statsClient.emit('subscribeCount', ['activity:live-stream-001']);
    statsClient.emit('subscribeCount', [
      'activity:live-stream-001:region:beijing',
      'activity:live-stream-001:region:shanghai',
      'activity:live-stream-001:region:guangzhou',
    ]);
    await until(() => onlineCount === 0 && Object.keys(regions).length === 3, 3000, 'initial counts');

    const joinActivity = (userId: string, activityId: string) => {
      const userClient = client('activity-app', { 'x-client-id': userId }, { transports: ['websocket'] });
      userClient.emit('subscribe', [`activity:${activityId}`]);
      return userClient;
    };
    const users: Socket[] = [];
    for (let i = 1; i <= 50; i++) users.push(joinActivity(`user${i}`, 'live-stream-001'));
    users[0]?.emit('subscribe', ['activity:live-stream-001:region:beijing']);
    await until(() => onlineCount === 50, 5000, `50 online (saw ${onlineCount})`);
    await until(() => regions['activity:live-stream-001:region:beijing'] === 1, 3000, 'beijing 1');
    assert.equal(regions['activity:live-stream-001:region:shanghai'], 0);
    closeAll(...users.slice(0, 10));
    await until(() => onlineCount === 40, 3000, `40 online (saw ${onlineCount})`);
    await until(() => regions['activity:live-stream-001:region:beijing'] === 0, 3000, 'beijing 0');
    closeAll(...users);
  });

  it('multi-app isolation: the same user and topic in app1 and app2', async () => {
    const app1Client = client('app1', { 'x-client-id': 'user1' });
    const app2Client = client('app2', { 'x-client-id': 'user1' });
    const got1 = payloads(app1Client);
    const got2 = payloads(app2Client);
    app1Client.emit('subscribe', ['common:event']);
    app2Client.emit('subscribe', ['common:event']);
    await Promise.all([settled(app1Client), settled(app2Client)]);
    await notify({
      appId: 'app1',
      eventTopics: ['common:event'],
      data: { message: 'This is for app1 only', appId: 'app1', timestamp: Date.now() },
    });
    await fence(herald, 'app1', app1Client);
    await fence(herald, 'app2', app2Client);
    assert.deepEqual(
      got1.map((p) => p.message),
      ['This is for app1 only'],
    );
    assert.deepEqual(got2, []);
  });

  it('multi-device: one device, all devices of the user, device to device', async () => {
    const devices = ['mobile-ios-001', 'mobile-android-002', 'web-chrome-003'];
    const deviceClients = devices.map((deviceId) =>
      client('device-app', { 'x-client-id': 'user123', 'x-device-id': deviceId }),
    );
    const got = deviceClients.map(payloads);
    await Promise.all(deviceClients.map((c) => until(() => c.connected, 3000, 'connected')));
    await notify({
      appId: 'device-app',
      devices: ['mobile-ios-001'],
      data: { type: 'push', title: 'iOS specific notification', badge: 1, sound: 'default', payload: 'hi' },
    });
    await notify({
      appId: 'device-app',
      users: ['user123'],
      data: { type: 'profile_sync', action: 'update', data: { name: 'John Doe' }, timestamp: Date.now() },
    });
    await notify({
      appId: 'device-app',
      devices: ['web-chrome-003'],
      data: { type: 'file_share', from: 'mobile-ios-001', to: 'web-chrome-003', action: 'incoming_file' },
    });
    await fence(herald, 'device-app', ...deviceClients);
    assert.deepEqual(
      got.map((g) => g.map((p) => p.type)),
      [['push', 'profile_sync'], ['profile_sync'], ['profile_sync', 'file_share']],
    );
    assert.deepEqual(got[1]?.[0]?.data, { name: 'John Doe' });
  });

  it('monitoring: an alert to two topics and two users reaches the dashboard once', async () => {
    const monitoringDashboard = client('monitoring-system', { 'x-client-id': 'admin-dashboard' });
    const admin = client('monitoring-system', { 'x-client-id': 'admin' });
    const dash = payloads(monitoringDashboard);
    const adm = payloads(admin);
    monitoringDashboard.emit('subscribe', ['system:metrics', 'alerts:critical', 'alerts:warning']);
    await settled(monitoringDashboard);
    await until(() => admin.connected, 3000, 'admin connected');
    await notify({
      appId: 'monitoring-system',
      eventTopics: ['alerts:critical', 'alerts:warning'],
      users: ['admin', 'ops-team'],
      data: { type: 'alert', level: 'critical', message: 'disk full', source: 'db-1', timestamp: Date.now() },
    });
    await fence(herald, 'monitoring-system', monitoringDashboard, admin);
    assert.deepEqual(
      dash.map((p) => p.level),
      ['critical'],
    );
    assert.deepEqual(
      adm.map((p) => p.level),
      ['critical'],
    );
  });

  it('long-polling only clients (no WebSocket through the proxy) receive notifications too', async () => {
    const s = client('ecommerce-app', { 'x-client-id': 'poller' }, { transports: ['polling'] });
    const got = payloads(s);
    s.emit('subscribe', 'poll:topic');
    await settled(s);
    await notify({
      appId: 'ecommerce-app',
      eventTopics: ['poll:topic'],
      users: ['poller'],
      data: { via: 'poll' },
    });
    await fence(herald, 'ecommerce-app', s);
    assert.deepEqual(got, [{ via: 'poll' }]);
  });
});
