/**
 * HISTORY_RULES is JSON that Herald reads once at start-up: a rule it would apply other than as written
 * must stop start-up with a message naming the rule, as every other bad setting does. A typo in a key
 * (`perfix`, `appid`) or a non-string appId once made a rule for one stream prefix or app apply to every
 * stream of every app; a ttl of 0 turned history off for the rule's streams; a ttl above HISTORY_TTL's
 * range (1 day) was taken although HISTORY_TTL itself refuses it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/index.js';

function keyOf(rules: unknown): string {
  try {
    loadConfig({ HISTORY_RULES: JSON.stringify(rules) });
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err.key;
  }
  assert.fail(`accepted ${JSON.stringify(rules)}`);
}

describe('config: HISTORY_RULES', () => {
  it('takes well-formed rules', () => {
    const c = loadConfig({
      HISTORY_RULES: JSON.stringify([
        { prefix: 't:chat:', size: 1000, ttl: '10m' },
        { appId: 'shop', size: 0, ttl: '1s' },
        { appId: 'shop', prefix: 'u:', size: 10, ttl: '1d' },
      ]),
    });
    assert.deepEqual(c.historyRules, [
      { prefix: 't:chat:', size: 1000, ttlMs: 600_000 },
      { appId: 'shop', size: 0, ttlMs: 1000 },
      { appId: 'shop', prefix: 'u:', size: 10, ttlMs: 86_400_000 },
    ]);
  });

  it('refuses unknown keys and ids that are not strings, naming the rule and key', () => {
    assert.equal(keyOf([{ perfix: 't:chat:', size: 1000, ttl: '10m' }]), 'HISTORY_RULES[0].perfix');
    assert.equal(
      keyOf([
        { prefix: 'a', size: 1, ttl: '1m' },
        { appid: 'shop', size: 1, ttl: '1m' },
      ]),
      'HISTORY_RULES[1].appid',
    );
    assert.equal(keyOf([{ appId: 5, size: 1, ttl: '1m' }]), 'HISTORY_RULES[0].appId');
    assert.equal(keyOf([{ prefix: null, size: 1, ttl: '1m' }]), 'HISTORY_RULES[0].prefix');
    assert.equal(keyOf(['t:chat:']), 'HISTORY_RULES[0]');
  });

  it("refuses a ttl outside HISTORY_TTL's range", () => {
    for (const ttl of ['0ms', '0', '999ms', '2d', '1000d']) {
      assert.equal(keyOf([{ prefix: 't:', size: 10, ttl }]), 'HISTORY_RULES[0].ttl', ttl);
    }
  });
});
