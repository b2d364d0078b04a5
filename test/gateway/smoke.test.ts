import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { call, collect, connect, post, startTestHerald, type TestHerald, until } from '../helpers.js';

describe('smoke: the seed e-commerce example', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald();
  });
  after(async () => {
    await herald.cleanup();
  });

  it('delivers a payment notification to a subscribed user once, with meta', async () => {
    const client = await connect(herald, 'ecommerce-app', {
      clientId: 'user-567',
      deviceId: 'mobile-ios-001',
    });
    const got = collect(client);
    const ack = await call(client, 'subscribe', ['payment:processing', 'order:12345:status']);
    assert.deepEqual(ack, { ok: true, topics: ['payment:processing', 'order:12345:status'] });
    const res = await post(herald, '/notify', {
      appId: 'ecommerce-app',
      users: ['user-567'],
      devices: ['mobile-ios-001'],
      eventTopics: ['order:12345:status'],
      data: { type: 'payment', status: 'success', orderId: 'order-12345', amount: 99.99 },
    });
    assert.equal(res.status, 202);
    assert.equal(typeof res.body.id, 'string');
    await until(() => got.length >= 1);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(got.length, 1);
    assert.deepEqual(got[0]?.data, {
      type: 'payment',
      status: 'success',
      orderId: 'order-12345',
      amount: 99.99,
    });
    assert.equal(got[0]?.meta.id, res.body.id);
    assert.equal(got[0]?.meta.topic, 'order:12345:status');
    client.close();
  });
});
