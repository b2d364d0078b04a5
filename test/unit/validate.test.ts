import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HeraldError } from '../../src/errors.js';
import { isTopic, parseTopics, readIdentity } from '../../src/gateway/validate.js';

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof HeraldError, `not a HeraldError: ${String(err)}`);
    return err.code;
  }
  assert.fail('did not throw');
}

describe('parseTopics', () => {
  it('takes one topic or a list, de-duplicated in order', () => {
    assert.deepEqual(parseTopics('order:12345:status', 100), ['order:12345:status']);
    assert.deepEqual(parseTopics(['b', 'a', 'b', 'c', 'a'], 100), ['b', 'a', 'c']);
    assert.deepEqual(parseTopics([], 100), []);
  });

  it('accepts 1-200 characters of anything but whitespace and control characters', () => {
    for (const t of [
      'x',
      'y'.repeat(200),
      'chat:room-general',
      '订单:✓',
      'a/b#c?d=e&f',
      '🎉'.repeat(100),
      'a\u200bb',
    ]) {
      assert.deepEqual(parseTopics(t, 100), [t], JSON.stringify(t));
      assert.ok(isTopic(t));
    }
  });

  it('rejects empty, too long, whitespace and control characters with invalid_topic', () => {
    const bad = [
      '',
      'y'.repeat(201),
      '🎉'.repeat(101),
      'a b',
      ' lead',
      'trail ',
      'tab\t',
      'new\nline',
      'cr\r',
      'nbsp\u00a0x',
      'ideographic\u3000space',
      'nul\u0000',
      'esc\u001b',
      'del\u007f',
      'c1\u0085',
      'line\u2028sep',
    ];
    for (const t of bad) {
      assert.equal(
        codeOf(() => parseTopics(t, 100)),
        'invalid_topic',
        JSON.stringify(t),
      );
      assert.equal(
        codeOf(() => parseTopics(['fine', t], 100)),
        'invalid_topic',
        JSON.stringify(t),
      );
      assert.equal(isTopic(t), false);
    }
  });

  it('rejects non-string topics in a list with invalid_topic, and names the index', () => {
    for (const t of [1, null, undefined, {}, [], true]) {
      assert.equal(
        codeOf(() => parseTopics(['ok', t], 100)),
        'invalid_topic',
      );
    }
    assert.throws(() => parseTopics(['a', 'b', 'bad topic'], 100), /index 2/);
  });

  it('rejects an argument that is neither a string nor an array with invalid_arguments', () => {
    for (const arg of [undefined, null, 1, true, { 0: 'a', length: 1 }, new Set(['a'])]) {
      assert.equal(
        codeOf(() => parseTopics(arg, 100)),
        'invalid_arguments',
        String(arg),
      );
    }
  });

  it('more than max topics in one call is too_many_topics (counted before de-duplication)', () => {
    assert.equal(
      parseTopics(
        Array.from({ length: 100 }, (_, i) => `t${i}`),
        100,
      ).length,
      100,
    );
    assert.equal(
      codeOf(() =>
        parseTopics(
          Array.from({ length: 101 }, (_, i) => `t${i}`),
          100,
        ),
      ),
      'too_many_topics',
    );
    assert.equal(
      codeOf(() => parseTopics(['a', 'b', 'c', 'd'], 3)),
      'too_many_topics',
    );
    assert.equal(
      codeOf(() => parseTopics(['a', 'a', 'a', 'a'], 3)),
      'too_many_topics',
    );
  });
});

describe('readIdentity', () => {
  const none = { headers: {}, auth: {}, query: {} };

  it('is empty without any identity', () => {
    assert.deepEqual(readIdentity(none), { clientId: undefined, deviceId: undefined, token: undefined });
  });

  it('reads x-client-id / x-device-id headers first, then auth, then the query string', () => {
    const all = {
      headers: { 'x-client-id': 'h-user', 'x-device-id': 'h-dev' },
      auth: { clientId: 'a-user', deviceId: 'a-dev', token: 'a-token' },
      query: { clientId: 'q-user', deviceId: 'q-dev', token: 'q-token' },
    };
    assert.deepEqual(readIdentity(all), { clientId: 'h-user', deviceId: 'h-dev', token: 'a-token' });
    assert.deepEqual(readIdentity({ ...all, headers: {} }), {
      clientId: 'a-user',
      deviceId: 'a-dev',
      token: 'a-token',
    });
    assert.deepEqual(readIdentity({ ...all, headers: {}, auth: {} }), {
      clientId: 'q-user',
      deviceId: 'q-dev',
      token: 'q-token',
    });
    // Each field on its own: the user from a header, the device from auth, the token from the query.
    assert.deepEqual(
      readIdentity({ headers: { 'x-client-id': 'u' }, auth: { deviceId: 'd' }, query: { token: 't' } }),
      { clientId: 'u', deviceId: 'd', token: 't' },
    );
  });

  it('skips empty values and takes the first of repeated ones', () => {
    assert.equal(
      readIdentity({ headers: { 'x-client-id': '' }, auth: { clientId: '' }, query: { clientId: 'q' } })
        .clientId,
      'q',
    );
    assert.equal(
      readIdentity({ headers: {}, auth: { clientId: null }, query: { clientId: 'q' } }).clientId,
      'q',
    );
    assert.equal(
      readIdentity({ headers: { 'x-client-id': ['one', 'two'] }, auth: {}, query: {} }).clientId,
      'one',
    );
    assert.equal(readIdentity({ headers: {}, auth: {}, query: { deviceId: ['d1', 'd2'] } }).deviceId, 'd1');
  });

  it('reads the token from Authorization: Bearer (any case) and x-auth-token', () => {
    assert.equal(readIdentity({ ...none, headers: { authorization: 'Bearer abc.def' } }).token, 'abc.def');
    assert.equal(readIdentity({ ...none, headers: { authorization: 'bearer   xyz ' } }).token, 'xyz');
    assert.equal(readIdentity({ ...none, headers: { authorization: 'Basic Zm9v' } }).token, undefined);
    assert.equal(readIdentity({ ...none, headers: { 'x-auth-token': 'tok' } }).token, 'tok');
  });

  it('rejects malformed ids and tokens with their codes', () => {
    const cases: [Parameters<typeof readIdentity>[0], string][] = [
      [{ ...none, auth: { clientId: 'x'.repeat(129) } }, 'invalid_client_id'],
      [{ ...none, auth: { clientId: 42 } }, 'invalid_client_id'],
      [{ ...none, auth: { clientId: { id: 'x' } } }, 'invalid_client_id'],
      [{ ...none, query: { clientId: 'bad\u0000id' } }, 'invalid_client_id'],
      [{ ...none, headers: { 'x-client-id': 'tab\there' } }, 'invalid_client_id'],
      [{ ...none, auth: { deviceId: 7 } }, 'invalid_device_id'],
      [{ ...none, headers: { 'x-device-id': 'd'.repeat(129) } }, 'invalid_device_id'],
      [{ ...none, auth: { token: 123 } }, 'invalid_token'],
    ];
    for (const [h, code] of cases)
      assert.equal(
        codeOf(() => readIdentity(h)),
        code,
        JSON.stringify(h),
      );
    // 128 characters, spaces and unicode are fine in ids.
    assert.equal(readIdentity({ ...none, auth: { clientId: 'x'.repeat(128) } }).clientId, 'x'.repeat(128));
    assert.equal(readIdentity({ ...none, auth: { clientId: '张 三' } }).clientId, '张 三');
  });
});
