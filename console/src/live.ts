/**
 * The console's realtime channel: one socket.io-client connection to the node's `/admin/console`
 * namespace, authenticated with the admin token. Pages watch feeds (`stats`, `topics`, `payments`,
 * `machines`, `webhooks`) while they are shown; the server pushes them, nothing polls.
 */
import { useEffect, useState } from 'preact/hooks';
import { io, type Socket } from 'socket.io-client';
import type {
  FeedName,
  MachineFeedItem,
  PaymentFeedItem,
  StatsPoint,
  StatsSnapshot,
  TopicRow,
  WebhookFeedItem,
} from '../../src/console/types.js';
import { getToken } from './api.js';

export type LiveStatus = 'connecting' | 'live' | 'offline' | 'unauthorized';

interface Events {
  stats: StatsSnapshot;
  history: StatsPoint[];
  topics: TopicRow[];
  payments: PaymentFeedItem[];
  machines: MachineFeedItem[];
  webhooks: WebhookFeedItem[];
}

let socket: Socket | undefined;
let status: LiveStatus = 'connecting';
const statusListeners = new Set<(s: LiveStatus) => void>();
const watchers = new Map<FeedName, number>();

function setStatus(s: LiveStatus): void {
  status = s;
  for (const l of statusListeners) l(s);
}

function ensure(): Socket {
  if (socket) return socket;
  const s = io('/admin/console', {
    auth: (cb) => cb({ token: getToken() ?? '' }),
    transports: ['websocket', 'polling'],
    reconnectionDelayMax: 5000,
  });
  s.on('connect', () => {
    setStatus('live');
    const feeds = [...watchers.keys()];
    if (feeds.length) s.emit('watch', feeds);
  });
  s.on('disconnect', () => setStatus('offline'));
  s.on('connect_error', (err: Error & { data?: { code?: string } }) => {
    if (err.data?.code === 'unauthorized') {
      setStatus('unauthorized');
      window.dispatchEvent(new Event('herald:unauthorized'));
    } else setStatus('offline');
  });
  socket = s;
  return s;
}

/** Drops the connection (sign-out, new token): the next watcher reconnects with the current token. */
export function resetLive(): void {
  socket?.close();
  socket = undefined;
  setStatus('connecting');
}

function watch(feed: FeedName): () => void {
  const s = ensure();
  const n = watchers.get(feed) ?? 0;
  watchers.set(feed, n + 1);
  if (n === 0 && s.connected) s.emit('watch', [feed]);
  return () => {
    const left = (watchers.get(feed) ?? 1) - 1;
    if (left > 0) watchers.set(feed, left);
    else {
      watchers.delete(feed);
      if (s.connected) s.emit('unwatch', [feed]);
    }
  };
}

/** Calls `handler` with each push of `event` while the component is mounted (watching `feed`). */
export function useLive<E extends keyof Events>(
  feed: FeedName,
  event: E,
  handler: (data: Events[E]) => void,
  deps: unknown[] = [],
): void {
  useEffect(() => {
    const s = ensure();
    const on = (data: Events[E]) => handler(data);
    s.on(event as string, on as (...args: unknown[]) => void);
    const stop = watch(feed);
    return () => {
      s.off(event as string, on as (...args: unknown[]) => void);
      stop();
    };
  }, deps);
}

/** Watches several events of one feed's family without handlers of its own (e.g. `history` + `stats`). */
export function useLiveStatus(): LiveStatus {
  const [s, set] = useState<LiveStatus>(status);
  useEffect(() => {
    statusListeners.add(set);
    set(status);
    return () => {
      statusListeners.delete(set);
    };
  }, []);
  return s;
}
