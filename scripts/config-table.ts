// Renders the settings table (src/config/options.ts) into README.md between the config-table markers.
// `--check` exits 1 when the README is out of date (run by `npm run check`).
import { readFileSync, writeFileSync } from 'node:fs';
import { formatDuration } from '../src/config/duration.js';
import { OPTIONS, type OptionSpec } from '../src/config/options.js';

function show(spec: OptionSpec): string {
  const d = spec.default;
  if (d === undefined) return '(unset)';
  if (spec.type.kind === 'duration' && typeof d === 'number') return formatDuration(d);
  if (spec.type.kind === 'durations' && Array.isArray(d))
    return d.map((x) => formatDuration(Number(x))).join(',');
  if (Array.isArray(d)) return d.length ? d.join(',') : '(none)';
  return String(d);
}

const rows = (Object.entries(OPTIONS) as [string, OptionSpec][]).map(
  ([key, spec]) => `| \`${spec.env}\` | \`${key}\` | \`${show(spec)}\` | ${spec.doc.replace(/\|/g, '\\|')} |`,
);
const table = [
  '| variable | file key | default | meaning |',
  '| --- | --- | --- | --- |',
  ...rows,
  '| `HERALD_CONFIG` | | (unset) | Path of a JSON or YAML config file with the keys above and `apps`. |',
  '| `HERALD_APPS` | `apps` | (unset) | Apps mode: JSON list of `{ id, secret, apiKeys }`; unset means open mode. |',
].join('\n');

const readme = readFileSync('README.md', 'utf8');
const start = '<!-- config-table:start -->';
const end = '<!-- config-table:end -->';
const a = readme.indexOf(start);
const b = readme.indexOf(end);
if (a < 0 || b < 0) throw new Error('README.md has no config-table markers');
const next = `${readme.slice(0, a + start.length)}\n${table}\n${readme.slice(b)}`;
if (process.argv.includes('--check')) {
  if (next !== readme) {
    console.error('README.md settings table is out of date: run `npm run docs:config`');
    process.exit(1);
  }
} else {
  writeFileSync('README.md', next);
}
