import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { openFilesLimit, parseOpenFilesLimit } from '../../src/limits.js';

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            20000                20000                files
Max locked memory         8388608              8388608              bytes
`;

describe('open-files limit', () => {
  it('reads the soft and hard limits of /proc/<pid>/limits', () => {
    assert.deepEqual(parseOpenFilesLimit(LIMITS), { soft: 20000, hard: 20000 });
    assert.deepEqual(parseOpenFilesLimit(LIMITS.replace('20000                20000', '1024 unlimited')), {
      soft: 1024,
      hard: Number.POSITIVE_INFINITY,
    });
  });

  it('gives nothing for text without the line or with a value it cannot read', () => {
    assert.equal(parseOpenFilesLimit(''), undefined);
    assert.equal(parseOpenFilesLimit('Max open files  lots  more  files'), undefined);
  });

  it("reads this process's limit on Linux", () => {
    const limit = openFilesLimit();
    if (process.platform !== 'linux') return assert.equal(limit, undefined);
    assert.ok(limit && limit.soft > 0 && limit.hard >= limit.soft, JSON.stringify(limit));
  });
});
