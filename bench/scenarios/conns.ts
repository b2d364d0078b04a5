/**
 * conns: idle memory per connected and subscribed client (each client has its own user id and one
 * topic of its own) as the server's RSS delta / N, each RSS the median of several readings, at each of
 * `--sizes` (clients are added to reach each size in turn); and the connect rate (connect + namespace
 * connect + subscribe ack, at up to `--connect-rate` per second with `--connect-concurrency` in flight).
 */

import { fdCount } from '../lib/proc.js';
import { eachServer, log, type ScenarioResult } from '../lib/scenario.js';
import {
  type Args,
  type Figure,
  list,
  median,
  num,
  round,
  type ServerFigures,
  sleep,
  str,
} from '../lib/util.js';
import { LoadGen } from '../loadgen.js';

async function rssMedian(read: () => number, readings: number, everyMs: number): Promise<number> {
  const values: number[] = [];
  for (let i = 0; i < readings; i++) {
    if (i > 0) await sleep(everyMs);
    values.push(read());
  }
  return median(values);
}

export async function run(args: Args): Promise<ScenarioResult> {
  const sizes = list(args, 'sizes', ['10000', '19000']).map(Number);
  const readings = num(args, 'readings', 5);
  const every = num(args, 'every', 2000);
  // Long enough for V8's memory reducer to collect the garbage of the connect ramp (it starts a
  // major GC some seconds after allocation slows down), so the delta is live memory, not garbage.
  const settle = num(args, 'settle', 12_000);
  const appId = str(args, 'app', 'bench');
  const figures: Figure[] = [];
  for (const size of sizes) {
    figures.push({ key: `kbPerConn@${size}`, label: `RSS KB / connection at ${size}`, lowerIsBetter: true });
  }
  for (const size of sizes) {
    figures.push({
      key: `kbPerConnLessYoung@${size}`,
      label: `… less the growth of V8's young generation, at ${size}`,
      lowerIsBetter: true,
      heraldOnly: true,
    });
  }
  figures.push({
    key: 'youngMB',
    label:
      'V8 young generation committed at the largest size, MB (a fixed cost, up to 2 × --max-semi-space-size)',
    heraldOnly: true,
  });
  if (sizes.length > 1) {
    figures.push({
      key: 'kbPerConnMarginal',
      label: `RSS KB per connection added between ${sizes.at(-2)} and ${sizes.at(-1)}`,
      lowerIsBetter: true,
    });
  }
  figures.push(
    { key: 'connectRate', label: 'connects / s (connect + subscribe)' },
    { key: 'cpuUsPerConnect', label: 'server CPU µs / connect', lowerIsBetter: true },
    { key: 'baseRssMB', label: 'RSS before connecting MB', lowerIsBetter: true },
    { key: 'failed', label: 'failed connects', lowerIsBetter: true },
    { key: 'loopP99Ms', label: 'event-loop p99 delay ms (ramp)', heraldOnly: true },
  );
  const params = { sizes: sizes.join(','), readings, every, settle, gc: args.gc === true };

  const results = await eachServer(args, async (server) => {
    const gen = new LoadGen({ url: server.url, appId });
    const out: ServerFigures = {};
    try {
      const gc = args.gc === true;
      await sleep(settle);
      if (gc) await server.collectGarbage();
      const base = await rssMedian(() => server.rssBytes(), readings, every);
      out.baseRssMB = round(base / 2 ** 20, 1);
      const youngBase = await server.youngBytes();
      let lastRss = base;
      let loopP99: number | null = null;
      let lastTotal = 0;
      await server.loopP99Ms();
      let total = 0;
      let seconds = 0;
      let failed = 0;
      let cpu = 0;
      for (const size of sizes) {
        const add = size - total;
        if (add <= 0) continue;
        const c0 = server.cpuMicros();
        const r = await gen.connect(
          add,
          (i) => ({ clientId: `c${total + i}`, topics: [`order:${total + i}:status`] }),
          {
            rate: num(args, 'connect-rate', 5000),
            concurrency: num(args, 'connect-concurrency', 300),
          },
        );
        cpu += server.cpuMicros() - c0;
        // The ramp's loop delay, read before anything else scrapes /metrics (a scrape resets it).
        const rampP99 = await server.loopP99Ms();
        if (rampP99 !== null) loopP99 = Math.max(loopP99 ?? 0, rampP99);
        seconds += r.seconds;
        failed += r.failed;
        total += r.connected;
        log(
          `${server.kind}: ${total} connected (${r.connected} in ${round(r.seconds, 1)} s, ${r.failed} failed ${JSON.stringify(r.errors)}), server fds ${fdCount(server.pid)}`,
        );
        await sleep(settle);
        if (gc) await server.collectGarbage();
        const rss = await rssMedian(() => server.rssBytes(), readings, every);
        out[`kbPerConn@${size}`] = total >= size * 0.99 ? round((rss - base) / total / 1024, 2) : null;
        out[`rssMB@${size}`] = round(rss / 2 ** 20, 1);
        out[`connected@${size}`] = total;
        // Herald runs with a 64 MiB semi-space: a connect ramp grows the young generation to up to
        // 128 MiB, which V8 keeps committed while idle. A fixed cost, not one per connection.
        const young = await server.youngBytes();
        if (young !== null && youngBase !== null) {
          out.youngMB = round(young / 2 ** 20, 1);
          out[`kbPerConnLessYoung@${size}`] =
            total >= size * 0.99 ? round((rss - base - (young - youngBase)) / total / 1024, 2) : null;
        }
        if (lastTotal > 0 && total > lastTotal)
          out.kbPerConnMarginal = round((rss - lastRss) / (total - lastTotal) / 1024, 2);
        lastRss = rss;
        lastTotal = total;
      }
      out.loopP99Ms = loopP99 === null ? null : round(loopP99, 2);
      out.connectRate = Math.round(total / seconds);
      out.cpuUsPerConnect = round(cpu / Math.max(1, total), 1);
      out.failed = failed;
      return out;
    } finally {
      await gen.closeAll();
    }
  });
  return { scenario: 'conns', params, figures, results };
}
