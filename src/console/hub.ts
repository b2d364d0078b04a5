import type { Namespace, Server, Socket } from 'socket.io';
import { bearer, safeEqual } from '../auth/index.js';
import type { Logger } from '../logger.js';
import type { Router } from '../router/index.js';
import type { Queryable } from '../store/index.js';
import { MachineTail, paymentTail, webhookTail } from './feeds.js';
import { APPS_MODE_NEEDS_TOKEN } from './messages.js';
import type { NodeDirectory } from './nodes.js';
import { busiestTopics, type StatsSampler } from './stats.js';
import type { ConsoleServerEvents, FeedName, StatsSnapshot } from './types.js';

/**
 * The console's namespace. Its name is outside the app namespaces (`/<appId>` without a slash), so
 * it is a namespace of its own: the app gateway's handshake, router and events never see it, and no
 * app can reach it (Socket.IO would make any `/<appId>` a child of the gateway's app namespaces).
 */
export const CONSOLE_NAMESPACE = '/admin/console';

const FEEDS: readonly FeedName[] = ['stats', 'topics', 'payments', 'machines', 'webhooks'];
/** Feed rows sent to a console when it starts watching. */
const INITIAL_ROWS = 50;

export interface HubDeps {
  io: Server;
  adminToken: string | undefined;
  /** In apps mode the namespace is closed unless ADMIN_TOKEN is set. */
  accessMode: 'open' | 'apps';
  sampler: StatsSampler;
  /** The node list carried by each pushed snapshot. */
  nodes: NodeDirectory;
  router: Router;
  db: Queryable;
  logger: Logger;
  /** Tick period, 1 s. */
  intervalMs?: number;
}

type ConsoleSocket = Socket<Record<string, never>, ConsoleServerEvents>;

/** The admin token a console socket presents: `auth: { token }` (browsers) or an Authorization header. */
export function handshakeToken(socket: Socket): string | undefined {
  const auth = (socket.handshake.auth ?? {}) as Record<string, unknown>;
  if (typeof auth.token === 'string' && auth.token.length > 0) return auth.token;
  const header = socket.handshake.headers.authorization;
  return bearer(typeof header === 'string' ? header : undefined);
}

/**
 * The console's realtime channel: `/admin/console`, guarded by ADMIN_TOKEN when it is set. Every second
 * it samples the node and pushes the snapshot to consoles watching `stats`, the busiest topics to
 * those watching `topics` (every other second), and the new rows of the payment, machine and webhook
 * histories to those watching them. Work is done only for feeds someone watches.
 */
export class ConsoleHub {
  readonly nsp: Namespace<Record<string, never>, ConsoleServerEvents>;
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  private tickNo = 0;
  private readonly payments;
  private readonly webhooks;
  private readonly machines;
  /** Feeds whose table is missing or whose read failed: logged once until they work again. */
  private readonly failing = new Set<string>();

  constructor(private readonly deps: HubDeps) {
    this.payments = paymentTail(deps.db);
    this.webhooks = webhookTail(deps.db);
    this.machines = new MachineTail(deps.db);
    this.nsp = deps.io.of(CONSOLE_NAMESPACE) as unknown as Namespace<
      Record<string, never>,
      ConsoleServerEvents
    >;
    this.nsp.use((socket, next) => {
      const token = deps.adminToken;
      const refuse = (code: 'unauthorized' | 'forbidden', message: string) => {
        const err = new Error(message) as Error & { data: { code: string; message: string } };
        err.data = { code, message };
        next(err);
      };
      if (token === undefined) {
        if (deps.accessMode === 'apps') return refuse('forbidden', APPS_MODE_NEEDS_TOKEN);
        return next();
      }
      const given = handshakeToken(socket);
      if (given !== undefined && safeEqual(given, token)) return next();
      refuse('unauthorized', 'The console needs the admin token: auth: { token: ADMIN_TOKEN }.');
    });
    this.nsp.on('connection', (socket) => this.onConnection(socket as unknown as ConsoleSocket));
    this.timer = setInterval(() => this.tick(), deps.intervalMs ?? 1000);
    this.timer.unref();
  }

  /**
   * The current snapshot with the node list (read from Redis at most about once a second, however
   * many consoles ask): what the console and GET /admin/api/overview show.
   */
  async snapshot(snap?: StatsSnapshot): Promise<StatsSnapshot> {
    const { sampler } = this.deps;
    const base = snap ?? sampler.last ?? (await sampler.sample());
    return { ...base, nodes: await this.deps.nodes.list() };
  }

