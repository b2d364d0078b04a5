/**
 * The web console: the built front-end (console/) at `/console`, its JSON API under `/admin/api`
 * and its realtime channel, the Socket.IO namespace `/admin/console`. ADMIN_TOKEN, when set,
 * guards the API and the namespace; the pages themselves are public files that ask for the token.
 */
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import type { Server } from 'socket.io';
import type { AccessControl } from '../auth/index.js';
import type { Config } from '../config/index.js';
import type { Readiness } from '../http/ops.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics/index.js';
import type { Router } from '../router/index.js';
import type { NotifyService } from '../router/notify.js';
import type { Store } from '../store/index.js';
import { consoleApi } from './api.js';
import { ConsoleHub } from './hub.js';
import { type ClusterNodes, NodeDirectory } from './nodes.js';
import { consoleStatic } from './static.js';
import { StatsSampler } from './stats.js';

export { checkAdmin } from './api.js';
export { CONSOLE_NAMESPACE } from './hub.js';
export { NOT_BUILT_HTML } from './static.js';
export type * from './types.js';

export interface ConsoleDeps {
  http: FastifyInstance;
  io: Server;
  config: Config;
  router: Router;
  metrics: Metrics;
  notify: NotifyService;
  access: AccessControl;
  store: Store;
  bus: { kind: 'memory' | 'redis' };
  /** Cluster mode (REDIS_URL): lists the live nodes for the Overview's node list. */
  cluster?: ClusterNodes;
  readiness: Readiness;
  logger: Logger;
  version: string;
  startedAt: number;
  /** Throws `shutting_down` while the node drains. */
  assertAccepting: () => void;
  /** Folder of the built console. @default console/dist of the Herald package */
  distDir?: string;
}

/**
 * `console/dist` of the package, from src/console (tsx) or dist/src/console (built): the first
 * ancestor folder that holds package.json.
 */
export function defaultDistDir(): string {
  for (const up of ['../../', '../../../']) {
    const root = new URL(up, import.meta.url);
    if (existsSync(fileURLToPath(new URL('package.json', root)))) {
      return fileURLToPath(new URL('console/dist', root));
    }
  }
  return fileURLToPath(new URL('../../console/dist', import.meta.url));
}

/** Registers the console's routes and namespace; stops its timer when the HTTP server closes. */
export async function registerConsole(deps: ConsoleDeps): Promise<{
  hub: ConsoleHub;
  sampler: StatsSampler;
  /** What this node says about itself (its node-list entry): for the cluster heartbeat. */
  nodeInfo: () => Record<string, unknown>;
}> {
  const { config, logger } = deps;
  const distDir = deps.distDir ?? defaultDistDir();
  let hub: ConsoleHub | undefined;
  const sampler = new StatsSampler({
    router: deps.router,
    metrics: deps.metrics,
    readiness: deps.readiness,
    version: deps.version,
    startedAt: deps.startedAt,
    store: deps.store.kind,
    bus: deps.bus.kind,
    accessMode: deps.access.mode,
    adminToken: config.adminToken !== undefined,
    consoles: () => hub?.count() ?? 0,
  });
  const nodeId = deps.cluster?.nodeId ?? `${hostname()}-${process.pid}`;
  const nodes = new NodeDirectory({
    self: () => sampler.nodeInfo(nodeId),
    presenceTtlMs: config.presenceTtl,
    ...(deps.cluster ? { cluster: deps.cluster } : {}),
  });
  const running = new ConsoleHub({
    io: deps.io,
    adminToken: config.adminToken,
    accessMode: deps.access.mode,
    sampler,
    nodes,
    router: deps.router,
    db: deps.store,
    logger: logger.child({ part: 'console' }),
  });
  hub = running;
  await consoleStatic(deps.http, distDir);
  await consoleApi(deps.http, {
    config,
    access: deps.access,
    router: deps.router,
    notify: deps.notify,
    sampler,
    snapshot: () => running.snapshot(),
    nodes: () => nodes.list(),
    assertAccepting: deps.assertAccepting,
  });
  deps.http.addHook('onClose', async () => {
    running.close();
    sampler.close();
  });
  if (!existsSync(distDir)) {
    logger.info({ distDir }, 'web console not built: /console answers 503 until `npm run build` has run');
  }
  if (config.adminToken === undefined) {
    logger.warn(
      'ADMIN_TOKEN is not set: the web console (/console, /admin/api, /admin/console) is open to anyone.',
    );
  }
  return { hub: running, sampler, nodeInfo: () => ({ ...sampler.nodeInfo(nodeId) }) };
}
