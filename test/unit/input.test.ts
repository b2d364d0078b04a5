import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  currentMaxJsonDepth,
  DEFAULT_MAX_JSON_DEPTH,
  isStorableText,
  isStorableTime,
  jsonProblem,
  MAX_JSON_DEPTH_LIMIT,
  MAX_TIME_MS,
  MIN_JSON_DEPTH,
  MIN_TIME_MS,
  setMaxJsonDepth,
  textProblem,
} from '../../src/input.js';

/** An array nested `depth` levels deep around 1. */
function nested(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

describe('input checks (src/input.ts)', () => {
  it('text a store can hold: no NUL, no unpaired surrogate; paired ones and other controls are fine', () => {
    assert.equal(isStorableText('plain'), true);
    assert.equal(isStorableText('😀 \u2028 \t'), true);
    assert.equal(isStorableText('a\u0000b'), false);
    assert.equal(isStorableText('a\ud800'), false);
    assert.equal(isStorableText('\udc00a'), false);
    assert.match(textProblem('a\u0000') ?? '', /NUL/);
    assert.match(textProblem('\ud800') ?? '', /surrogate/);
    assert.equal(textProblem('ok'), undefined);
  });

  it('JSON values: depth, finite numbers, and (storable) strings and keys, with a JSON pointer', () => {
    assert.equal(jsonProblem({ a: [1, 'x', null, true, { b: -0 }] }, true), undefined);
    assert.equal(currentMaxJsonDepth(), DEFAULT_MAX_JSON_DEPTH);
    assert.equal(DEFAULT_MAX_JSON_DEPTH, 128);
    assert.equal(jsonProblem(nested(DEFAULT_MAX_JSON_DEPTH), false), undefined);
    const deep = jsonProblem(nested(DEFAULT_MAX_JSON_DEPTH + 1), false);
    assert.match(deep?.message ?? '', new RegExp(`deeper than ${DEFAULT_MAX_JSON_DEPTH} levels`));
    assert.equal(deep?.path, '/0'.repeat(DEFAULT_MAX_JSON_DEPTH));
    // 10,000 levels: found without a stack overflow (the walk stops at the limit).
    assert.ok(jsonProblem(nested(10_000), false));
    assert.deepEqual(jsonProblem({ a: { 'b/c~': [1, Number.POSITIVE_INFINITY] } }, false), {
      path: '/a/b~1c~0/1',
      message: 'is not a finite number',
    });
    assert.deepEqual(jsonProblem(JSON.parse('{"x":1e309}'), false), {
      path: '/x',
      message: 'is not a finite number',
    });
    // Strings and keys matter only where the value is stored.
    assert.equal(jsonProblem({ x: 'a\u0000' }, false), undefined);
    assert.deepEqual(jsonProblem({ x: 'a\u0000' }, true), {
      path: '/x',
      message: 'contains a NUL character (\\u0000)',
    });
    assert.deepEqual(jsonProblem({ ['k\ud800']: 1 }, true), {
      path: '/k\ud800',
      message: 'has a key that contains an unpaired UTF-16 surrogate',
    });
  });

  it('MAX_JSON_DEPTH: set per process within its bounds, or given per check', () => {
    try {
      setMaxJsonDepth(10);
      assert.equal(jsonProblem(nested(10), true), undefined);
      assert.match(jsonProblem(nested(11), true)?.message ?? '', /deeper than 10 levels/);
      setMaxJsonDepth(MAX_JSON_DEPTH_LIMIT);
      assert.equal(jsonProblem(nested(MAX_JSON_DEPTH_LIMIT), false), undefined);
      assert.equal(
        jsonProblem(nested(MAX_JSON_DEPTH_LIMIT + 1), false)?.path.length,
        2 * MAX_JSON_DEPTH_LIMIT,
      );
      // A check may pass its own.
      assert.ok(jsonProblem(nested(3), false, 2));
      assert.equal(jsonProblem(nested(2), false, 2), undefined);
      for (const bad of [MIN_JSON_DEPTH - 1, MAX_JSON_DEPTH_LIMIT + 1, 0, -1, 12.5, Number.NaN]) {
        assert.throws(() => setMaxJsonDepth(bad), RangeError, String(bad));
      }
      assert.equal(currentMaxJsonDepth(), MAX_JSON_DEPTH_LIMIT, 'a refused value changes nothing');
    } finally {
      setMaxJsonDepth(DEFAULT_MAX_JSON_DEPTH);
    }
  });

  it('times the stores hold: years 1 to 9999', () => {
    assert.equal(new Date(MIN_TIME_MS).toISOString(), '0001-01-01T00:00:00.000Z');
    assert.equal(new Date(MAX_TIME_MS).toISOString(), '9999-12-31T23:59:59.999Z');
    assert.equal(isStorableTime(Date.now()), true);
    assert.equal(isStorableTime(0), true);
    assert.equal(isStorableTime(MIN_TIME_MS - 1), false);
    assert.equal(isStorableTime(MAX_TIME_MS + 1), false);
    assert.equal(isStorableTime(8.64e15), false);
    assert.equal(isStorableTime(Number.NaN), false);
  });
});
