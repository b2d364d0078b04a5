/**
 * The config file (HERALD_CONFIG) holds secrets (ADMIN_TOKEN, app secrets and API keys): an error about it
 * goes to stderr and into log collectors, so it says where the file is wrong (line and column) without
 * quoting the file. And a JSON file saved with a byte order mark (as some Windows editors do) is read, not
 * refused with "Unexpected token ''" about a character nobody can see.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/index.js';

const dir = mkdtempSync(join(tmpdir(), 'herald-config-file-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

function message(path: string): string {
  try {
    loadConfig({ HERALD_CONFIG: path });
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.equal(err.key, 'HERALD_CONFIG');
    return err.message;
  }
  assert.fail(`accepted ${path}`);
}

describe('config file errors', () => {
  it('a JSON or YAML syntax error names the line, and never quotes the file', () => {
    const cases: [string, string, RegExp][] = [
      ['short.json', '{"adminToken": "hunter2-secret"', /line 1/],
      ['comma.json', '{"adminToken": "hunter2-secret", "port": 1234,}', /line 1, column \d+/],
      [
        'lines.json',
        '{\n  "port": 1234,\n  "adminToken": "hunter2-secret"\n  "host": "x"\n}\n',
        /line 4, column 3/,
      ],
      ['token.json', 'hunter2-secret', /not valid JSON/],
      ['nested.yaml', 'port: 1234\nadminToken: hunter2: secret\n', /line 2, column 13/],
      ['quote.yaml', 'port: 1234\nadminToken: "hunter2-secret\n', /line \d+, column \d+/],
    ];
    for (const [name, text, where] of cases) {
      const m = message(file(name, text));
      assert.match(m, /cannot parse/, m);
      assert.match(m, where, m);
      assert.doesNotMatch(m, /hunter2/, m);
    }
  });

  it('a JSON file with a byte order mark is read', () => {
    const p = file('bom.json', '\uFEFF{"port": 1234}');
    assert.equal(loadConfig({ HERALD_CONFIG: p }).port, 1234);
  });
});
