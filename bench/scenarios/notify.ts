/**
 * notify: U clients connected, each its own user; targeted notifications (each to one user) posted
 * as fast as `--inflight` concurrent keep-alive requests allow (bench/lib/http.ts Poster), first one per
 * `POST /notify` for `--seconds`, then `--batch` per `POST /notify/batch` for `--seconds`.
 * `--phases single,batch` chooses the phases (e.g. `--phases single` with `--cpu-prof`).
 * Figures: accepted/s, delivered/s, p99 of the HTTP response and of publish→receive, server CPU.
 */

import { nowUs, Poster, readStamp, Samples } from '../lib/http.js';
import { cpuSplitMicros, othersMeter } from '../lib/proc.js';
import { eachServer, log, type ScenarioResult } from '../lib/scenario.js';
import {
  type Args,
  type Figure,
  list,
  num,
  percentiles,
  round,
  type ServerFigures,
  sleep,
  str,
} from '../lib/util.js';
import { LoadGen } from '../loadgen.js';

export const figures: Figure[] = [
  { key: 'single.acceptedPerSec', label: 'single: accepted / s' },
  { key: 'single.deliveredPerSec', label: 'single: delivered / s' },
  { key: 'single.httpP99Ms', label: 'single: p99 HTTP response ms', lowerIsBetter: true },
  { key: 'single.p99Ms', label: 'single: p99 publish→receive ms', lowerIsBetter: true },
  { key: 'single.cpuUsPerNotification', label: 'single: server CPU µs / notification', lowerIsBetter: true },
  { key: 'single.lost', label: 'single: lost', lowerIsBetter: true },
  { key: 'single.systemCpuShare', label: 'single: share of server CPU in the kernel' },
  { key: 'single.loopP99Ms', label: 'single: event-loop p99 delay ms', heraldOnly: true },
  { key: 'batch.acceptedPerSec', label: 'batch: accepted / s' },
  { key: 'batch.deliveredPerSec', label: 'batch: delivered / s' },
  { key: 'batch.httpP99Ms', label: 'batch: p99 HTTP response ms (one batch)', lowerIsBetter: true },
  { key: 'batch.p99Ms', label: 'batch: p99 publish→receive ms', lowerIsBetter: true },
  { key: 'batch.cpuUsPerNotification', label: 'batch: server CPU µs / notification', lowerIsBetter: true },
  { key: 'batch.lost', label: 'batch: lost', lowerIsBetter: true },
  { key: 'batch.loopP99Ms', label: 'batch: event-loop p99 delay ms', heraldOnly: true },
  { key: 'othersPct', label: 'other processes on the machine, % of a core', lowerIsBetter: true },
];

