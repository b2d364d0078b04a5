/**
 * fanout: N clients subscribe to one topic; M notifications to that topic are posted at a given rate
 * over one keep-alive connection (so publish order is defined), or with `--rate 0` as fast as
 * `--inflight` concurrent requests allow. Figures: server CPU µs per delivery, deliveries/s,
 * p50/p99/max publish→receive latency (a timestamp in the data), lost, duplicated, out of order.
 */

import { monitorEventLoopDelay } from 'node:perf_hooks';
import { nowUs, Poster, readStamp, Samples } from '../lib/http.js';
import { cpuSplitMicros, othersMeter, writeSyscalls } from '../lib/proc.js';
import { eachServer, log, type ScenarioResult } from '../lib/scenario.js';
import { type Args, type Figure, num, percentiles, round, sleep, str, waitFor } from '../lib/util.js';
import { LoadGen } from '../loadgen.js';

export const figures: Figure[] = [
  { key: 'cpuUsPerDelivery', label: 'server CPU µs / delivery', lowerIsBetter: true },
  {
    key: 'cpuUsPerDeliveryNetOfIdle',
    label: 'server CPU µs / delivery, less the idle CPU',
    lowerIsBetter: true,
  },
  { key: 'deliveriesPerSec', label: 'deliveries / s' },
  { key: 'cpuPct', label: 'server CPU % of one core', lowerIsBetter: true },
  {
    key: 'idleCpuPct',
    label: 'server CPU % when idle (clients connected, nothing sent)',
    lowerIsBetter: true,
  },
  { key: 'p50Ms', label: 'p50 publish→receive ms', lowerIsBetter: true },
  { key: 'p99Ms', label: 'p99 publish→receive ms', lowerIsBetter: true },
  { key: 'maxMs', label: 'max publish→receive ms', lowerIsBetter: true },
  { key: 'lost', label: 'lost messages', lowerIsBetter: true },
  { key: 'duplicates', label: 'duplicated messages', lowerIsBetter: true },
  { key: 'outOfOrder', label: 'out of order (rate mode: one publisher connection)', lowerIsBetter: true },
  { key: 'clientCpuUsPerDelivery', label: 'load generator CPU µs / delivery', lowerIsBetter: true },
  { key: 'othersPct', label: 'other processes on the machine, % of a core', lowerIsBetter: true },
  { key: 'loopP99Ms', label: 'event-loop p99 delay ms', heraldOnly: true },
  {
    key: 'idleLoopP99Ms',
    label: 'event-loop p99 delay ms with nothing sent (clients connected)',
    heraldOnly: true,
  },
  { key: 'systemCpuShare', label: 'share of server CPU in the kernel' },
  {
    key: 'writesPerDelivery',
    label: 'server write system calls / delivery (below 1: frames coalesced per socket)',
    lowerIsBetter: true,
  },
  {
    key: 'clientLoopP99Ms',
    label: 'load generator event-loop p99 delay ms (its own lag, part of every latency)',
    lowerIsBetter: true,
  },
];

