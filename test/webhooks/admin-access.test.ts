/**
 * Who may use the webhook admin API without ADMIN_TOKEN: anyone in open mode (the seed's examples call
 * it without credentials), nobody in apps mode, where it would let anyone read every merchant's
 * payloads and URLs and resend or reconfigure them (the console is closed there for the same reason).
 * And the intake without WEBHOOK_INTAKE_TOKEN: anyone in open mode, an app's API key in apps mode.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { TestHerald } from '../helpers.js';
import { call, startNode } from './helpers.js';

const APPS = [
  { id: 'shop', secret: 'a-long-random-secret-for-jwt', apiKeys: ['key-for-the-shop-backend-0001'] },
];

describe('webhook admin API without ADMIN_TOKEN', () => {
  const nodes: TestHerald[] = [];
  before(async () => {
    nodes.push(await startNode('embedded', { apps: APPS }), await startNode('embedded'));
  });
  after(async () => {
    for (const n of nodes) await n.cleanup();
  });

  it('is closed in apps mode, with a stable code and what to do', async () => {
    const base = (nodes[0] as TestHerald).url();
    for (const [method, path] of [
      ['GET', '/admin/merchant-notify/queue-status'],
      ['GET', '/admin/merchant-notify/all-merchant-status'],
      ['POST', '/admin/merchant-notify/retry'],
    ] as const) {
      const r = await call(base, method, path, method === 'POST' ? { order_id: 1 } : undefined);
      assert.equal(r.status, 403, path);
      assert.equal(r.body.code, 403, path);
      assert.equal(r.body.error?.code, 'forbidden', path);
      assert.match(String(r.body.error?.message ?? r.body.msg), /ADMIN_TOKEN/);
    }
  });

  it('the intake takes an app API key in apps mode (or WEBHOOK_INTAKE_TOKEN), never nobody', async () => {
    const base = (nodes[0] as TestHerald).url();
    const webhook = {
      orderNo: 'ACC-1',
      notifyUrl: 'https://merchant.example/pay/notify',
      payload: { order_no: 'ACC-1', status: 'paid' },
    };
    // Open to anyone, it would sign a forged "paid" with the merchant's secret and send it.
    const none = await call(base, 'POST', '/merchant-notify', webhook);
    assert.equal(none.status, 401);
    assert.equal(none.body.error?.code, 'unauthorized');
    assert.match(String(none.body.error?.message), /apiKey/);
    const wrong = await call(base, 'POST', '/merchant-notify', webhook, { authorization: 'Bearer nope' });
    assert.equal(wrong.status, 401);
    const ok = await call(base, 'POST', '/merchant-notify', webhook, {
      authorization: 'Bearer key-for-the-shop-backend-0001',
    });
    assert.equal(ok.status, 202, JSON.stringify(ok.body));
  });

  it('stays open in open mode, as the seed examples use it', async () => {
    const r = await call((nodes[1] as TestHerald).url(), 'GET', '/admin/merchant-notify/queue-status');
    assert.equal(r.status, 200);
    assert.equal(r.body.code, 200);
  });
});
