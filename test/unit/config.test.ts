import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { formatDuration, parseDuration, parseDurationList } from '../../src/config/duration.js';
import { ConfigError, loadConfig } from '../../src/config/index.js';

const GOOD_APP = {
  id: 'shop',
  secret: 'a-long-random-secret-for-jwt',
  apiKeys: ['key-for-the-shop-backend-0001'],
};

/** The ConfigError thrown by `fn`; fails when it throws nothing or something else. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail('did not throw');
}

describe('loadConfig', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'herald-config-'));
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });
  const file = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };

  it('has the documented defaults with an empty environment', () => {
    const c = loadConfig({});
    assert.equal(c.port, 3000);
    assert.equal(c.host, '0.0.0.0');
    assert.equal(c.dataDir, './data');
    assert.equal(c.logLevel, 'info');
    assert.equal(c.redisUrl, undefined);
    assert.equal(c.databaseUrl, undefined);
    assert.deepEqual(c.apps, []);
    assert.equal(c.maxTopicsPerCall, 100);
    assert.equal(c.maxTopicsPerConnection, 1000);
    assert.equal(c.countInterval, 100);
    assert.equal(c.bodyLimit, 64 * 1024);
    assert.equal(c.maxBatch, 1000);
    assert.equal(c.maxTargets, 1000);
    assert.equal(c.shutdownTimeout, 10_000);
    assert.deepEqual(c.corsOrigins, ['*']);
  });

  it('reads environment variables, parsing numbers, durations, enums and lists', () => {
    const c = loadConfig({
      PORT: '4000',
      HOST: '127.0.0.1',
      DATA_DIR: '/tmp/herald-data',
      LOG_LEVEL: 'debug',
      COUNT_INTERVAL: '250ms',
      SHUTDOWN_TIMEOUT: '5s',
      CORS_ORIGINS: 'https://a.example, https://b.example',
      MAX_TOPICS_PER_CONNECTION: '50',
      REDIS_URL: 'redis://127.0.0.1:6379',
      DATABASE_URL: 'postgres://u:p@127.0.0.1:5432/db',
    });
    assert.equal(c.port, 4000);
    assert.equal(c.host, '127.0.0.1');
    assert.equal(c.dataDir, '/tmp/herald-data');
    assert.equal(c.logLevel, 'debug');
    assert.equal(c.countInterval, 250);
    assert.equal(c.shutdownTimeout, 5000);
    assert.deepEqual(c.corsOrigins, ['https://a.example', 'https://b.example']);
    assert.equal(c.maxTopicsPerConnection, 50);
    assert.equal(c.redisUrl, 'redis://127.0.0.1:6379');
    assert.equal(c.databaseUrl, 'postgres://u:p@127.0.0.1:5432/db');
  });

  it('ignores empty environment variables', () => {
    assert.equal(loadConfig({ PORT: '', LOG_LEVEL: '' }).port, 3000);
  });

  it('reads a YAML file named by HERALD_CONFIG (apps mode); the environment wins over it', () => {
    const p = file(
      'herald.yaml',
      [
        'port: 4100',
        'logLevel: warn',
        'countInterval: 1s',
        'apps:',
        '  - id: shop',
        '    secret: "a-long-random-secret-for-jwt"',
        '    apiKeys: ["key-for-the-shop-backend-0001"]',
      ].join('\n'),
    );
    const c = loadConfig({ HERALD_CONFIG: p });
    assert.equal(c.port, 4100);
    assert.equal(c.logLevel, 'warn');
    assert.equal(c.countInterval, 1000);
    assert.deepEqual(c.apps, [GOOD_APP]);
    const withEnv = loadConfig({ HERALD_CONFIG: p, PORT: '4200' });
    assert.equal(withEnv.port, 4200);
    assert.equal(withEnv.logLevel, 'warn');
    const yml = file('herald.yml', 'host: 10.0.0.1\n');
    assert.equal(loadConfig({ HERALD_CONFIG: yml }).host, '10.0.0.1');
  });

  it('reads a JSON file named by HERALD_CONFIG', () => {
    const p = file('herald.json', JSON.stringify({ port: 4300, maxBatch: 10, apps: [GOOD_APP] }));
    const c = loadConfig({ HERALD_CONFIG: p });
    assert.equal(c.port, 4300);
    assert.equal(c.maxBatch, 10);
    assert.deepEqual(c.apps, [GOOD_APP]);
    assert.deepEqual(loadConfig({ HERALD_CONFIG: file('empty.yaml', '') }).apps, []);
  });

  it('reads apps from HERALD_APPS (JSON), which wins over the file', () => {
    const other = { ...GOOD_APP, id: 'other' };
    const p = file('apps.json', JSON.stringify({ apps: [GOOD_APP] }));
    const c = loadConfig({ HERALD_CONFIG: p, HERALD_APPS: JSON.stringify([other]) });
    assert.deepEqual(
      c.apps.map((a) => a.id),
      ['other'],
    );
  });

  it('an invalid PORT stops with a ConfigError naming PORT', () => {
    for (const v of ['abc', '70000', '-1', '3000.5', '3e3', '0x10']) {
      const e = configError(() => loadConfig({ PORT: v }));
      assert.equal(e.key, 'PORT', v);
      assert.match(e.message, /PORT/);
    }
  });

  it('an invalid LOG_LEVEL, duration, URL or limit names its key', () => {
    const cases: [Record<string, string>, string][] = [
      [{ LOG_LEVEL: 'verbose' }, 'LOG_LEVEL'],
      [{ SHUTDOWN_TIMEOUT: 'soon' }, 'SHUTDOWN_TIMEOUT'],
      [{ COUNT_INTERVAL: '-5ms' }, 'COUNT_INTERVAL'],
      [{ REDIS_URL: 'http://not-redis' }, 'REDIS_URL'],
      [{ DATABASE_URL: 'not a url' }, 'DATABASE_URL'],
      [{ MAX_TOPICS_PER_CALL: '0' }, 'MAX_TOPICS_PER_CALL'],
      [{ BODY_LIMIT: '10' }, 'BODY_LIMIT'],
    ];
    for (const [env, key] of cases) {
      const e = configError(() => loadConfig(env));
      assert.equal(e.key, key);
      assert.match(e.message, new RegExp(key));
    }
    assert.match(configError(() => loadConfig({ LOG_LEVEL: 'verbose' })).message, /info/);
  });

  it('CORS_ORIGINS: origins or *, at least one; DATA_DIR outside /proc and /sys; CLIENT_EVENT_RATE bounds', () => {
    for (const bad of [
      ',,',
      ' , ',
      'example.com',
      'https://a.example/path',
      'ftp://a.example',
      'https://a b',
    ]) {
      const e = configError(() => loadConfig({ CORS_ORIGINS: bad }));
      assert.equal(e.key, 'CORS_ORIGINS', bad);
      assert.match(e.message, /scheme and host/);
    }
    assert.deepEqual(loadConfig({ CORS_ORIGINS: 'http://localhost:5173,*' }).corsOrigins, [
      'http://localhost:5173',
      '*',
    ]);
    // Node's recursive mkdir never returns under /proc: refused before anything starts.
    for (const dir of ['/proc/herald', '/sys/x', '/proc']) {
      assert.equal(configError(() => loadConfig({ DATA_DIR: dir })).key, 'DATA_DIR', dir);
    }
    assert.equal(
      loadConfig({ DATA_DIR: '/var/lib/herald-processing' }).dataDir,
      '/var/lib/herald-processing',
    );
    assert.equal(loadConfig({ CLIENT_EVENT_RATE: '0' }).clientEventRate, 0);
    assert.equal(configError(() => loadConfig({ CLIENT_EVENT_RATE: '-1' })).key, 'CLIENT_EVENT_RATE');
    assert.equal(configError(() => loadConfig({ CLIENT_EVENT_BURST: '0' })).key, 'CLIENT_EVENT_BURST');
  });

  it('PAYMENT_CURRENCY: an ISO 4217 code, not a well-formed slip such as RMB', () => {
    assert.equal(loadConfig({}).paymentCurrency, 'CNY');
    for (const ok of ['USD', 'JPY', 'HKD', 'KWD']) {
      assert.equal(loadConfig({ PAYMENT_CURRENCY: ok }).paymentCurrency, ok);
    }
    for (const bad of ['RMB', 'XYZ', 'cny', 'CN', 'CNYY', ' CNY']) {
      const e = configError(() => loadConfig({ PAYMENT_CURRENCY: bad }));
      assert.equal(e.key, 'PAYMENT_CURRENCY', bad);
      assert.match(e.message, /ISO 4217/, bad);
    }
  });

  it('MAX_JSON_DEPTH: 128 by default, 8 to 1000 from the environment or the file', () => {
    assert.equal(loadConfig({}).maxJsonDepth, 128);
    assert.equal(loadConfig({ MAX_JSON_DEPTH: '8' }).maxJsonDepth, 8);
    assert.equal(loadConfig({ MAX_JSON_DEPTH: '1000' }).maxJsonDepth, 1000);
    assert.equal(loadConfig({ HERALD_CONFIG: file('depth.json', '{"maxJsonDepth":300}') }).maxJsonDepth, 300);
    for (const v of ['7', '1001', '0', '-1', '12.5', 'deep']) {
      const e = configError(() => loadConfig({ MAX_JSON_DEPTH: v }));
      assert.equal(e.key, 'MAX_JSON_DEPTH', v);
      assert.match(e.message, />= 8 and <= 1000/);
    }
    assert.equal(
      configError(() => loadConfig({ HERALD_CONFIG: file('deep.yaml', 'maxJsonDepth: 5000\n') })).key,
      'maxJsonDepth',
    );
  });

  it('an unknown key or a bad value in the file names the key', () => {
    const unknown = configError(() => loadConfig({ HERALD_CONFIG: file('u.yaml', 'port: 1\nprot: 2\n') }));
    assert.equal(unknown.key, 'prot');
    assert.match(unknown.message, /prot/);
    const bad = configError(() => loadConfig({ HERALD_CONFIG: file('b.json', '{"port":"abc"}') }));
    assert.equal(bad.key, 'port');
  });

  it('an unreadable, unparsable or non-object file names HERALD_CONFIG', () => {
    for (const p of [
      join(dir, 'missing.yaml'),
      file('broken.json', '{"port": '),
      file('broken.yaml', 'port: [1,\n'),
      file('list.yaml', '- 1\n- 2\n'),
      file('scalar.json', '42'),
    ]) {
      assert.equal(configError(() => loadConfig({ HERALD_CONFIG: p })).key, 'HERALD_CONFIG', p);
    }
  });

  it('a bad apps entry names the entry and the field', () => {
    const cases: [unknown, string][] = [
      [{ id: 'shop' }, 'apps'],
      [[null], 'apps[0]'],
      [[{ ...GOOD_APP, id: 'bad id' }], 'apps[0].id'],
      [[{ ...GOOD_APP, id: 'x'.repeat(65) }], 'apps[0].id'],
      [[{ ...GOOD_APP, secret: 'short' }], 'apps[0].secret'],
      [[{ ...GOOD_APP, apiKeys: [] }], 'apps[0].apiKeys'],
      [[{ ...GOOD_APP, apiKeys: ['short'] }], 'apps[0].apiKeys'],
      [[{ ...GOOD_APP, apiKeys: 'key-for-the-shop-backend-0001' }], 'apps[0].apiKeys'],
      [[GOOD_APP, { ...GOOD_APP, apiKeys: ['another-key-of-16-chars'] }], 'apps[1].id'],
      [[{ ...GOOD_APP, extra: 1 }], 'apps[0].extra'],
    ];
    for (const [apps, key] of cases) {
      const p = file('apps-case.json', JSON.stringify({ apps }));
      const e = configError(() => loadConfig({ HERALD_CONFIG: p }));
      assert.equal(e.key, key, JSON.stringify(apps));
      assert.ok(e.message.includes(key));
    }
    assert.equal(configError(() => loadConfig({ HERALD_APPS: '[{' })).key, 'HERALD_APPS');
    assert.equal(
      configError(() => loadConfig({ HERALD_APPS: JSON.stringify([{ ...GOOD_APP, secret: 'x' }]) })).key,
      'HERALD_APPS[0].secret',
    );
  });

  it('refuses a secret or an API key shared by two apps, without showing it', () => {
    const blog = {
      id: 'blog',
      secret: 'another-long-secret-for-jwt',
      apiKeys: ['key-for-the-blog-backend-001'],
    };
    const shared = configError(() =>
      loadConfig({ HERALD_APPS: JSON.stringify([GOOD_APP, { ...blog, secret: GOOD_APP.secret }]) }),
    );
    assert.equal(shared.key, 'HERALD_APPS[1].secret');
    assert.match(shared.message, /app shop/);
    assert.ok(!shared.message.includes(GOOD_APP.secret), 'the secret is not shown');
    const key = configError(() =>
      loadConfig({ HERALD_APPS: JSON.stringify([GOOD_APP, { ...blog, apiKeys: GOOD_APP.apiKeys }]) }),
    );
    assert.equal(key.key, 'HERALD_APPS[1].apiKeys[0]');
    assert.ok(!key.message.includes(GOOD_APP.apiKeys[0] as string));
    const twice = configError(() =>
      loadConfig({ HERALD_APPS: JSON.stringify([{ ...blog, apiKeys: [blog.apiKeys[0], blog.apiKeys[0]] }]) }),
    );
    assert.equal(twice.key, 'HERALD_APPS[0].apiKeys[1]');
    assert.equal(loadConfig({ HERALD_APPS: JSON.stringify([GOOD_APP, blog]) }).apps.length, 2);
  });

  it('overrides win over everything and their apps are validated too', () => {
    const c = loadConfig({ PORT: '4000' }, { port: 0, countInterval: 5 });
    assert.equal(c.port, 0);
    assert.equal(c.countInterval, 5);
    assert.deepEqual(loadConfig({}, { apps: [GOOD_APP] }).apps, [GOOD_APP]);
    assert.equal(
      configError(() => loadConfig({}, { apps: [{ ...GOOD_APP, secret: 's' }] })).key,
      'apps[0].secret',
    );
  });
});

describe('parseDuration', () => {
  it('parses units and bare milliseconds', () => {
    const cases: [string | number, number][] = [
      ['250ms', 250],
      ['30s', 30_000],
      ['15m', 900_000],
      ['1h', 3_600_000],
      ['7d', 604_800_000],
      ['1.5s', 1500],
      ['0s', 0],
      ['10', 10],
      [' 2s ', 2000],
      [10, 10],
      [0, 0],
    ];
    for (const [input, ms] of cases) assert.equal(parseDuration(input), ms, String(input));
  });

  it('returns undefined for anything else', () => {
    for (const input of [
      '',
      'abc',
      '-1s',
      '1 s',
      '1sec',
      '5w',
      's',
      '1.s',
      '1e3',
      -5,
      Number.NaN,
      Infinity,
      // Beyond 1000 years: a time computed from now would leave the stores' range; 1e400 is Infinity.
      '99999999999d',
      `1${'0'.repeat(400)}`,
      '365001d',
    ]) {
      assert.equal(parseDuration(input), undefined, String(input));
    }
    assert.equal(parseDuration('365000d'), 365_000 * 86_400_000);
  });

  it('parses lists and formats durations back', () => {
    assert.deepEqual(parseDurationList('15s,1m, 5m'), [15_000, 60_000, 300_000]);
    assert.deepEqual(parseDurationList(['1s', 2]), [1000, 2]);
    assert.equal(parseDurationList('1s,nope'), undefined);
    for (const ms of [250, 1000, 90_000, 3_600_000, 86_400_000]) {
      assert.equal(parseDuration(formatDuration(ms)), ms);
    }
    assert.equal(formatDuration(1500), '1500ms');
    assert.equal(formatDuration(60_000), '1m');
  });
});