export async function run(args: Args): Promise<ScenarioResult> {
  const n = num(args, 'n', 10_000);
  const m = num(args, 'm', 200);
  const rate = num(args, 'rate', 20);
  const inflight = rate > 0 ? 1 : num(args, 'inflight', 8);
  const warm = num(args, 'warmup', Math.min(20, Math.ceil(m / 10)));
  const pad = num(args, 'pad', 0);
  const appId = str(args, 'app', 'bench');
  const topic = 'fanout:orders';
  const params = { n, m, rate: rate || `max (inflight ${inflight})`, warmup: warm, pad };

  const results = await eachServer(args, async (server) => {
    const lat = new Samples(Math.min(n * m, 1 << 22));
    const seen = new Uint8Array(Math.ceil((n * m) / 8));
    const stamp = { s: 0, t: 0 };
    let received = 0;
    let warmReceived = 0;
    let outOfOrder = 0;
    let duplicates = 0;
    let lastRecvUs = 0;
    const gen = new LoadGen({
      url: server.url,
      appId,
      onEvent: (c, msg) => {
        if (!readStamp(msg, stamp)) return;
        const s = stamp.s;
        if (s <= c.last) outOfOrder++;
        c.last = s;
        if (s < 0) {
          warmReceived++;
          return;
        }
        const bit = c.index * m + s;
        const mask = 1 << (bit & 7);
        if ((seen[bit >> 3] as number) & mask) {
          duplicates++;
          return;
        }
        seen[bit >> 3] = (seen[bit >> 3] as number) | mask;
        const now = nowUs();
        received++;
        lastRecvUs = now;
        lat.push((now - stamp.t) / 1000);
      },
    });
    const poster = new Poster(server.url, Math.max(1, Math.min(inflight, 16)));
    try {
      const ramp = await gen.connect(n, (i) => ({ clientId: `u${i}`, topics: [topic] }), {
        rate: num(args, 'connect-rate', 3000),
        concurrency: num(args, 'connect-concurrency', 200),
      });
      log(
        `${server.kind}: ${ramp.connected} connected in ${round(ramp.seconds, 1)} s, ${ramp.failed} failed ${JSON.stringify(ramp.errors)}`,
      );
      if (ramp.connected === 0) throw new Error('no client connected');
      const filler = pad > 0 ? `,"pad":"${'x'.repeat(pad)}"` : '';
      const body = (s: number) =>
        `{"appId":"${appId}","eventTopics":["${topic}"],"data":{"s":${s},"t":${nowUs()},"type":"payment","status":"success","orderId":"order-${s}","amount":99.99${filler}}}`;
      let httpErrors = 0;
      const postOne = async (s: number) => {
        try {
          const r = await poster.post('/notify', body(s));
          if (r.status !== 202) httpErrors++;
        } catch {
          httpErrors++;
        }
      };
      // Warm-up (not measured): lets the JIT settle. Its sequence numbers are negative and
      // increasing, so order is checked throughout.
      for (let k = 0; k < warm; k++) {
        await postOne(k - warm);
        await sleep(rate > 0 ? 1000 / rate : 5);
      }
      await waitFor(() => warmReceived >= ramp.connected * warm, 15_000);
      await sleep(200);
      const expected = ramp.connected * m;

      // The server's own background work (heartbeats, timers, pollers) with the clients connected
      // and nothing published: it is in every delivery figure below, so it is shown next to them.
      // Its event-loop delay then is the floor the machine itself sets (timers fire late when the
      // process waits for a CPU), shown next to the delay under load.
      await server.loopP99Ms(); // resets Herald's histogram
      const idle0 = server.cpuMicros();
      const idleT0 = nowUs();
      await sleep(num(args, 'idle', 3) * 1000);
      const idleCpuPct = ((server.cpuMicros() - idle0) / (nowUs() - idleT0)) * 100;
      const idleLoopP99 = await server.loopP99Ms(); // and resets it again
      const others = othersMeter(server.pid);
      const client0 = process.cpuUsage();
      const clientLoop = monitorEventLoopDelay({ resolution: 5 });
      clientLoop.enable();
      const split0 = cpuSplitMicros(server.pid);
      const writes0 = writeSyscalls(server.pid);
      const cpu0 = server.cpuMicros();
      const t0 = nowUs();
      const deadline = Date.now() + num(args, 'timeout', 240) * 1000;
      const pending = new Set<Promise<void>>();
      for (let s = 0; s < m && Date.now() < deadline; s++) {
        if (rate > 0) {
          const due = t0 + (s * 1e6) / rate;
          const wait = (due - nowUs()) / 1000;
          if (wait > 1) await sleep(wait);
        } else while (pending.size >= inflight) await Promise.race(pending);
        const p = postOne(s).finally(() => pending.delete(p));
        pending.add(p);
      }
      await Promise.all(pending);
      const tPosted = nowUs();
      await waitFor(() => received >= expected, num(args, 'drain', 15) * 1000, 10);
      const cpu1 = server.cpuMicros();
      const split1 = cpuSplitMicros(server.pid);
      const writes1 = writeSyscalls(server.pid);
      clientLoop.disable();
      const client1 = process.cpuUsage(client0);
      const othersPct = others.end();
      const loopP99 = await server.loopP99Ms();
      const windowS = (Math.max(lastRecvUs, tPosted) - t0) / 1e6;
      const p = percentiles(lat.values(), lat.n, [50, 99]);
      return {
        clients: ramp.connected,
        connectFailed: ramp.failed,
        posted: m,
        httpErrors,
        expected,
        received,
        lost: expected - received,
        duplicates,
        // With several publisher connections (--rate 0) the publish order itself is not defined.
        outOfOrder: rate > 0 ? outOfOrder : null,
        cpuUsPerDelivery: round((cpu1 - cpu0) / Math.max(1, received), 3),
        clientCpuUsPerDelivery: round((client1.user + client1.system) / Math.max(1, received), 3),
        cpuPct: round(((cpu1 - cpu0) / 1e6 / windowS) * 100, 1),
        idleCpuPct: round(idleCpuPct, 1),
        cpuUsPerDeliveryNetOfIdle: round(
          (cpu1 - cpu0 - (idleCpuPct / 100) * windowS * 1e6) / Math.max(1, received),
          3,
        ),
        deliveriesPerSec: Math.round(received / windowS),
        p50Ms: round(p.p50 as number, 2),
        p99Ms: round(p.p99 as number, 2),
        maxMs: round(p.max as number, 2),
        windowS: round(windowS, 2),
        othersPct,
        loopP99Ms: loopP99 === null ? null : round(loopP99, 2),
        idleLoopP99Ms: idleLoopP99 === null ? null : round(idleLoopP99, 2),
        systemCpuShare: round(
          (split1.system - split0.system) /
            Math.max(1, split1.user - split0.user + split1.system - split0.system),
          2,
        ),
        // Also the HTTP responses to the posts (one per notification) and anything else the server writes.
        writesPerDelivery: round((writes1 - writes0) / Math.max(1, received), 3),
        // Less the 5 ms sampling interval that every sample includes (see loopDelayMs in src/metrics).
        clientLoopP99Ms: round(Math.max(0, clientLoop.percentile(99) / 1e6 - 5), 2),
      };
    } finally {
      await poster.close();
      await gen.closeAll();
    }
  });
  return { scenario: 'fanout', params, figures, results };
}
