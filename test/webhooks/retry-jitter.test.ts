import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, describe, it } from 'node:test';
import pino from 'pino';
import { ConfigError, loadConfig } from '../../src/config/index.js';
import type { Store } from '../../src/store/index.js';
import { retryDelay, WebhookEngine } from '../../src/webhooks/engine.js';
import type { TestHerald } from '../helpers.js';
import { dropSchemas, Merchant, orderNo, STORES, startNode, status, waitFor } from './helpers.js';

after(dropSchemas);

describe('retry jitter (WEBHOOK_RETRY_JITTER)', () => {
  it('stretches a delay by a share below the jitter, never shortens it', () => {
    assert.equal(
      retryDelay(15_000, 0.1, null, () => 0),
      15_000,
    );
    assert.equal(
      retryDelay(15_000, 0.1, null, () => 0.5),
      15_750,
    );
    // The largest random number Math.random can return stays below the bound.
    const top = 1 - 2 ** -53;
    assert.equal(
      retryDelay(15_000, 0.1, null, () => top),
      16_499,
    );
    assert.equal(
      retryDelay(50, 1, null, () => top),
      99,
    );
    for (const [delay, jitter] of [
      [50, 0.1],
      [15_000, 0.1],
      [60_000, 0.5],
      [21_600_000, 1],
    ] as const) {
      const seen = new Set<number>();
      for (let i = 0; i < 1000; i++) {
        const d = retryDelay(delay, jitter, null);
        assert.ok(d >= delay, `${d} is shorter than the schedule's ${delay}`);
        assert.ok(d < delay * (1 + jitter), `${d} is not below ${delay} × (1 + ${jitter})`);
        assert.ok(Number.isInteger(d));
        seen.add(d);
      }
      // Spread: webhooks that failed together do not come due together.
      if (delay * jitter >= 1000) assert.ok(seen.size > 500, `only ${seen.size} distinct delays`);
    }
  });

  it('a jitter of 0 gives the exact delays of the schedule', () => {
    for (const delay of [1, 50, 15_000, 60_000, 300_000, 21_600_000]) {
      for (const r of [0, 0.5, 1 - 2 ** -53])
        assert.equal(
          retryDelay(delay, 0, null, () => r),
          delay,
        );
      assert.equal(retryDelay(delay, 0, null), delay);
    }
  });

  it('a longer Retry-After wins; a shorter one does not shorten the delay', () => {
    assert.equal(
      retryDelay(15_000, 0.1, 60_000, () => 0.99),
      60_000,
    );
    assert.equal(retryDelay(15_000, 0, 60_000), 60_000);
    // Longer than the schedule but shorter than the stretched delay: the stretched delay.
    assert.equal(
      retryDelay(15_000, 0.1, 15_500, () => 0.5),
      15_750,
    );
    assert.equal(
      retryDelay(15_000, 0.1, 1000, () => 0),
      15_000,
    );
    assert.equal(retryDelay(15_000, 0, 1000), 15_000);
  });

  it('is a fraction from 0 to 1, 0.1 by default, refused with a configuration error otherwise', () => {
    assert.equal(loadConfig({}).webhookRetryJitter, 0.1);
    assert.equal(loadConfig({ WEBHOOK_RETRY_JITTER: '0' }).webhookRetryJitter, 0);
    assert.equal(loadConfig({ WEBHOOK_RETRY_JITTER: '0.25' }).webhookRetryJitter, 0.25);
    assert.equal(loadConfig({ WEBHOOK_RETRY_JITTER: ' .5 ' }).webhookRetryJitter, 0.5);
    assert.equal(loadConfig({ WEBHOOK_RETRY_JITTER: '1' }).webhookRetryJitter, 1);
    assert.equal(loadConfig({ WEBHOOK_RETRY_JITTER: '' }).webhookRetryJitter, 0.1);
    for (const bad of ['1.5', '-0.1', '10%', 'abc', '1e-1', 'Infinity', '0x1']) {
      assert.throws(
        () => loadConfig({ WEBHOOK_RETRY_JITTER: bad }),
        (err: unknown) =>
          err instanceof ConfigError &&
          err.key === 'WEBHOOK_RETRY_JITTER' &&
          err.message ===
            `Invalid configuration: WEBHOOK_RETRY_JITTER: expected a number >= 0 and <= 1, got ${JSON.stringify(bad)}`,
        bad,
      );
    }
    const dir = mkdtempSync(join(tmpdir(), 'herald-jitter-'));
    try {
      const file = join(dir, 'herald.json');
      writeFileSync(file, JSON.stringify({ webhookRetryJitter: 0.3 }));
      assert.equal(loadConfig({ HERALD_CONFIG: file }).webhookRetryJitter, 0.3);
      writeFileSync(file, JSON.stringify({ webhookRetryJitter: 2 }));
      assert.throws(() => loadConfig({ HERALD_CONFIG: file }), /webhookRetryJitter: expected a number >= 0/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('counts in the warning about a WEBHOOK_MAX_AGE shorter than the schedule', () => {
    const warnings = (env: Record<string, string>) => {
      const lines: string[] = [];
      const logger = pino({ level: 'warn' }, { write: (line: string) => lines.push(line) });
      new WebhookEngine({ config: loadConfig(env), store: { kind: 'embedded' } as Store, logger });
      return lines.filter((l) => l.includes('WEBHOOK_MAX_AGE')).length;
    };
    // The wechat schedule spans 24 h 4 min; stretched by up to 10% it may take 26 h 28 min.
    assert.equal(warnings({ WEBHOOK_RETRY_DELAYS: 'wechat', WEBHOOK_MAX_AGE: '26h' }), 1);
    assert.equal(
      warnings({ WEBHOOK_RETRY_DELAYS: 'wechat', WEBHOOK_MAX_AGE: '26h', WEBHOOK_RETRY_JITTER: '0' }),
      0,
    );
    assert.equal(warnings({ WEBHOOK_RETRY_DELAYS: 'wechat', WEBHOOK_MAX_AGE: '27h' }), 0);
  });
});

for (const store of STORES) {
  describe(`retry jitter in the queue (${store} store)`, () => {
    let herald: TestHerald | undefined;
    let merchant: Merchant | undefined;
    afterEach(async () => {
      await herald?.cleanup();
      await merchant?.close();
      herald = undefined;
      merchant = undefined;
    });

    /** Fails `n` webhooks once and returns each one's delay before its retry, as stored. */
    async function storedDelays(jitter: number, n: number): Promise<number[]> {
      merchant = await Merchant.start(status(500));
      herald = await startNode(store, {
        webhookRetryDelays: [60_000],
        webhookRetryJitter: jitter,
        webhookBreakerThreshold: 100,
      });
      for (let i = 0; i < n; i++) {
        await herald.webhooks.enqueue({ orderNo: orderNo('JT'), notifyUrl: merchant.url(), payload: { i } });
      }
      const h = herald;
      // The result statement sets updated_at to now() and next_attempt_at to now() plus the delay.
      return waitFor(
        async () => {
          const r = await h.store.query<{ ms: number }>(
            `SELECT round(extract(epoch FROM next_attempt_at - updated_at) * 1000)::int AS ms
             FROM webhook_deliveries WHERE status = 'retrying' AND attempts = 1`,
          );
          return r.rows.length === n ? r.rows.map((x) => x.ms) : undefined;
        },
        15_000,
        `${n} webhooks waiting for their retry`,
      );
    }

    it('webhooks that failed together come due spread over the jitter, never before the schedule', async () => {
      const delays = await storedDelays(0.5, 8);
      for (const ms of delays) assert.ok(ms >= 60_000 && ms < 90_000, `a retry in ${ms}ms`);
      assert.ok(new Set(delays).size > 1, `every retry in ${delays[0]}ms`);
    });

    it('with WEBHOOK_RETRY_JITTER=0 every retry keeps the exact delay', async () => {
      const delays = await storedDelays(0, 4);
      assert.deepEqual(delays, [60_000, 60_000, 60_000, 60_000]);
    });
  });
}
