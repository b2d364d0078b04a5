/**
 * Configuration errors go to stderr and into the logs of whatever runs Herald: they must name the bad
 * setting without printing a secret it holds (a token, a signing secret, the password of a connection
 * URL). And a token Herald can never match (whitespace in it, e.g. the trailing newline of a secret file)
 * is refused at start-up instead of locking the admin out with 401s.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/index.js';

function configError(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail(`accepted ${JSON.stringify(env)}`);
}

describe('config: errors never print secrets', () => {
  it('a malformed secret or credential URL is named, its value is not shown', () => {
    const cases: [Record<string, string>, string][] = [
      [{ WEBHOOK_DEFAULT_SECRET: 'whsec_hunter2hunter2' }, 'WEBHOOK_DEFAULT_SECRET'],
      [{ DATABASE_URL: 'mysql://herald:hunter2@db/herald' }, 'DATABASE_URL'],
      [{ DATABASE_URL: 'postgres//herald:hunter2@db/herald' }, 'DATABASE_URL'],
      [{ REDIS_URL: 'redis//:hunter2@cache:6379' }, 'REDIS_URL'],
      [{ REDIS_URL: 'http://:hunter2@cache:6379' }, 'REDIS_URL'],
      [{ ALERT_WEBHOOK_URL: 'ftp://hooks.example/services/hunter2' }, 'ALERT_WEBHOOK_URL'],
      [{ OFFLINE_WEBHOOK_URL: 'ws://push.example/?key=hunter2' }, 'OFFLINE_WEBHOOK_URL'],
      [{ TELEGRAM_API_BASE: 'tg://bot:hunter2@api' }, 'TELEGRAM_API_BASE'],
    ];
    for (const [env, key] of cases) {
      const e = configError(env);
      assert.equal(e.key, key);
      assert.match(e.message, new RegExp(key));
      assert.doesNotMatch(e.message, /hunter2/, e.message);
    }
  });

  it('a URL of the wrong scheme still says which scheme it has', () => {
    const e = configError({ DATABASE_URL: 'mysql://herald:hunter2@db/herald' });
    assert.match(e.message, /mysql:/);
    assert.match(e.message, /postgres:\/\//);
  });

  it('other settings still show the value they got', () => {
    assert.match(configError({ PORT: 'abc' }).message, /"abc"/);
    assert.match(configError({ LOG_LEVEL: 'verbose' }).message, /"verbose"/);
  });
});

describe('config: tokens that could never be presented', () => {
  const field = {
    ADMIN_TOKEN: 'adminToken',
    WEBHOOK_INTAKE_TOKEN: 'webhookIntakeToken',
    METRICS_TOKEN: 'metricsToken',
  } as const;
  for (const key of ['ADMIN_TOKEN', 'WEBHOOK_INTAKE_TOKEN', 'METRICS_TOKEN'] as const) {
    it(`${key} with whitespace or a control character is refused, without echoing it`, () => {
      for (const v of ['hunter2\n', 'hunter2 ', ' hunter2', 'hun ter2', 'hunter2\t', 'hunter2\u0000']) {
        const e = configError({ [key]: v });
        assert.equal(e.key, key, JSON.stringify(v));
        assert.match(e.message, /whitespace/);
        assert.doesNotMatch(e.message, /hunter2/);
      }
      assert.equal(
        loadConfig({ [key]: 'a-good-token_0123456789.~+/=' })[field[key]],
        'a-good-token_0123456789.~+/=',
      );
    });
  }
});
