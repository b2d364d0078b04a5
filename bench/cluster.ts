/**
 * cluster: Herald as 3 nodes on Redis against Herald as 1 node, same load, one run.
 *
 *   npm run bench -- cluster [--n 6000] [--m 200] [--rate 20] [--targeted 10000] [--nodes 3] [--targeted-rate R]
 *     [--interleave K (default 24) | --rounds N (targeted default 3000)]
 *
 * Phase 1, fan-out: N clients subscribe to one topic (spread evenly over the nodes), M notifications
 * are posted at `rate`/s round-robin to the nodes. Phase 2, targeted: `targeted` notifications each to
 * one user (of the N), posted at `--targeted-rate` per second when given (the same offered load for both
 * set-ups, below what either saturates), else as fast as `--inflight` requests in flight per node allow (default 16: each node
 * of the cluster gets the load the single node gets; `--inflight-total` keeps that many in flight in total
 * instead, which leaves each cluster node a third of the single node's load). `--warmup` targeted
 * notifications (default 30,000) are sent first and not measured, on the single node and on the cluster. Server CPU is read from /proc for every
 * Herald process and for redis-server; figures are CPU µs per delivery, summed over the nodes, and the
 * ratio of the cluster to the single node (target: <= 1.3x). `--rounds N` measures the pair N times in
 * alternating order and reports the median ratios (and each round's). `--interleave K` keeps both set-ups up
 * at once and alternates K targeted slices of `--targeted` notifications between them (one fan-out phase and
 * one warm-up each first): the ratio of each slice pair and their median, less exposed to a machine whose
 * speed drifts from minute to minute. That is the default (24 slices of 10,000); `--rounds N` or
 * `--interleave 0` measures the set-ups one after the other instead. Traffic stays on 127.0.0.0/8.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { nowUs, Poster, readStamp } from './lib/http.js';
import { cpuMicros, type RunningServer } from './lib/proc.js';
import { log, start } from './lib/scenario.js';
import { type Args, num, parseArgs, percentiles, round, sleep, str, waitFor } from './lib/util.js';
import { LoadGen } from './loadgen.js';

function redisPid(url: string): number {
  const u = new URL(url);
  const info = execFileSync('redis-cli', [
    '-h',
    u.hostname,
    '-p',
    u.port || '6379',
    'info',
    'server',
  ]).toString();
  const m = /process_id:(\d+)/.exec(info);
  if (!m) throw new Error('cannot find the redis-server pid (redis-cli info server)');
  return Number(m[1]);
}

interface PhaseFigures {
  deliveries: number;
  expected: number;
  cpuUsPerDelivery: number;
  /** Less what the servers burn when idle (timers, pollers, pings) over the same window. */
  netCpuUsPerDelivery: number;
  /** Server CPU (sum over nodes, % of one core) with clients connected and nothing sent. */
  idleCpuPct: number;
  redisCpuUsPerDelivery: number | null;
  p50Ms: number;
  p99Ms: number;
  deliveriesPerSec: number;
  /** Cluster only: Redis script calls that carried the phase's notifications, and how many each carried. */
  redisCalls?: number;
  notificationsPerCall?: number;
  /** Cluster only: notifications nodes received from the others (the rest were delivered where posted). */
  receivedFromOtherNodes?: number;
}

/** Clients connected to a set-up (one node or the cluster), and how to run a measured phase on it. */
interface Rig {
  /** `count` targeted notifications, each to one of the connected users (`seed` picks which). */
  targetedPhase(count: number, seed: number, pace?: number): Promise<PhaseFigures>;
  fanoutPhase(m: number, rate: number): Promise<PhaseFigures>;
  close(): Promise<void>;
}

