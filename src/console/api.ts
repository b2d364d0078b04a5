import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { type AccessControl, bearerMatches } from '../auth/index.js';
import type { Config } from '../config/index.js';
import { HeraldError } from '../errors.js';
import { notifySchema } from '../http/schemas.js';
import type { Router } from '../router/index.js';
import type { NotifyInput, NotifyService } from '../router/notify.js';
import { APPS_MODE_NEEDS_TOKEN } from './messages.js';
import { busiestTopics, type StatsSampler } from './stats.js';
import type { ClientSocket, NodeList, StatsSnapshot } from './types.js';

export interface ConsoleApiDeps {
  config: Pick<Config, 'adminToken' | 'maxTargets' | 'apps'>;
  access: AccessControl;
  router: Router;
  notify: NotifyService;
  sampler: StatsSampler;
  /** The last snapshot with the node list. */
  snapshot: () => Promise<StatsSnapshot>;
  /** Every node of the deployment (this one on a single node). */
  nodes: () => Promise<NodeList>;
  /** Throws `shutting_down` while the node drains. */
  assertAccepting: () => void;
}

/**
 * Checks `Authorization: Bearer <ADMIN_TOKEN>` in constant time. Without a token the console is open
 * in open mode (where anyone may use any app anyway) and closed in apps mode, where it would bypass
 * the apps' API keys.
 */
export function checkAdmin(token: string | undefined, request: FastifyRequest, mode: 'open' | 'apps'): void {
  if (token === undefined) {
    if (mode === 'apps') throw new HeraldError('forbidden', APPS_MODE_NEEDS_TOKEN);
    return;
  }
  if (!bearerMatches(request.headers.authorization, token)) {
    throw new HeraldError('unauthorized', 'Send Authorization: Bearer <ADMIN_TOKEN>.');
  }
}

const hide = { hide: true };

/**
 * Routes of payment tracking the console may call for an app through `/admin/api/as-app/:appId/*`,
 * by method, matched against the exact path forwarded (one segment per id, a trailing slash allowed).
 */
const AS_APP_ROUTES: Record<'GET' | 'POST', RegExp> = {
  GET: /^\/(payments\/orders(\/[^/]+)?|payments\/stats|devices)\/?$/,
  POST: /^\/devices\/[^/]+\/commands\/?$/,
};

/** `%2F` and `%5C` (an encoded `/` or `\`), any case. */
const ENCODED_SEPARATOR = /%(2f|5c)/i;
/** A `.` or `..` segment, its dots raw or percent-encoded (`%2e`, any case). */
const DOT_SEGMENT = /^(\.|%2e){1,2}$/i;

/**
 * The path `/admin/api/as-app/:appId/*` forwards, exactly as it will be injected (still
 * percent-encoded as the caller sent it, so that an id reaches the route as the caller encoded it),
 * or undefined when it is not one the console forwards: a path with an encoded slash or backslash, a
 * raw backslash, a `.` or `..` segment (raw or encoded, which `inject` would resolve to another
 * route), anything URL parsing would change, or a route outside the allow-list.
 */
