/**
 * counts: W clients watch the count of one topic while C other clients join (connect + subscribe)
 * and leave (disconnect) after `--hold` ms, at `--join-rate` per second. Figures: count updates
 * received by the watchers, server CPU, and whether every watcher's last count is the true final
 * count (0).
 */

import { othersMeter } from '../lib/proc.js';
import { eachServer, log, type ScenarioResult } from '../lib/scenario.js';
import { type Args, type Figure, num, round, sleep, str, waitFor } from '../lib/util.js';
import { LoadGen } from '../loadgen.js';

export const figures: Figure[] = [
  { key: 'updates', label: 'count updates received by watchers' },
  { key: 'updatesPerWatcherPerSec', label: 'updates / watcher / s' },
  { key: 'cpuMs', label: 'server CPU ms for the churn', lowerIsBetter: true },
  { key: 'cpuUsPerChurn', label: 'server CPU µs / client that joined and left', lowerIsBetter: true },
  { key: 'wrongFinal', label: 'watchers whose last count is wrong', lowerIsBetter: true },
  { key: 'othersPct', label: 'other processes on the machine, % of a core', lowerIsBetter: true },
  { key: 'loopP99Ms', label: 'event-loop p99 delay ms', heraldOnly: true },
];

const COUNT = Buffer.from('"count":');

export async function run(args: Args): Promise<ScenarioResult> {
  const watchers = num(args, 'watchers', 1000);
  const churn = num(args, 'churn', 5000);
  const joinRate = num(args, 'join-rate', 500);
  const hold = num(args, 'hold', 1000);
  const appId = str(args, 'app', 'bench');
  const topic = 'live:viewers';
  const params = { watchers, churn, joinRate, hold };

  const results = await eachServer(args, async (server) => {
    let updates = 0;
    const lastCount = new Int32Array(watchers).fill(-1);
    const gen = new LoadGen({
      url: server.url,
      appId,
      onEvent: (c, msg) => {
        if (c.index >= watchers) return;
        let i = msg.indexOf(COUNT);
        if (i < 0) return;
        updates++;
        i += COUNT.length;
        let v = 0;
        for (let ch = msg[i]; ch !== undefined && ch >= 0x30 && ch <= 0x39; ch = msg[++i])
          v = v * 10 + (ch - 0x30);
        lastCount[c.index] = v;
      },
    });
    try {
      const w = await gen.connect(watchers, (i) => ({ clientId: `w${i}`, watch: [topic] }), { rate: 2000 });
      log(`${server.kind}: ${w.connected} watchers`);
      await sleep(500);
      updates = 0;
      await server.loopP99Ms();
      const others = othersMeter(server.pid);
      const cpu0 = server.cpuMicros();
      const t0 = performance.now();
      let left = 0;
      const timers = new Set<NodeJS.Timeout>();
      const r = await gen.connect(churn, (i) => ({ clientId: `j${i}`, topics: [topic] }), {
        rate: joinRate,
        concurrency: 100,
        keep: false,
        onConnected: (c) => {
          const t = setTimeout(() => {
            timers.delete(t);
            c.close();
            left++;
          }, hold);
          timers.add(t);
        },
      });
      await waitFor(() => timers.size === 0, hold + 10_000);
      // Let the last coalesced update (COUNT_INTERVAL, 100 ms) reach every watcher.
      await waitFor(() => lastCount.every((v) => v === 0), 5000);
      await sleep(300);
      const seconds = (performance.now() - t0) / 1000;
      const cpu = server.cpuMicros() - cpu0;
      const loop = await server.loopP99Ms();
      let wrongFinal = 0;
      for (const v of lastCount) if (v !== 0) wrongFinal++;
      return {
        watchers: w.connected,
        joined: r.connected,
        left,
        joinFailed: r.failed,
        seconds: round(seconds, 1),
        updates,
        updatesPerWatcherPerSec: round(updates / Math.max(1, w.connected) / seconds, 2),
        cpuMs: Math.round(cpu / 1000),
        cpuUsPerChurn: round(cpu / Math.max(1, r.connected), 1),
        wrongFinal,
        othersPct: others.end(),
        loopP99Ms: loop === null ? null : round(loop, 2),
      };
    } finally {
      await gen.closeAll();
    }
  });
  return { scenario: 'counts', params, figures, results };
}