async function setUp(servers: RunningServer[], n: number, redis: number | null, args: Args): Promise<Rig> {
  const appId = 'bench';
  const topic = 'fanout:orders';
  const lat: number[] = [];
  let received = 0;
  const stamp = { s: 0, t: 0 };
  const gens = servers.map(
    (s) =>
      new LoadGen({
        url: s.url,
        appId,
        onEvent: (_c, msg) => {
          if (!readStamp(msg, stamp)) return;
          received++;
          lat.push((nowUs() - stamp.t) / 1000);
        },
      }),
  );
  const perNode = num(args, 'inflight', 16);
  const inflight = args['inflight-total'] === true ? perNode : perNode * servers.length;
  const posters = servers.map((s) => new Poster(s.url, perNode));
  const close = async () => {
    for (const p of posters) await p.close();
    for (const g of gens) await g.closeAll();
  };
  try {
    const per = Math.ceil(n / servers.length);
    let connected = 0;
    for (let k = 0; k < servers.length; k++) {
      const r = await (gens[k] as LoadGen).connect(
        per,
        (i) => ({ clientId: `u${k * per + i}`, topics: [topic] }),
        {
          rate: 3000,
          concurrency: 200,
        },
      );
      connected += r.connected;
    }
    log(`${connected} clients connected over ${servers.length} node(s)`);
    await sleep(1500); // presence and app channels settle
    const cpu = () => servers.reduce((sum, s) => sum + s.cpuMicros(), 0);
    const rcpu = () => (redis ? cpuMicros(redis) : 0);
    // What the servers cost doing nothing (clients connected): subtracted for the net figures.
    const idleS = num(args, 'idle', 3);
    const idle0 = cpu();
    const idleT0 = nowUs();
    await sleep(idleS * 1000);
    const idleUsPerS = (cpu() - idle0) / ((nowUs() - idleT0) / 1e6);
    log(`idle: ${round(idleUsPerS / 1e4, 2)} % of a core over ${servers.length} server(s)`);
    // The cluster counters of every node (Redis script calls, notifications sent and received), to tell
    // how many notifications one call carried in a phase.
    const clusterCounters = async () => {
      const sum = { calls: 0, sent: 0, received: 0 };
      if (!redis) return sum;
      for (const s of servers) {
        const text = await (await fetch(`${s.url}/metrics`)).text();
        for (const line of text.split('\n')) {
          const v = Number(line.slice(line.lastIndexOf(' ') + 1));
          if (line.startsWith('herald_cluster_publish_calls_total ')) sum.calls += v;
          else if (line.startsWith('herald_cluster_notifications_total{direction="sent"')) sum.sent += v;
          else if (line.startsWith('herald_cluster_notifications_total{direction="received"'))
            sum.received += v;
        }
      }
      return sum;
    };
    const phase = async (
      count: number,
      expectedPer: number,
      send: (i: number) => Promise<void>,
      paced: boolean,
      pace: number,
    ) => {
      lat.length = 0;
      received = 0;
      const k0 = await clusterCounters();
      const c0 = cpu();
      const r0 = rcpu();
      const t0 = nowUs();
      const pending = new Set<Promise<void>>();
      for (let i = 0; i < count; i++) {
        if (paced) {
          const wait = (t0 + (i * 1e6) / pace - nowUs()) / 1000;
          if (wait > 1) await sleep(wait);
        } else while (pending.size >= inflight) await Promise.race(pending);
        const p = send(i).finally(() => pending.delete(p));
        pending.add(p);
      }
      await Promise.all(pending);
      const expected = count * expectedPer;
      await waitFor(() => received >= expected, 30_000, 10);
      const windowS = (nowUs() - t0) / 1e6;
      const dc = cpu() - c0;
      const dr = rcpu() - r0;
      const p = percentiles(lat, lat.length, [50, 99]);
      const k1 = await clusterCounters();
      const calls = k1.calls - k0.calls;
      return {
        deliveries: received,
        expected,
        cpuUsPerDelivery: round(dc / Math.max(1, received), 3),
        netCpuUsPerDelivery: round(Math.max(0, dc - idleUsPerS * windowS) / Math.max(1, received), 3),
        idleCpuPct: round(idleUsPerS / 1e4, 2),
        redisCpuUsPerDelivery: redis ? round(dr / Math.max(1, received), 3) : null,
        p50Ms: round(p.p50 as number, 2),
        p99Ms: round(p.p99 as number, 2),
        deliveriesPerSec: Math.round(received / windowS),
        ...(redis
          ? {
              redisCalls: calls,
              notificationsPerCall: round((k1.sent - k0.sent) / Math.max(1, calls), 2),
              receivedFromOtherNodes: k1.received - k0.received,
            }
          : {}),
      };
    };
    const body = (s: number, target: string) =>
      `{"appId":"${appId}",${target},"data":{"s":${s},"t":${nowUs()},"type":"payment","status":"success","amount":4}}`;
    const post = async (i: number, target: string) => {
      const poster = posters[i % posters.length] as Poster;
      await poster.post('/notify', body(i, target));
    };
    return {
      fanoutPhase: (count, pace) =>
        phase(count, connected, (i) => post(i, `"eventTopics":["${topic}"]`), true, pace),
      // --targeted-rate R: post R/s (both set-ups get the same offered load, below what either saturates)
      // instead of as fast as the requests in flight allow.
      targetedPhase: (count, seed, pace = 0) =>
        phase(count, 1, (i) => post(i, `"users":["u${((i + seed) * 7919) % connected}"]`), pace > 0, pace),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/** One set-up measured alone: fan-out, a warm-up, then the targeted phase. */
async function measure(
  servers: RunningServer[],
  n: number,
  m: number,
  rate: number,
  targeted: number,
  redis: number | null,
  args: Args,
): Promise<{ fanout: PhaseFigures; targeted: PhaseFigures }> {
  const rig = await setUp(servers, n, redis, args);
  try {
    const fanout = await rig.fanoutPhase(m, rate);
    await warmUp(rig, args);
    const targetedFig = await rig.targetedPhase(targeted, 0, num(args, 'targeted-rate', 0));
    return { fanout, targeted: targetedFig };
  } finally {
    await rig.close();
  }
}

/**
 * Warm-up, not measured: every node's request, Redis and delivery paths get compiled by the JIT first
 * (3 nodes each see a third of the traffic, so a cold start weighs 3 times as much on them).
 */
async function warmUp(rig: Rig, args: Args): Promise<void> {
  const warmup = num(args, 'warmup', 30_000);
  if (warmup <= 0) return;
  await rig.targetedPhase(warmup, 104_729);
  log(`warm-up: ${warmup} targeted notifications (not measured)`);
}

export async function run(argv: string[] | Args): Promise<Record<string, unknown>> {
  const args = Array.isArray(argv) ? parseArgs(argv) : argv;
  const n = num(args, 'n', 6000);
  const m = num(args, 'm', 200);
  const rate = num(args, 'rate', 20);
  // Interleaved by default (see `--interleave` below): one round of 3,000 targeted notifications is ~0.3 s
  // of CPU per set-up, read from /proc in 10 ms ticks on a machine whose pace moves within a minute, and
  // gave 1.39, 1.56 and 2.42 for the same build in three runs (BENCHMARKS.md, seventeenth session).
  const rounds = num(args, 'rounds', 0);
  const interleave = num(args, 'interleave', rounds > 0 ? 0 : 24);
  const targeted = num(args, 'targeted', interleave > 0 ? 10_000 : 3000);
  const nodes = num(args, 'nodes', 3);
  const redisUrl = str(args, 'redis', process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379');
  const prefix = `bench-${randomBytes(3).toString('hex')}:`;

  type Figures = Awaited<ReturnType<typeof measure>>;
  const measureSingle = async (): Promise<Figures> => {
    log('single node');
    const single = await start('herald', args);
    try {
      return await measure([single], n, m, rate, targeted, null, args);
    } finally {
      await single.stop();
    }
  };
  const startCluster = async (): Promise<RunningServer[]> => {
    log(`${nodes} nodes on ${redisUrl} (prefix ${prefix})`);
    const env = { REDIS_URL: redisUrl, REDIS_PREFIX: prefix };
    const envArgs = {
      ...args,
      env: [str(args, 'env', ''), ...Object.entries(env).map(([k, v]) => `${k}=${v}`)]
        .filter(Boolean)
        .join(','),
    };
    const cluster: RunningServer[] = [];
    for (let i = 0; i < nodes; i++) cluster.push(await start('herald', envArgs as unknown as Args));
    return cluster;
  };
  const stopCluster = async (cluster: RunningServer[]): Promise<void> => {
    for (const s of cluster) await s.stop();
    try {
      const u = new URL(redisUrl);
      execFileSync('sh', [
        '-c',
        `redis-cli -h ${u.hostname} -p ${u.port || '6379'} --scan --pattern '${prefix}*' | xargs -r redis-cli -h ${u.hostname} -p ${u.port || '6379'} del`,
      ]);
    } catch {}
  };
  const measureCluster = async (): Promise<Figures> => {
    const cluster = await startCluster();
    try {
      return await measure(cluster, n, m, rate, targeted, redisPid(redisUrl), args);
    } finally {
      await stopCluster(cluster);
    }
  };
  const ratio = (a: number, b: number) => round(a / Math.max(1e-9, b), 2);
  const median = (xs: number[]) => {
    const v = [...xs].sort((a, b) => a - b);
    const mid = Math.floor(v.length / 2);
    return v.length % 2 ? (v[mid] as number) : round(((v[mid - 1] as number) + (v[mid] as number)) / 2, 2);
  };
  async function runInterleaved(slices: number): Promise<Record<string, unknown>> {
    log('single node');
    const single = await start('herald', args);
    let cluster: RunningServer[] = [];
    const rigs: Rig[] = [];
    try {
      cluster = await startCluster();
      const one = await setUp([single], n, null, args);
      rigs.push(one);
      const many = await setUp(cluster, n, redisPid(redisUrl), args);
      rigs.push(many);
      const fanout = { single: await one.fanoutPhase(m, rate), cluster: await many.fanoutPhase(m, rate) };
      await warmUp(one, args);
      await warmUp(many, args);
      const pace = num(args, 'targeted-rate', 0);
      const rows: { single: PhaseFigures; cluster: PhaseFigures; ratio: number }[] = [];
      for (let k = 0; k < slices; k++) {
        const seed = k * targeted;
        let a: PhaseFigures;
        let b: PhaseFigures;
        if (k % 2 === 0) {
          a = await one.targetedPhase(targeted, seed, pace);
          b = await many.targetedPhase(targeted, seed, pace);
        } else {
          b = await many.targetedPhase(targeted, seed, pace);
          a = await one.targetedPhase(targeted, seed, pace);
        }
        const r = ratio(b.netCpuUsPerDelivery, a.netCpuUsPerDelivery);
        rows.push({ single: a, cluster: b, ratio: r });
        log(
          `slice ${k + 1}/${slices}: single ${a.netCpuUsPerDelivery} µs, cluster ${b.netCpuUsPerDelivery} µs, ratio ${r}`,
        );
      }
      return {
        scenario: 'cluster',
        mode: 'interleaved',
        params: {
          n,
          m,
          rate,
          targeted,
          nodes,
          slices,
          inflight: num(args, 'inflight', 16),
          targetedRate: pace || null,
        },
        fanout: {
          single: fanout.single,
          cluster: fanout.cluster,
          netRatio: ratio(fanout.cluster.netCpuUsPerDelivery, fanout.single.netCpuUsPerDelivery),
        },
        targeted: {
          netRatioMedian: median(rows.map((r) => r.ratio)),
          netRatios: rows.map((r) => r.ratio),
          singleNetUs: rows.map((r) => r.single.netCpuUsPerDelivery),
          clusterNetUs: rows.map((r) => r.cluster.netCpuUsPerDelivery),
          redisUs: rows.map((r) => r.cluster.redisCpuUsPerDelivery),
          notificationsPerCall: rows.map((r) => r.cluster.notificationsPerCall),
          // Publish -> receive, the medians of the slices' p50 and p99 (with `--targeted-rate`, at an offered
          // load below saturation; else mostly the wait behind the requests in flight).
          latencyMs: {
            single: {
              p50: median(rows.map((r) => r.single.p50Ms)),
              p99: median(rows.map((r) => r.single.p99Ms)),
            },
            cluster: {
              p50: median(rows.map((r) => r.cluster.p50Ms)),
              p99: median(rows.map((r) => r.cluster.p99Ms)),
            },
          },
          lost: rows.reduce(
            (sum, r) =>
              sum + (r.single.expected - r.single.deliveries) + (r.cluster.expected - r.cluster.deliveries),
            0,
          ),
        },
      };
    } finally {
      for (const r of rigs) await r.close();
      await single.stop();
      await stopCluster(cluster);
    }
  }
  const ratiosOf = (one: Figures, many: Figures) => ({
    fanoutCpuPerDelivery: ratio(many.fanout.cpuUsPerDelivery, one.fanout.cpuUsPerDelivery),
    targetedCpuPerDelivery: ratio(many.targeted.cpuUsPerDelivery, one.targeted.cpuUsPerDelivery),
    fanoutNetCpuPerDelivery: ratio(many.fanout.netCpuUsPerDelivery, one.fanout.netCpuUsPerDelivery),
    targetedNetCpuPerDelivery: ratio(many.targeted.netCpuUsPerDelivery, one.targeted.netCpuUsPerDelivery),
  });
  // --interleave K: both set-ups up at once (clients connected to each), warmed up, then K targeted slices
  // of `targeted` notifications on each, alternating (single, cluster, cluster, single, ...): the machine's
  // drift from minute to minute then weighs on both alike, which separate rounds of a minute or two
  // each cannot promise on a shared VM. Idle nodes of the other set-up cost a few % of a core meanwhile.
  if (interleave > 0) return runInterleaved(interleave);
  // --rounds N: the pair measured N times, the order alternating (single first, then cluster first, ...)
  // so that a machine that gets slower or faster during the run weighs on both set-ups alike; the
  // ratios reported are the medians of the rounds' ratios (each round's are listed too).
  const roundCount = Math.max(1, rounds);
  const pairs: { single: Figures; cluster: Figures; ratios: ReturnType<typeof ratiosOf> }[] = [];
  for (let r = 0; r < roundCount; r++) {
    let one: Figures;
    let many: Figures;
    if (r % 2 === 0) {
      one = await measureSingle();
      many = await measureCluster();
    } else {
      many = await measureCluster();
      one = await measureSingle();
    }
    pairs.push({ single: one, cluster: many, ratios: ratiosOf(one, many) });
    if (roundCount > 1) log(`round ${r + 1}/${roundCount}: ${JSON.stringify(pairs.at(-1)?.ratios)}`);
  }
  const keys = Object.keys(pairs[0]?.ratios ?? {}) as (keyof ReturnType<typeof ratiosOf>)[];
  const ratios = Object.fromEntries(keys.map((k) => [k, median(pairs.map((p) => p.ratios[k]))]));
  const last = pairs.at(-1) as (typeof pairs)[number];
  const one = last.single;
  const many = last.cluster;
  return {
    scenario: 'cluster',
    params: {
      n,
      m,
      rate,
      targeted,
      nodes,
      inflight: num(args, 'inflight', 16),
      inflightTotal: args['inflight-total'] === true,
      targetedRate: num(args, 'targeted-rate', 0) || null,
    },
    single: one,
    cluster: many,
    ratios,
    ...(roundCount > 1
      ? {
          rounds: pairs.map((p) => ({
            ratios: p.ratios,
            singleTargetedNetUs: p.single.targeted.netCpuUsPerDelivery,
            clusterTargetedNetUs: p.cluster.targeted.netCpuUsPerDelivery,
            redisTargetedUs: p.cluster.targeted.redisCpuUsPerDelivery,
          })),
        }
      : {}),
  };
}