export async function run(args: Args): Promise<ScenarioResult> {
  const users = num(args, 'users', 10_000);
  const seconds = num(args, 'seconds', 10);
  const inflight = num(args, 'inflight', 64);
  const batch = num(args, 'batch', 1000);
  const batchInflight = num(args, 'batch-inflight', 4);
  const appId = str(args, 'app', 'bench');
  const phases = list(args, 'phases', ['single', 'batch']);
  const params = { users, seconds, inflight, batch, batchInflight };

  const results = await eachServer(args, async (server) => {
    const lat = new Samples();
    const stamp = { s: 0, t: 0 };
    let received = 0;
    const gen = new LoadGen({
      url: server.url,
      appId,
      onEvent: (_c, msg) => {
        if (!readStamp(msg, stamp)) return;
        received++;
        lat.push((nowUs() - stamp.t) / 1000);
      },
    });
    const poster = new Poster(server.url, Math.min(inflight, 64));
    const out: ServerFigures = {};
    let seq = 0;
    const item = () => {
      const s = seq++;
      return `{"appId":"${appId}","users":["u${s % users}"],"data":{"s":${s},"t":${nowUs()},"type":"payment","status":"success","orderId":"order-${s}"}}`;
    };
    /** Keeps `conc` requests in flight for `ms`; `one()` returns the notifications it accepted. */
    const drive = async (prefix: string, conc: number, one: () => Promise<number>) => {
      lat.reset();
      received = 0;
      const httpLat = new Samples();
      await server.loopP99Ms();
      const others = othersMeter(server.pid);
      const cpu0 = server.cpuMicros();
      const split0 = cpuSplitMicros(server.pid);
      const t0 = performance.now();
      const end = t0 + seconds * 1000;
      let accepted = 0;
      let errors = 0;
      const worker = async () => {
        while (performance.now() < end) {
          const a = performance.now();
          try {
            const k = await one(); // not `accepted += await ...`: that reads `accepted` before the await
            accepted += k;
          } catch {
            errors++;
            await sleep(10);
          }
          httpLat.push(performance.now() - a);
        }
      };
      await Promise.all(Array.from({ length: conc }, worker));
      const postedS = (performance.now() - t0) / 1000;
      const tail = Date.now() + 10_000;
      while (received < accepted && Date.now() < tail) await sleep(10);
      const windowS = (performance.now() - t0) / 1000;
      const cpu = server.cpuMicros() - cpu0;
      const split1 = cpuSplitMicros(server.pid);
      const loop = await server.loopP99Ms();
      const hp = percentiles(httpLat.values(), httpLat.n, [50, 99]);
      const dp = percentiles(lat.values(), lat.n, [50, 99]);
      out[`${prefix}.accepted`] = accepted;
      out[`${prefix}.httpErrors`] = errors;
      out[`${prefix}.acceptedPerSec`] = Math.round(accepted / postedS);
      out[`${prefix}.deliveredPerSec`] = Math.round(received / windowS);
      out[`${prefix}.lost`] = accepted - received;
      out[`${prefix}.httpP99Ms`] = round(hp.p99 as number, 2);
      out[`${prefix}.p50Ms`] = round(dp.p50 as number, 2);
      out[`${prefix}.p99Ms`] = round(dp.p99 as number, 2);
      out[`${prefix}.cpuUsPerNotification`] = round(cpu / Math.max(1, accepted), 2);
      out[`${prefix}.systemCpuShare`] = round(
        (split1.system - split0.system) /
          Math.max(1, split1.user - split0.user + split1.system - split0.system),
        2,
      );
      out[`${prefix}.cpuPct`] = round((cpu / 1e6 / windowS) * 100, 1);
      out[`${prefix}.loopP99Ms`] = loop === null ? null : round(loop, 2);
      out.othersPct = Math.max(Number(out.othersPct ?? 0), others.end());
      log(`${server.kind} ${prefix}: ${accepted} accepted, ${received} received in ${round(windowS, 1)} s`);
    };
    try {
      const ramp = await gen.connect(users, (i) => ({ clientId: `u${i}` }), {
        rate: num(args, 'connect-rate', 3000),
        concurrency: num(args, 'connect-concurrency', 200),
      });
      log(
        `${server.kind}: ${ramp.connected} connected in ${round(ramp.seconds, 1)} s, ${ramp.failed} failed`,
      );
      // Warm-up, not measured.
      await Promise.all(Array.from({ length: 200 }, () => poster.post('/notify', item())));
      await sleep(300);
      if (phases.includes('single'))
        await drive('single', inflight, async () => {
          const r = await poster.post('/notify', item());
          if (r.status !== 202) throw new Error(`status ${r.status}`);
          return 1;
        });
      if (phases.includes('batch'))
        await drive('batch', batchInflight, async () => {
          const items = Array.from({ length: batch }, item);
          const r = await poster.post('/notify/batch', `{"notifications":[${items.join(',')}]}`);
          if (r.status !== 200) throw new Error(`status ${r.status}`);
          return (JSON.parse(r.text) as { accepted: number }).accepted;
        });
      return out;
    } finally {
      await poster.close();
      await gen.closeAll();
    }
  });
  return { scenario: 'notify', params, figures, results };
}