  /** Console sockets connected to this node. */
  count(): number {
    return this.nsp.sockets.size;
  }

  private watching(feed: FeedName): boolean {
    return (this.nsp.adapter.rooms.get(feed)?.size ?? 0) > 0;
  }

  private onConnection(socket: ConsoleSocket): void {
    const raw = socket as unknown as Socket;
    raw.on('watch', (feeds: unknown, ack?: unknown) => {
      const list = (Array.isArray(feeds) ? feeds : [feeds]).filter((f): f is FeedName =>
        FEEDS.includes(f as FeedName),
      );
      for (const feed of list) raw.join(feed);
      this.initial(socket, list).then(
        () => {
          if (typeof ack === 'function') ack({ ok: true, feeds: list });
        },
        (err: unknown) => {
          this.deps.logger.warn({ err }, 'console: initial feed failed');
          if (typeof ack === 'function') ack({ ok: true, feeds: list });
        },
      );
    });
    raw.on('unwatch', (feeds: unknown, ack?: unknown) => {
      const list = Array.isArray(feeds) ? feeds : [feeds];
      for (const feed of list) if (typeof feed === 'string') raw.leave(feed);
      if (typeof ack === 'function') ack({ ok: true });
    });
  }

  /** What a console gets when it starts watching: the current state, so it draws at once. */
  private async initial(socket: ConsoleSocket, feeds: FeedName[]): Promise<void> {
    for (const feed of feeds) {
      switch (feed) {
        case 'stats': {
          const { sampler } = this.deps;
          socket.emit('history', sampler.history());
          sampler.refreshHealth();
          socket.emit('stats', await this.snapshot());
          break;
        }
        case 'topics':
          socket.emit('topics', busiestTopics(this.deps.router));
          break;
        case 'payments':
          socket.emit('payments', await this.safe('payments', () => this.payments.recent(INITIAL_ROWS), []));
          break;
        case 'webhooks':
          socket.emit('webhooks', await this.safe('webhooks', () => this.webhooks.recent(INITIAL_ROWS), []));
          break;
        case 'machines':
          break;
      }
    }
  }

  private async safe<T>(feed: string, read: () => Promise<T>, fallback: T): Promise<T> {
    try {
      const v = await read();
      this.failing.delete(feed);
      return v;
    } catch (err) {
      if (!this.failing.has(feed)) {
        this.failing.add(feed);
        this.deps.logger.warn({ err, feed }, 'console: reading a feed failed; it stays empty until it works');
      }
      return fallback;
    }
  }

  private tick(): void {
    if (this.ticking) return;
    this.ticking = true;
    this.tickNo++;
    this.runTick().finally(() => {
      this.ticking = false;
    });
  }

  private async runTick(): Promise<void> {
    const { sampler } = this.deps;
    const consoles = this.count() > 0;
    try {
      // In a cluster the other nodes' consoles show this node's health (from its heartbeat info).
      if (consoles || (this.deps.nodes.mode === 'cluster' && this.tickNo % 2 === 1)) sampler.refreshHealth();
      const snap = await sampler.sample();
      if (this.watching('stats')) this.nsp.to('stats').emit('stats', await this.snapshot(snap));
    } catch (err) {
      this.deps.logger.warn({ err }, 'console: stats sample failed');
    }
    if (!consoles) return;
    if (this.watching('topics') && this.tickNo % 2 === 0) {
      this.nsp.to('topics').emit('topics', busiestTopics(this.deps.router));
    }
    if (this.watching('payments')) {
      const rows = await this.safe('payments', () => this.payments.poll(), []);
      if (rows.length) this.nsp.to('payments').emit('payments', rows);
    }
    if (this.watching('machines')) {
      const rows = await this.safe('machines', () => this.machines.poll(), []);
      if (rows.length) this.nsp.to('machines').emit('machines', rows);
    }
    if (this.watching('webhooks')) {
      const rows = await this.safe('webhooks', () => this.webhooks.poll(), []);
      if (rows.length) this.nsp.to('webhooks').emit('webhooks', rows);
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    for (const s of this.nsp.sockets.values()) s.disconnect(true);
  }
}
