import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import { Webhook } from 'standardwebhooks';
import { loadConfig } from '../../src/config/index.js';
import { RETRY_PRESETS } from '../../src/config/options.js';
import type { Store } from '../../src/store/index.js';
import {
  circuitBreakerAlert,
  formatDurationZh,
  slowMerchantAlert,
  systemAlert,
} from '../../src/webhooks/alerts.js';
import { WebhookEngine } from '../../src/webhooks/engine.js';
import { merchantKeyOf } from '../../src/webhooks/merchant-key.js';
import { isSuccessBody, parseRetryAfter } from '../../src/webhooks/sender.js';
import { generateSecret, isValidSecret, signatureHeaders } from '../../src/webhooks/signing.js';
import { isBlockedAddress } from '../../src/webhooks/ssrf.js';
import { SlidingWindow } from '../../src/webhooks/window.js';

describe('webhook signing', () => {
  it('produces headers the standardwebhooks library verifies, and rejects a tampered body', () => {
    const secret = generateSecret();
    assert.ok(isValidSecret(secret));
    const body = JSON.stringify({ orderNo: 'BY1', amount: 1.5, 名: '值' });
    const h = signatureHeaders(secret, 'msg_1', body);
    assert.match(h['webhook-signature'], /^v1,[A-Za-z0-9+/]+=*$/);
    assert.deepEqual(new Webhook(secret).verify(body, h), JSON.parse(body));
    assert.throws(() => new Webhook(secret).verify(body.replace('1.5', '2.5'), h));
    // The library's own signature matches ours.
    const ts = Number(h['webhook-timestamp']);
    assert.equal(new Webhook(secret).sign('msg_1', new Date(ts * 1000), body), h['webhook-signature']);
  });

  it('accepts only whsec_ secrets of 24-64 bytes', () => {
    assert.equal(isValidSecret(`whsec_${Buffer.alloc(24).toString('base64')}`), true);
    assert.equal(isValidSecret(`whsec_${Buffer.alloc(16).toString('base64')}`), false);
    assert.equal(isValidSecret(Buffer.alloc(32).toString('base64')), false);
  });
});

describe('SSRF address rules', () => {
  it('blocks loopback, private, link-local, unique-local, unspecified and mapped addresses', () => {
    for (const a of [
      '127.0.0.1',
      '10.0.0.5',
      '172.16.3.4',
      '192.168.1.1',
      '169.254.169.254',
      '100.64.0.1',
      '0.0.0.0',
      '::1',
      '::',
      'fe80::1',
      'fd00::1',
      '::ffff:127.0.0.1',
      '::ffff:7f00:1',
      '224.0.0.1',
    ]) {
      assert.equal(isBlockedAddress(a), true, a);
    }
    for (const a of ['93.184.216.34', '8.8.8.8', '2606:4700:4700::1111', '172.32.0.1']) {
      assert.equal(isBlockedAddress(a), false, a);
    }
  });
});

describe('webhook helpers', () => {
  it('merchant key: merchantId, else a hash of origin + path (query ignored)', () => {
    assert.equal(merchantKeyOf('https://a.example/notify?x=1', 'M1'), 'id:M1');
    assert.equal(
      merchantKeyOf('https://a.example/notify?x=1'),
      merchantKeyOf('https://a.example/notify?y=2'),
    );
    assert.notEqual(merchantKeyOf('https://a.example/notify'), merchantKeyOf('https://a.example/other'));
    assert.match(merchantKeyOf('https://a.example/notify'), /^url:[0-9a-f]{16}$/);
  });

  it('Retry-After: seconds, HTTP dates, garbage, and a one-hour cap', () => {
    const now = Date.parse('2025-01-10T00:00:00Z');
    assert.equal(parseRetryAfter('30', now), 30_000);
    assert.equal(parseRetryAfter('Fri, 10 Jan 2025 00:01:00 GMT', now), 60_000);
    assert.equal(parseRetryAfter('soon', now), null);
    assert.equal(parseRetryAfter(undefined, now), null);
    assert.equal(parseRetryAfter('999999', now), 3_600_000);
  });

  it('the success body convention ignores case and whitespace', () => {
    for (const b of ['success', 'SUCCESS', ' Success\n', 's u c c e s s'])
      assert.equal(isSuccessBody(b), true, b);
    for (const b of ['', 'ok', '{"code":"SUCCESS"}', 'successful']) assert.equal(isSuccessBody(b), false, b);
  });

  it('sliding window forgets buckets older than the window', () => {
    let now = 1_000_000;
    const w = new SlidingWindow(3000, () => now);
    w.attempt(true, 100);
    w.attempt(false, 300);
    w.finished('failed');
    assert.deepEqual(w.snapshot(), { attempts: 2, successes: 1, avgMs: 200, delivered: 0, failed: 1 });
    now += 2000;
    w.attempt(true, 50);
    assert.equal(w.snapshot().attempts, 3);
    now += 1500;
    assert.deepEqual(w.snapshot(), { attempts: 1, successes: 1, avgMs: 50, delivered: 0, failed: 0 });
  });
});

