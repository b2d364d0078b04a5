/**
 * Summarises a V8 .cpuprofile (from `--cpu-prof`): the functions with the most self time, and the
 * total time under each function (inclusive). Usage: tsx bench/tools/profile-top.ts <file> [top] [window]
 * where `window` (`from-to`, seconds since the profile's start, e.g. `20-30`, or `-10` for the last 10 s)
 * keeps only the samples taken in that window (a measured phase, without the connect ramp).
 */
import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

const file = process.argv[2];
if (!file) throw new Error('usage: profile-top <file.cpuprofile> [top]');
const top = Number(process.argv[3] ?? 30);
const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const span = p.timeDeltas.reduce((a, b) => a + b, 0) / 1e6;
const [fromArg, toArg] = (process.argv[4] ?? '').split('-');
const from = process.argv[4]?.startsWith('-') ? span - Number(toArg) : Number(fromArg || 0);
const to = process.argv[4]?.startsWith('-') || !toArg ? span : Number(toArg);
const byId = new Map(p.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const self = new Map<number, number>();
let total = 0;
let at = 0;
for (let i = 0; i < p.samples.length; i++) {
  const dt = p.timeDeltas[i] ?? 0;
  at += dt / 1e6;
  if (at < from || at > to) continue;
  total += dt;
  const id = p.samples[i] as number;
  self.set(id, (self.get(id) ?? 0) + dt);
}
const label = (n: Node) => {
  const url = n.callFrame.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/(dist|src)\//, '$1/');
  return `${n.callFrame.functionName || '(anonymous)'} ${url}:${n.callFrame.lineNumber + 1}`;
};
const selfBy = new Map<string, number>();
const inclBy = new Map<string, number>();
for (const [id, t] of self) {
  const n = byId.get(id) as Node;
  selfBy.set(label(n), (selfBy.get(label(n)) ?? 0) + t);
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const l = label(byId.get(cur) as Node);
    if (seen.has(l)) continue;
    seen.add(l);
    inclBy.set(l, (inclBy.get(l) ?? 0) + t);
  }
}
const pct = (t: number) => `${((t / total) * 100).toFixed(1).padStart(5)}%`;
console.log(
  `total ${(total / 1000).toFixed(0)} ms of samples, ${from.toFixed(1)}-${to.toFixed(1)} s of ${span.toFixed(1)} s`,
);
console.log('--- self');
for (const [l, t] of [...selfBy].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(pct(t), l);
console.log('--- inclusive');
for (const [l, t] of [...inclBy].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(pct(t), l);
