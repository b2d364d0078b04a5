/**
 * Compares two V8 heap snapshots (`node --heapsnapshot-signal=SIGUSR2`, then `kill -USR2 <pid>`):
 * self size by node type and name, largest growth first, divided by `per` (e.g. the connections
 * opened between the two). Usage: tsx bench/tools/heap-diff.ts <before> <after> [per] [top]
 */
import { readFileSync } from 'node:fs';

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
  nodes: number[];
  strings: string[];
}

function tally(file: string): Map<string, { size: number; count: number }> {
  const s = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
  const fields = s.snapshot.meta.node_fields;
  const types = s.snapshot.meta.node_types[0];
  const width = fields.length;
  const iType = fields.indexOf('type');
  const iName = fields.indexOf('name');
  const iSize = fields.indexOf('self_size');
  const out = new Map<string, { size: number; count: number }>();
  for (let i = 0; i < s.nodes.length; i += width) {
    const type = types[s.nodes[i + iType] as number] as string;
    let name = s.strings[s.nodes[i + iName] as number] as string;
    if (type === 'string' || type === 'concatenated string' || type === 'sliced string') name = '';
    if (name.length > 60) name = `${name.slice(0, 60)}…`;
    const key = `${type} ${name}`;
    const e = out.get(key) ?? { size: 0, count: 0 };
    e.size += s.nodes[i + iSize] as number;
    e.count++;
    out.set(key, e);
  }
  return out;
}

const [a, b, perArg, topArg] = process.argv.slice(2);
if (!a || !b) throw new Error('usage: heap-diff <before.heapsnapshot> <after.heapsnapshot> [per] [top]');
const per = Number(perArg ?? 1);
const top = Number(topArg ?? 40);
const before = tally(a);
const after = tally(b);
const rows: [string, number, number][] = [];
let total = 0;
for (const [k, v] of after) {
  const o = before.get(k) ?? { size: 0, count: 0 };
  const d = v.size - o.size;
  total += d;
  rows.push([k, d / per, (v.count - o.count) / per]);
}
for (const [k, o] of before) if (!after.has(k)) total -= o.size;
rows.sort((x, y) => y[1] - x[1]);
console.log(`total growth ${(total / per).toFixed(0)} bytes per unit`);
for (const [k, bytes, count] of rows.slice(0, top))
  console.log(`${bytes.toFixed(0).padStart(7)} B ${count.toFixed(2).padStart(6)} × ${k}`);
