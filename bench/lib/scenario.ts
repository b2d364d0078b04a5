import { setPriority } from 'node:os';
import { type RunningServer, SERVER_KINDS, type ServerKind, startServer, waitQuiet } from './proc.js';
import { type Args, type Figure, list, num, type ServerFigures, str } from './util.js';

export interface ScenarioResult {
  scenario: string;
  params: Record<string, unknown>;
  figures: readonly Figure[];
  results: Record<string, ServerFigures>;
}

export interface Scenario {
  run(args: Args): Promise<ScenarioResult>;
}

export function serversOf(args: Args): ServerKind[] {
  const kinds = list(args, 'servers', [...SERVER_KINDS]);
  for (const k of kinds) if (!SERVER_KINDS.includes(k as ServerKind)) throw new Error(`unknown server ${k}`);
  return kinds as ServerKind[];
}

export function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/** Herald's settings for the run: `--env KEY=VALUE,KEY=VALUE`; `--cpu-prof <dir>` profiles Herald. */
export async function start(kind: ServerKind, args: Args): Promise<RunningServer> {
  const env: Record<string, string> = {};
  for (const kv of list(args, 'env', [])) {
    const eq = kv.indexOf('=');
    if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const prof = str(args, 'cpu-prof', '');
  const nodeFlags = prof && kind === 'herald' ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : [];
  // `--node-flags a,b`: extra Node/V8 flags for Herald (after its defaults, so they win).
  if (kind === 'herald') nodeFlags.push(...list(args, 'node-flags', []));
  const s = await startServer(kind, {
    env: kind === 'herald' ? env : {},
    nodeFlags,
    inspect: args.gc === true,
    fromSource: args.source === true,
    nice: num(args, 'nice', 0),
    ...(str(args, 'herald-dir', '') ? { heraldDir: str(args, 'herald-dir', '') } : {}),
  });
  log(`${kind} started: pid ${s.pid}, port ${s.port}`);
  return s;
}

/** Runs `fn` against each server in turn (one at a time, so they never share the CPU). */
/**
 * `--nice <n>` (e.g. -5) runs this load generator and each server ahead of other processes, so that a
 * test suite running beside the bench on a shared machine does not starve them (figures of CPU time
 * per operation hold either way; latencies and throughput do not).
 */
export function applyNice(args: Args): void {
  const n = num(args, 'nice', 0);
  if (n) setPriority(process.pid, n);
}

export async function eachServer(
  args: Args,
  fn: (server: RunningServer, kind: ServerKind) => Promise<ServerFigures>,
): Promise<Record<string, ServerFigures>> {
  const results: Record<string, ServerFigures> = {};
  applyNice(args);
  for (const kind of serversOf(args)) {
    // Do not start a measurement while another test suite saturates the machine (bounded wait).
    await waitQuiet(num(args, 'quiet', 30), num(args, 'quiet-wait', 120) * 1000, log);
    const server = await start(kind, args);
    try {
      results[kind] = await fn(server, kind);
      log(`${kind}: ${JSON.stringify(results[kind])}`);
    } finally {
      await server.stop();
    }
  }
  return results;
}
