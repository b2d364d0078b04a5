/**
 * A server's V8 inspector, driven from the bench process: the bench starts the server with
 * `--inspect=127.0.0.1:<port>` and asks V8 for a full, memory-reducing garbage collection
 * (`HeapProfiler.collectGarbage`) before it reads the RSS of an idle server, so that the figure is the
 * memory the server keeps, not the garbage a connect ramp left for a collection that has not come yet.
 * Loopback only.
 */
import WebSocket from 'ws';
import { sleep } from './util.js';

/** Asks the V8 of the process listening for the inspector on `port` to collect all garbage. */
export async function collectGarbage(port: number): Promise<void> {
  let url: string | undefined;
  for (let i = 0; i < 50 && !url; i++) {
    try {
      const list = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()) as {
        webSocketDebuggerUrl?: string;
      }[];
      url = list[0]?.webSocketDebuggerUrl;
    } catch {
      await sleep(100);
    }
  }
  if (!url) throw new Error(`no inspector on 127.0.0.1:${port}`);
  const ws = new WebSocket(url);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('collectGarbage: no answer in 60 s')), 60_000);
      ws.on('message', (raw) => {
        const msg = JSON.parse(String(raw)) as { id?: number; error?: { message: string } };
        if (msg.id !== 1) return;
        clearTimeout(timer);
        if (msg.error) reject(new Error(`collectGarbage: ${msg.error.message}`));
        else resolve();
      });
      ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' }));
    });
  } finally {
    ws.close();
  }
}
