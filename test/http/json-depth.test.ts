/**
 * MAX_JSON_DEPTH is a setting: the node's checks of client JSON (notification data, payment event meta,
 * webhook payloads) take the configured depth, and its largest value travels to a socket and into the
 * store intact.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { DEFAULT_MAX_JSON_DEPTH, MAX_JSON_DEPTH_LIMIT, setMaxJsonDepth } from '../../src/input.js';
import { call, connect, next, post, startTestHerald, type TestHerald } from '../helpers.js';

/** An array nested `depth` levels deep around 1. */
function nested(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

function errorOf(body: unknown): { code: string; message: string } | undefined {
  return (body as { error?: { code: string; message: string } }).error;
}

describe('MAX_JSON_DEPTH at its upper bound (1000)', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald(
      {},
      { MAX_JSON_DEPTH: String(MAX_JSON_DEPTH_LIMIT), WEBHOOK_DISPATCH: 'false' },
    );
  });
  after(async () => {
    await herald.cleanup();
    setMaxJsonDepth(DEFAULT_MAX_JSON_DEPTH);
  });

  it('POST /notify: data 1000 levels deep reaches a subscriber intact; 1001 is validation_failed', async () => {
    const s = await connect(herald, 'depth-app', { clientId: 'deep' });
    await call(s, 'subscribe', 'deep');
    const got = next<[unknown]>(s, 'dataUpdate', 5000);
    const ok = await post(herald, '/notify', {
      appId: 'depth-app',
      eventTopics: ['deep'],
      data: nested(1000),
    });
    assert.equal(ok.status, 202, JSON.stringify(ok.body));
    const [data] = await got;
    assert.deepEqual(data, nested(1000));
    const bad = await post(herald, '/notify', {
      appId: 'depth-app',
      eventTopics: ['deep'],
      data: nested(1001),
    });
    assert.equal(bad.status, 400);
    assert.equal(errorOf(bad.body)?.code, 'validation_failed');
    assert.match(JSON.stringify(bad.body), /deeper than 1000 levels/);
    s.close();
  });

  it('POST /payments/events: meta 1000 levels deep is stored; 1001 is refused', async () => {
    const event = (id: string, meta: unknown) => ({
      eventId: id,
      orderId: `order-${id}`,
      appId: 'depth-app',
      merchantId: 'm-depth',
      type: 'created',
      amount: 4,
      occurredAt: Date.now(),
      meta,
    });
    // meta is an object: it is one of the levels.
    const ok = await post(herald, '/payments/events', event('e1', { deep: nested(999) }));
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const bad = await post(herald, '/payments/events', event('e2', { deep: nested(1000) }));
    assert.equal(bad.status, 400, JSON.stringify(bad.body));
    assert.match(JSON.stringify(bad.body), /deeper than 1000 levels/);
  });

  it('POST /merchant-notify: a payload 1000 levels deep is queued; 1001 is refused', async () => {
    const w = (orderNo: string, payload: unknown) => ({
      orderNo,
      notifyUrl: 'https://merchant.example/pay/notify',
      payload,
    });
    const ok = await post(herald, '/merchant-notify', w('depth-1', nested(1000)));
    assert.equal(ok.status, 202, JSON.stringify(ok.body));
    const bad = await post(herald, '/merchant-notify', w('depth-2', nested(1001)));
    assert.equal(bad.status, 400, JSON.stringify(bad.body));
    assert.match(JSON.stringify(bad.body), /deeper than 1000 levels/);
  });
});

describe('MAX_JSON_DEPTH lowered (8)', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({}, { MAX_JSON_DEPTH: '8' });
  });
  after(async () => {
    await herald.cleanup();
    setMaxJsonDepth(DEFAULT_MAX_JSON_DEPTH);
  });

  it('POST /notify and /notify/batch refuse data deeper than 8 levels', async () => {
    const ok = await post(herald, '/notify', { appId: 'depth-app', broadcast: true, data: nested(8) });
    assert.equal(ok.status, 202, JSON.stringify(ok.body));
    const bad = await post(herald, '/notify', { appId: 'depth-app', broadcast: true, data: nested(9) });
    assert.equal(bad.status, 400);
    assert.match(JSON.stringify(bad.body), /deeper than 8 levels/);
    const batch = await post(herald, '/notify/batch', {
      notifications: [
        { appId: 'depth-app', broadcast: true, data: nested(8) },
        { appId: 'depth-app', broadcast: true, data: nested(9) },
      ],
    });
    assert.equal(batch.status, 200);
    const b = batch.body as { accepted: number; rejected: number };
    assert.deepEqual([b.accepted, b.rejected], [1, 1]);
  });
});
