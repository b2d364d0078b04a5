import { once } from 'node:events';
import { appendFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** Command-line flags: `--name value`, `--name=value`, bare `--flag` (true). */
export type Args = Record<string, string | boolean> & { _: string[] };

export function parseArgs(argv: readonly string[]): Args {
  const out: Args = { _: [] } as unknown as Args;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (!a.startsWith('--')) {
      out._.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    if (eq > 0) {
      out[a.slice(2, eq)] = a.slice(eq + 1);
      continue;
    }
    const next = argv[i + 1];
    if (next !== undefined && !next.startsWith('--')) {
      out[a.slice(2)] = next;
      i++;
    } else out[a.slice(2)] = true;
  }
  return out;
}

export function num(args: Args, name: string, def: number): number {
  const v = args[name];
  if (v === undefined || v === true) return def;
  const n = Number(String(v).replace(/_/g, '').replace(/k$/i, '000'));
  if (!Number.isFinite(n)) throw new Error(`--${name} must be a number, got ${String(v)}`);
  return n;
}

export function str(args: Args, name: string, def: string): string {
  const v = args[name];
  return v === undefined || v === true ? def : String(v);
}

export function list(args: Args, name: string, def: string[]): string[] {
  const v = args[name];
  return v === undefined || v === true ? def : String(v).split(',').filter(Boolean);
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  s.close();
  await once(s, 'close');
  return port;
}

/** Waits until `cond()` is true, polling; returns false on timeout. */
export async function waitFor(cond: () => boolean, timeoutMs: number, everyMs = 20): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(everyMs);
  }
  return true;
}

/** Percentile (0-100) of an unsorted numeric array or typed array slice; sorts a copy. */
export function percentiles(
  values: ArrayLike<number>,
  count: number,
  ps: readonly number[],
): Record<string, number> {
  const a = Float64Array.from({ length: count }, (_, i) => values[i] as number);
  a.sort();
  const out: Record<string, number> = {};
  for (const p of ps) {
    if (count === 0) out[`p${p}`] = Number.NaN;
    else out[`p${p}`] = a[Math.min(count - 1, Math.max(0, Math.ceil((p / 100) * count) - 1))] as number;
  }
  out.max = count ? (a[count - 1] as number) : Number.NaN;
  return out;
}

export function median(values: readonly number[]): number {
  const a = [...values].sort((x, y) => x - y);
  if (a.length === 0) return Number.NaN;
  const m = a.length >> 1;
  return a.length % 2 ? (a[m] as number) : ((a[m - 1] as number) + (a[m] as number)) / 2;
}

export function round(n: number, digits = 2): number {
  if (!Number.isFinite(n)) return n;
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** One row of a figures table: a label, its unit, and whether lower is better (for the ratios). */
export interface Figure {
  key: string;
  label: string;
  lowerIsBetter?: boolean;
  /** Herald only (no ratio to the references). */
  heraldOnly?: boolean;
}

export type ServerFigures = Record<string, number | string | boolean | null>;

/** Herald's figure divided by a reference's, when both are numbers. */
export function ratio(h: unknown, r: unknown): number | null {
  if (typeof h !== 'number' || typeof r !== 'number' || !Number.isFinite(h) || !Number.isFinite(r) || r === 0)
    return null;
  return round(h / r, 2);
}

export function ratios(results: Record<string, ServerFigures>, figures: readonly Figure[]) {
  const h = results.herald;
  const out: Record<string, Record<string, number | null>> = {};
  if (!h) return out;
  for (const ref of ['baseline', 'limit']) {
    const r = results[ref];
    if (!r) continue;
    const o: Record<string, number | null> = {};
    for (const f of figures) if (!f.heraldOnly) o[f.key] = ratio(h[f.key], r[f.key]);
    out[`herald/${ref}`] = o;
  }
  return out;
}

function cell(v: unknown): string {
  if (v === undefined || v === null) return '–';
  if (typeof v === 'number')
    return Number.isFinite(v) ? String(round(v, v < 10 ? 3 : v < 1000 ? 1 : 0)) : '–';
  return String(v);
}

/** Appends a Markdown table (figures × servers, then the ratios) to `file`. */
export function appendMarkdown(
  file: string,
  title: string,
  command: string,
  params: Record<string, unknown>,
  results: Record<string, ServerFigures>,
  figures: readonly Figure[],
): void {
  const servers = Object.keys(results);
  const refs = servers.filter((s) => s !== 'herald');
  const hasH = servers.includes('herald');
  const head = ['figure', ...servers, ...(hasH ? refs.map((r) => `herald/${r}`) : [])];
  const lines = [
    `### ${title}`,
    '',
    `\`${command}\` — ${new Date().toISOString()} — ${Object.entries(params)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`,
    '',
    `| ${head.join(' | ')} |`,
    `| ${head.map(() => '---').join(' | ')} |`,
  ];
  for (const f of figures) {
    const row = [
      f.label,
      ...servers.map((s) => (f.heraldOnly && s !== 'herald' ? '' : cell(results[s]?.[f.key]))),
    ];
    if (hasH)
      for (const r of refs)
        row.push(f.heraldOnly ? '' : cell(ratio(results.herald?.[f.key], results[r]?.[f.key])));
    lines.push(`| ${row.join(' | ')} |`);
  }
  lines.push('', '');
  appendFileSync(file, lines.join('\n'));
}
