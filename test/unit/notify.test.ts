import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { asciiJson, NotifyService } from '../../src/router/notify.js';

const isAscii = (s: string) => Buffer.byteLength(s) === s.length;

describe('notification data as ASCII JSON', () => {
  it('escapes every character above U+007F and parses back to the same value', () => {
    const values = [
      { announcement: '收款 4.00 元', amount: 4 },
      { text: 'emoji 😀, Latin-1 é ñ ü, a quote " and a backslash \\', list: ['日本語', 'ascii'] },
      { lone: '\ud800 alone', control: '\u0001\n\t', zero: '\u0000' },
      'just a string with 中文',
      ['x', 1, null, true],
    ];
    for (const v of values) {
      const json = asciiJson(JSON.stringify(v));
      assert.ok(isAscii(json), json);
      assert.deepEqual(JSON.parse(json), v);
    }
    assert.equal(asciiJson('"收"'), '"\\u6536"');
    assert.equal(asciiJson('"😀"'), '"\\ud83d\\ude00"');
    const plain = JSON.stringify({ a: 'plain ascii' });
    assert.equal(asciiJson(plain), plain);
  });

  it('prepare keeps data as ASCII JSON and checks the size in UTF-8 bytes of the data as given', () => {
    const service = new NotifyService({ bus: {} as never, metrics: {} as never, maxPayloadBytes: 20 });
    // 5 CJK characters: 15 bytes in UTF-8, 17 with the quotes; 32 characters once escaped.
    const n = service.prepare({ appId: 'app', users: ['u1'], data: '收款收款收' });
    assert.ok(isAscii(n.data), n.data);
    assert.equal(JSON.parse(n.data), '收款收款收');
    assert.throws(
      () => service.prepare({ appId: 'app', users: ['u1'], data: '收款收款收款收' }),
      (err: Error & { code?: string }) => err.code === 'payload_too_large',
    );
    const ascii = service.prepare({ appId: 'app', users: ['u1'], data: { a: 1 } });
    assert.equal(ascii.data, '{"a":1}');
  });
});
