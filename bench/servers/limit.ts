/**
 * `limit`: a raw `ws` server that speaks just enough Engine.IO v4 / Socket.IO v4 for the load
 * generator (open packet, namespace connect, subscribe/subscribeCount acks, pong) and, on
 * `POST /notify`, encodes the event into ONE WebSocket frame and writes that buffer to the TCP socket
 * of each recipient: one `socket.write` per delivery, nothing else. It is the floor for "one write
 * per delivery". No heartbeat, no validation, no slow-client protection.
 */
import { createServer } from 'node:http';
import type { Socket } from 'node:net';
import * as wsLib from 'ws';
import { type WebSocket, WebSocketServer } from 'ws';

interface Conn {
  ws: WebSocket;
  raw: Socket;
  app: string;
  client: string;
  topics: Set<string>;
}
type Index = Map<string, Set<Conn>>;
const users: Index = new Map();
const topics: Index = new Map();
const watchers: Index = new Map();
const tClients = new Map<string, Map<string, number>>();
const add = (m: Index, k: string, c: Conn) => (m.get(k) ?? m.set(k, new Set()).get(k)!).add(c);
const del = (m: Index, k: string, c: Conn) => {
  const s = m.get(k);
  if (s?.delete(c) && s.size === 0) m.delete(k);
};

const frameOf = (text: string): Buffer => {
  const data = Buffer.from(text);
  const parts = (wsLib as unknown as { Sender: { frame(d: Buffer, o: object): Buffer[] } }).Sender.frame(
    data,
    {
      readOnly: false,
      mask: false,
      rsv1: false,
      opcode: 1,
      fin: true,
    },
  );
  return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
};
const writeAll = (conns: Iterable<Conn> | undefined, frame: Buffer): number => {
  let n = 0;
  if (!conns) return 0;
  for (const c of conns) {
    if (c.ws.readyState !== 1) continue;
    c.raw.write(frame);
    n++;
  }
  return n;
};

const countFrame = (app: string, topic: string) => {
  const m = tClients.get(`${app} ${topic}`);
  let connections = 0;
  for (const v of m?.values() ?? []) connections += v;
  const c = { type: 'count', topic, count: m?.size ?? 0, connections };
  return frameOf(`42/${app},${JSON.stringify(['dataUpdate', c, { ts: Date.now(), topic }])}`);
};
const pending = new Map<string, NodeJS.Timeout>();
const track = (c: Conn, topic: string, d: number) => {
  const key = `${c.app} ${topic}`;
  const m = tClients.get(key) ?? tClients.set(key, new Map()).get(key)!;
  const n = (m.get(c.client) ?? 0) + d;
  n > 0 ? m.set(c.client, n) : m.delete(c.client);
  if (m.size === 0) tClients.delete(key);
  if (!pending.has(key))
    pending.set(
      key,
      setTimeout(() => {
        pending.delete(key);
        writeAll(watchers.get(key), countFrame(c.app, topic));
      }, 100),
    );
};

const http = createServer();
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, skipUTF8Validation: true });
http.on('upgrade', (req, socket, head) =>
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws)),
);
let sid = 0;
wss.on('connection', (ws: WebSocket) => {
  const raw = (ws as unknown as { _socket: Socket })._socket;
  let conn: Conn | undefined;
  ws.send(`0{"sid":"s${++sid}","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`);
  ws.on('message', (buf: Buffer) => {
    const s = buf.toString();
    if (s.startsWith('40/')) {
      const comma = s.indexOf(',');
      const app = s.slice(3, comma);
      const auth = JSON.parse(s.slice(comma + 1) || '{}') as { clientId?: string };
      conn = { ws, raw, app, client: auth.clientId ?? `anon:${sid}`, topics: new Set() };
      add(users, `${app} ${conn.client}`, conn);
      ws.send(`40/${app},{"sid":"n${sid}"}`);
    } else if (s.startsWith('42/') && conn) {
      const m = /^42\/[^,]*,(\d*)(.*)$/s.exec(s);
      const [event, arg] = JSON.parse(m?.[2] ?? '[]') as [string, string | string[]];
      const list = Array.isArray(arg) ? arg : [arg];
      for (const t of list) {
        const key = `${conn.app} ${t}`;
        if (event === 'subscribe' && !conn.topics.has(t)) {
          conn.topics.add(t);
          add(topics, key, conn);
          track(conn, t, 1);
        } else if (event === 'subscribeCount') {
          add(watchers, key, conn);
          raw.write(countFrame(conn.app, t));
        }
      }
      if (m?.[1]) ws.send(`43/${conn.app},${m[1]}[${JSON.stringify({ ok: true, topics: list })}]`);
    }
  });
  ws.on('close', () => {
    if (!conn) return;
    del(users, `${conn.app} ${conn.client}`, conn);
    for (const t of conn.topics) {
      del(topics, `${conn.app} ${t}`, conn);
      track(conn, t, -1);
    }
    for (const [k, s] of watchers) if (s.has(conn)) del(watchers, k, conn);
  });
});

let seq = 0;
type Input = { appId: string; users?: string[]; eventTopics?: string[]; data: unknown };
const notify = (n: Input) => {
  const meta = { id: `${process.pid}-${++seq}`, ts: Date.now() };
  const frame = frameOf(`42/${n.appId},["dataUpdate",${JSON.stringify(n.data)},${JSON.stringify(meta)}]`);
  let delivered = 0;
  // Like Herald, a socket matched twice gets one copy; the common single-target case skips the Set.
  const sets = [
    ...(n.users ?? []).map((u) => users.get(`${n.appId} ${u}`)),
    ...(n.eventTopics ?? []).map((t) => topics.get(`${n.appId} ${t}`)),
  ].filter((s): s is Set<Conn> => s !== undefined);
  if (sets.length === 1) delivered = writeAll(sets[0], frame);
  else if (sets.length > 1) delivered = writeAll(new Set(sets.flatMap((s) => [...s])), frame);
  return { ...meta, delivered };
};
http.on('request', (req, res) => {
  if (req.url === '/healthz') return res.end('ok');
  let body = '';
  req.on('data', (c: Buffer) => (body += c));
  req.on('end', () => {
    const json = JSON.parse(body || '{}');
    if (req.url === '/notify')
      res.writeHead(202, { 'content-type': 'application/json' }).end(JSON.stringify(notify(json)));
    else if (req.url === '/notify/batch') {
      const results = (json.notifications as Input[]).map((n) => ({ ok: true, ...notify(n) }));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ accepted: results.length, rejected: 0, results }));
    } else res.writeHead(404).end();
  });
});
http.listen(Number(process.env.PORT ?? 3101), process.env.HOST ?? '127.0.0.1');