export function asAppPath(method: string, rawUrl: string): string | undefined {
  if (method !== 'GET' && method !== 'POST') return undefined;
  // The raw path, without the query string (and a fragment, as the router cuts it).
  const end = rawUrl.search(/[?#]/);
  const raw = end === -1 ? rawUrl : rawUrl.slice(0, end);
  if (!raw.startsWith('/')) return undefined; // absolute-form request target: not from the console
  // ['', 'admin', 'api', 'as-app', appId, ...rest]: the router splits at raw slashes too.
  const segments = raw.split('/').slice(5);
  while (segments[0] === '') segments.shift();
  const path = `/${segments.join('/')}`;
  if (ENCODED_SEPARATOR.test(path) || path.includes('\\')) return undefined;
  if (segments.some((s) => DOT_SEGMENT.test(s))) return undefined;
  let parsed: string;
  try {
    parsed = new URL(path, 'http://localhost').pathname;
  } catch {
    return undefined;
  }
  if (parsed !== path) return undefined;
  return AS_APP_ROUTES[method].test(parsed) ? parsed : undefined;
}

/** `?limit=` of GET /admin/api/topics: digits in the query string, 1-200 once parsed. */
const TOPICS_LIMIT_MAX = 200;

/**
 * The small JSON API of the console, under `/admin/api`, protected by ADMIN_TOKEN when it is set.
 * Errors have Herald's usual body `{ error: { code, message } }`.
 */
export async function consoleApi(app: FastifyInstance, deps: ConsoleApiDeps): Promise<void> {
  const { config, router, sampler } = deps;

  await app.register(
    async (scope) => {
      // Public: tells the console whether to ask for a token (the token itself is never revealed).
      scope.get('/auth', { schema: hide }, async () => ({ required: config.adminToken !== undefined }));

      await scope.register(async (admin) => {
        admin.addHook('onRequest', async (request) =>
          checkAdmin(config.adminToken, request, deps.access.mode),
        );

        admin.get('/overview', { schema: hide }, async () => deps.snapshot());
        admin.get('/nodes', { schema: hide }, async () => deps.nodes());
        admin.get('/history', { schema: hide }, async () => sampler.history());

        admin.get(
          '/topics',
          {
            schema: {
              ...hide,
              querystring: Type.Object({
                appId: Type.Optional(Type.String({ maxLength: 64 })),
                // A query string carries text (the validator does not coerce): digits, range checked below.
                limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,9}$' })),
              }),
            },
          },
          async (request) => {
            const q = request.query as { appId?: string; limit?: string };
            const limit = q.limit === undefined ? 20 : Number(q.limit);
            if (limit < 1 || limit > TOPICS_LIMIT_MAX) {
              const message = `limit must be an integer from 1 to ${TOPICS_LIMIT_MAX}.`;
              throw new HeraldError('validation_failed', `Invalid request: ${message}`, [
                { path: '/limit', message },
              ]);
            }
            return busiestTopics(router, limit, q.appId || undefined);
          },
        );

        admin.get(
          '/clients',
          {
            schema: {
              ...hide,
              querystring: Type.Object({
                q: Type.String({ minLength: 1, maxLength: 128 }),
                appId: Type.Optional(Type.String({ maxLength: 64 })),
              }),
            },
          },
          async (request): Promise<ClientSocket[]> => {
            const q = request.query as { q: string; appId?: string };
            return router.findConns(q.q, q.appId || undefined, 50).map((c) => ({
              appId: c.appId,
              clientId: c.clientId,
              socketId: c.id,
              deviceId: c.deviceId ?? null,
              topics: [...c.topics].sort(),
              watches: [...c.watches].sort(),
            }));
          },
        );

        admin.post(
          '/publish',
          { schema: { ...hide, body: notifySchema(config) } },
          async (request, reply) => {
            deps.assertAccepting();
            const body = request.body as NotifyInput;
            if (!deps.access.knows(body.appId)) {
              throw new HeraldError('unknown_app', `No app ${JSON.stringify(body.appId)} is configured.`);
            }
            return reply.code(202).send(await deps.notify.publish(body));
          },
        );

        // Payment tracking answers to an app's API key (apps mode). The console holds the admin token,
        // not API keys: this forwards GET /payments/orders|stats, GET /devices and POST
        // /devices/:id/commands for `appId` with one of its keys (`-`: no app, open mode only), so an
        // admin can act for any app. The answer is passed through unchanged.
        admin.route({
          method: ['GET', 'POST'],
          url: '/as-app/:appId/*',
          schema: hide,
          handler: async (request, reply) => {
            const params = request.params as { appId: string; '*': string };
            // Checked and forwarded as sent (not the decoded wildcard, in which `..%2F` is `../`).
            const path = asAppPath(request.method, request.url);
            if (path === undefined) {
              const shown = `/${params['*'].replace(/^\/+/, '')}`;
              throw new HeraldError(
                'not_found',
                `The console does not forward ${request.method} ${JSON.stringify(shown)}.`,
              );
            }
            const appId = params.appId === '-' ? undefined : params.appId;
            const headers: Record<string, string> = {};
            if (appId !== undefined && deps.access.mode === 'apps') {
              const key = config.apps.find((a) => a.id === appId)?.apiKeys[0];
              if (!key)
                throw new HeraldError('unknown_app', `No app ${JSON.stringify(appId)} is configured.`);
              headers.authorization = `Bearer ${key}`;
            }
            const search = new URLSearchParams(request.url.split('?')[1] ?? '');
            if (appId !== undefined && request.method === 'GET' && !search.has('appId'))
              search.set('appId', appId);
            const qs = search.toString();
            if (request.method === 'POST') headers['content-type'] = 'application/json';
            const res = await app.inject({
              method: request.method as 'GET' | 'POST',
              url: `${path}${qs ? `?${qs}` : ''}`,
              headers,
              ...(request.method === 'POST' ? { payload: JSON.stringify(request.body ?? {}) } : {}),
            });
            const type = res.headers['content-type'];
            if (typeof type === 'string') reply.type(type);
            return reply.code(res.statusCode).send(res.body);
          },
        });
      });
    },
    { prefix: '/admin/api' },
  );
}
