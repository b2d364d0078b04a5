/**
 * Benchmark dispatcher: `npm run bench -- <scenario> [--flags]`.
 *
 *   fanout   N subscribers of one topic, M notifications at a rate     --n --m --rate --inflight
 *   conns    idle memory per connected+subscribed client, connect rate  --sizes 10000,19000 [--gc]
 *   notify   targeted POST /notify and POST /notify/batch              --users --seconds --inflight --batch
 *   counts   1,000 count watchers while 5,000 clients join and leave    --watchers --churn --join-rate --hold
 *   cluster  3 nodes on Redis against 1 node: fan-out and targeted CPU per delivery, Redis CPU  --n --m --rate --targeted --interleave
 *   payments 2,000 machines running order lifecycles (bench/payments.ts)
 *   webhooks bench/webhooks.ts run(args), when that file exists
 *
 * Common flags: --servers herald,baseline,limit  --md <file> (append a Markdown table)
 *   --env KEY=VALUE,... (Herald settings)  --cpu-prof <dir> (profile Herald)  --source (Herald from src/ via tsx)
 *   --herald-dir <dir> (build and run the Herald checkout there, e.g. `git archive <commit>` unpacked)
 *   --quiet <pct> --quiet-wait <s> (before each server, wait until other processes use < pct % of a core)
 *   --nice <n> (e.g. -5: run the load generator and the servers ahead of other processes)
 *   --node-flags a,b (extra Node/V8 flags for Herald)  --gc (servers open V8's inspector on loopback; conns
 *   asks each for a full GC before reading its RSS)
 * Prints one JSON line of figures on stdout; progress goes to stderr.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './lib/proc.js';
import { log, type ScenarioResult } from './lib/scenario.js';
import { type Args, appendMarkdown, parseArgs, ratios } from './lib/util.js';

type Runner = (args: Args) => Promise<unknown>;

const scenarios: Record<string, () => Promise<Runner>> = {
  fanout: async () => (await import('./scenarios/fanout.js')).run,
  conns: async () => (await import('./scenarios/conns.js')).run,
  notify: async () => (await import('./scenarios/notify.js')).run,
  counts: async () => (await import('./scenarios/counts.js')).run,
  cluster: async () => (await import('./cluster.js')).run as Runner,
  payments: async () => (await import('./payments.js')).run as Runner,
  webhooks: async () => {
    const file = join(ROOT, 'bench', 'webhooks.ts');
    if (!existsSync(file)) throw new Error('bench/webhooks.ts does not exist yet');
    // A variable specifier: the file is written separately and may be absent when this compiles.
    const spec = './webhooks.js';
    const mod = (await import(spec)) as { run: Runner };
    return mod.run;
  },
};

function isScenarioResult(v: unknown): v is ScenarioResult {
  return typeof v === 'object' && v !== null && 'results' in v && 'figures' in v;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const args = parseArgs(argv);
  const name = args._[0];
  if (!name || !(name in scenarios)) {
    process.stderr.write(`usage: npm run bench -- <${Object.keys(scenarios).join('|')}> [--flags]\n`);
    process.exit(2);
  }
  const started = Date.now();
  const run = await (scenarios[name] as () => Promise<Runner>)();
  const out = await run(args);
  if (isScenarioResult(out)) {
    const line = {
      ...out,
      figures: undefined,
      ratios: ratios(out.results, out.figures),
      seconds: Math.round((Date.now() - started) / 1000),
    };
    process.stdout.write(`${JSON.stringify(line)}\n`);
    const md = args.md;
    if (typeof md === 'string') {
      appendMarkdown(md, name, `npm run bench -- ${argv.join(' ')}`, out.params, out.results, out.figures);
      log(`table appended to ${md}`);
    }
  } else if (out !== undefined) process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(0);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