describe('webhook settings', () => {
  it('WEBHOOK_RETRY_DELAYS takes a list or the wechat preset; the default is 3 increasing retries', () => {
    assert.deepEqual(loadConfig({}).webhookRetryDelays, [15_000, 60_000, 300_000]);
    assert.deepEqual(loadConfig({ WEBHOOK_RETRY_DELAYS: '50ms,1s' }).webhookRetryDelays, [50, 1000]);
    const wechat = loadConfig({ WEBHOOK_RETRY_DELAYS: 'wechat' }).webhookRetryDelays;
    assert.deepEqual(wechat, RETRY_PRESETS.wechat);
    assert.equal(wechat.length, 15);
    assert.throws(() => loadConfig({ WEBHOOK_RETRY_DELAYS: 'sometimes' }), /WEBHOOK_RETRY_DELAYS.*wechat/);
    assert.throws(() => loadConfig({ WEBHOOK_DEFAULT_SECRET: 'plain' }), /WEBHOOK_DEFAULT_SECRET/);
    const c = loadConfig({});
    assert.equal(c.webhookTimeout, 5000);
    assert.equal(c.webhookConcurrency, 100);
    assert.equal(c.webhookMerchantConcurrency, 10);
    assert.equal(c.webhookBreakerThreshold, 5);
    assert.equal(c.webhookBreakerOpen, 300_000);
    assert.equal(c.webhookBreakerDelay, 60_000);
    assert.equal(c.webhookMaxAge, 2 * 86_400_000);
    assert.equal(loadConfig({ WEBHOOK_MAX_AGE: '0' }).webhookMaxAge, 0);
    assert.equal(loadConfig({ WEBHOOK_MAX_AGE: '72h' }).webhookMaxAge, 72 * 3_600_000);
    assert.throws(() => loadConfig({ WEBHOOK_MAX_AGE: '400d' }), /WEBHOOK_MAX_AGE/);
    // The default max age outlasts the longest preset schedule; a shorter one is warned about at start.
    const span = (d: readonly number[]) => d.reduce((a, b) => a + b, 0);
    assert.ok(span(RETRY_PRESETS.wechat) < c.webhookMaxAge);
    const warnings = (env: Record<string, string>) => {
      const lines: string[] = [];
      const logger = pino({ level: 'warn' }, { write: (line: string) => lines.push(line) });
      new WebhookEngine({ config: loadConfig(env), store: { kind: 'embedded' } as Store, logger });
      return lines.filter((l) => l.includes('WEBHOOK_MAX_AGE')).length;
    };
    assert.equal(warnings({ WEBHOOK_RETRY_DELAYS: 'wechat' }), 0);
    assert.equal(warnings({ WEBHOOK_RETRY_DELAYS: 'wechat', WEBHOOK_MAX_AGE: '24h' }), 1);
    assert.equal(warnings({ WEBHOOK_RETRY_DELAYS: 'wechat', WEBHOOK_MAX_AGE: '0' }), 0);
    assert.equal(c.webhookSlowThreshold, 3000);
    assert.equal(c.webhookLogRetention, 30 * 86_400_000);
    assert.equal(c.webhookAllowPrivateNetworks, false);
    assert.equal(c.telegramApiBase, 'https://api.telegram.org');
    assert.deepEqual(loadConfig({ TELEGRAM_CHAT_IDS: '-1001, -1002' }).telegramChatIds, ['-1001', '-1002']);
  });
});

describe('alert texts', () => {
  it('follow the seed: breaker (critical), slow merchant (normal), system rules', () => {
    const at = new Date(2025, 0, 10, 15, 30, 45);
    const b = circuitBreakerAlert({
      merchantKey: 'abc123def456',
      notifyUrl: 'https://m/n',
      failures: 5,
      openMs: 300_000,
      at,
    });
    assert.equal(b.level, 'critical');
    assert.ok(
      b.text.startsWith('🚨 商户通知熔断器告警\n\n时间: 2025-01-10 15:30:45\n商户标识: abc123def456\n'),
    );
    assert.match(b.text, /熔断时长: 5分钟/);
    assert.match(b.text, /影响: 该商户的通知将被暂停5分钟，避免影响其他商户的正常通知。/);
    const s = slowMerchantAlert({
      merchantKey: 'abc123def456',
      notifyUrl: 'https://m/n',
      avgMs: 5234,
      thresholdMs: 3000,
      at,
    });
    assert.equal(s.level, 'normal');
    assert.match(s.text, /平均响应时间: 5\.234秒\n阈值: 3秒\n状态: 响应过慢/);
    assert.match(systemAlert('success_rate', 0.9, 0.95, 300_000, at).text, /成功率: 90\.00%\n阈值: 95\.00%/);
    assert.equal(formatDurationZh(3_600_000), '1小时');
    assert.equal(formatDurationZh(1500), '1.5秒');
  });
});
