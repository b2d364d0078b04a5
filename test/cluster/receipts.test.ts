/**
 * Delivery receipts in Redis (cluster mode): a receipt is recorded only while its notification is
 * known, in one step, so a receipt racing the key's expiry cannot create the key again (without a
 * head and without a TTL, it stayed in Redis for good). The real Redis, a key prefix of its own.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { RedisReceipts } from '../../src/history/receipts.js';
import type { Notification } from '../../src/router/types.js';
import { cleanRedis, TEST_REDIS_URL, uniqueName } from './harness.js';

const note = (id: string, appId = 'rc-app'): Notification => ({
  v: 1,
  id,
  appId,
  ts: Date.now(),
  data: '{}',
  ack: true,
});

describe('RedisReceipts', () => {
  const prefix = `${uniqueName('hrc')}:`;
  let redis: Redis;
  let receipts: RedisReceipts;
  before(() => {
    redis = new Redis(TEST_REDIS_URL);
    receipts = new RedisReceipts(redis, prefix, 60_000);
  });
  after(async () => {
    redis.disconnect();
    await cleanRedis(TEST_REDIS_URL, prefix);
  });

  it('records one receipt per client and device, and only for the app that sent the notification', async () => {
    await receipts.expect(note('n1'));
    const r = { clientId: 'alice', deviceId: 'phone', at: Date.now() };
    assert.equal(await receipts.record('rc-app', 'n1', r), true);
    assert.equal(await receipts.record('rc-app', 'n1', { ...r, at: r.at + 5 }), true);
    assert.equal(await receipts.record('other-app', 'n1', { ...r, clientId: 'mallory' }), false);
    const report = await receipts.get('n1');
    assert.deepEqual(report?.receipts, [r], 'the first receipt of a device is kept, the other app’s refused');
    assert.ok((await redis.pttl(`${prefix}rc:n1`)) > 0, 'the key keeps its lifetime');
  });

  it('does not create the key again for a receipt that arrives after it expired', async () => {
    await receipts.expect(note('n2'));
    await redis.del(`${prefix}rc:n2`); // what expiry does between a node's check and its write
    const ok = await receipts.record('rc-app', 'n2', { clientId: 'bob', deviceId: null, at: Date.now() });
    assert.equal(ok, false);
    assert.equal(await redis.exists(`${prefix}rc:n2`), 0, 'no key without a head or a TTL');
    assert.equal(await receipts.get('n2'), undefined);
  });

  it('answers false for an unknown id and for a head that is not JSON', async () => {
    assert.equal(await receipts.record('rc-app', 'nope', { clientId: 'c', deviceId: null, at: 1 }), false);
    await redis.hset(`${prefix}rc:bad`, '_', 'not json');
    await redis.pexpire(`${prefix}rc:bad`, 60_000);
    assert.equal(await receipts.record('rc-app', 'bad', { clientId: 'c', deviceId: null, at: 1 }), false);
  });
});
