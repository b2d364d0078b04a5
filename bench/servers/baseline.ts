/**
 * `baseline`: the notification server a team would write by hand with plain Socket.IO rooms — one
 * namespace per app, identity read like Herald (header, auth, query), a room per user and per topic,
 * and `POST /notify` that emits to the rooms. Count watchers get the count at most once per 100 ms.
 */
import { createServer } from 'node:http';
import { Server, type Socket } from 'socket.io';

const id = (s: Socket, h: string, k: string): string | undefined =>
  (s.handshake.headers[h] as string | undefined) ??
  (s.handshake.auth?.[k] as string | undefined) ??
  (s.handshake.query[k] as string | undefined);
const list = (v: unknown): string[] => (Array.isArray(v) ? v : [v]) as string[];
const http = createServer();
const io = new Server(http, { serveClient: false, perMessageDeflate: false, httpCompression: false });
const clients = new Map<string, Map<string, number>>(); // `${app} ${topic}` -> clientId -> sockets
const pending = new Map<string, NodeJS.Timeout>();
const countChanged = (app: string, topic: string) => {
  const key = `${app} ${topic}`;
  if (pending.has(key)) return;
  const flush = () => {
    pending.delete(key);
    sendCount(app, topic);
  };
  pending.set(key, setTimeout(flush, 100));
};
const sendCount = (app: string, topic: string, to: string | Socket = `c:${topic}`) => {
  const m = clients.get(`${app} ${topic}`);
  const c = {
    type: 'count',
    topic,
    count: m?.size ?? 0,
    connections: m ? [...m.values()].reduce((a, b) => a + b, 0) : 0,
  };
  (typeof to === 'string' ? io.of(`/${app}`).to(to) : to).emit('dataUpdate', c, { ts: Date.now(), topic });
};
const track = (app: string, topic: string, client: string, d: number) => {
  const key = `${app} ${topic}`;
  const m = clients.get(key) ?? clients.set(key, new Map()).get(key)!;
  const n = (m.get(client) ?? 0) + d;
  n > 0 ? m.set(client, n) : m.delete(client);
  if (m.size === 0) clients.delete(key);
  countChanged(app, topic);
};
io.of(/^\/[\w.-]{1,64}$/).on('connection', (socket) => {
  const app = socket.nsp.name.slice(1);
  const client = id(socket, 'x-client-id', 'clientId') ?? `anon:${socket.id}`;
  const device = id(socket, 'x-device-id', 'deviceId');
  socket.join([`u:${client}`, ...(device ? [`d:${device}`] : [])]);
  const topics = new Set<string>();
  socket.on('subscribe', (t: unknown, ack?: (r: unknown) => void) => {
    for (const x of list(t)) {
      if (topics.has(x)) continue;
      topics.add(x);
      socket.join(`t:${x}`);
      track(app, x, client, 1);
    }
    ack?.({ ok: true, topics: list(t) });
  });
  socket.on('unsubscribe', (t: unknown, ack?: (r: unknown) => void) => {
    for (const x of list(t)) {
      if (!topics.delete(x)) continue;
      socket.leave(`t:${x}`);
      track(app, x, client, -1);
    }
    ack?.({ ok: true, topics: list(t) });
  });
  socket.on('subscribeCount', (t: unknown, ack?: (r: unknown) => void) => {
    for (const x of list(t)) {
      socket.join(`c:${x}`);
      sendCount(app, x, socket);
    }
    ack?.({ ok: true, topics: list(t) });
  });
  socket.on('disconnect', () => {
    for (const x of topics) track(app, x, client, -1);
  });
});
let seq = 0;
const notify = (n: {
  appId: string;
  users?: string[];
  devices?: string[];
  eventTopics?: string[];
  data: unknown;
}) => {
  const rooms = [
    ...(n.users ?? []).map((u) => `u:${u}`),
    ...(n.devices ?? []).map((d) => `d:${d}`),
    ...(n.eventTopics ?? []).map((t) => `t:${t}`),
  ];
  const meta = { id: `${process.pid}-${++seq}`, ts: Date.now() };
  io.of(`/${n.appId}`).to(rooms).emit('dataUpdate', n.data, meta);
  return meta;
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
      const results = json.notifications.map((n: Parameters<typeof notify>[0]) => ({
        ok: true,
        ...notify(n),
      }));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ accepted: results.length, rejected: 0, results }));
    } else res.writeHead(404).end();
  });
});
http.listen(Number(process.env.PORT ?? 3100), process.env.HOST ?? '127.0.0.1');
