import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { bearerMatches } from '../auth/index.js';
import { HeraldError } from '../errors.js';
import type { Metrics } from '../metrics/index.js';
import { errorResponses } from './schemas.js';

export interface Readiness {
  /** Name -> healthy. `critical` checks make the node not ready; others only mark it degraded. */
  checks(): Promise<Record<string, { ok: boolean; critical: boolean; error?: string }>>;
  draining(): boolean;
}

const Check = Type.Object({
  ok: Type.Boolean(),
  critical: Type.Boolean(),
  error: Type.Optional(Type.String()),
});
const Ready = Type.Object({
  status: Type.Union([
    Type.Literal('ready'),
    Type.Literal('degraded'),
    Type.Literal('not_ready'),
    Type.Literal('draining'),
  ]),
  checks: Type.Record(Type.String(), Check),
});

/**
 * GET /healthz, GET /readyz, GET /metrics. Probes stay open (load balancers and kubelets call them
 * without credentials); /metrics needs `Authorization: Bearer <METRICS_TOKEN>` when that is set.
 */
export function opsRoutes(
  app: FastifyInstance,
  deps: { metrics: Metrics; readiness: Readiness; startedAt: number; metricsToken?: string | undefined },
): void {
  app.get(
    '/healthz',
    {
      schema: {
        summary: 'Liveness: the process is alive and its event loop turns',
        response: { 200: Type.Object({ status: Type.Literal('ok'), uptimeSeconds: Type.Number() }) },
      },
    },
    async () => ({ status: 'ok' as const, uptimeSeconds: Math.round((Date.now() - deps.startedAt) / 1000) }),
  );

  app.get(
    '/readyz',
    {
      schema: {
        summary: 'Readiness: 503 while draining or when a critical dependency fails',
        description:
          'The embedded store is critical (503 when it fails). Shared dependencies (Redis, PostgreSQL) only mark ' +
          'the node `degraded` (200): every node depends on them, so taking all out of rotation would not help, ' +
          'and realtime delivery to local sockets keeps working.',
        response: { 200: Ready, 503: Ready },
      },
    },
    async (_request, reply) => {
      const checks = await deps.readiness.checks();
      if (deps.readiness.draining()) return reply.code(503).send({ status: 'draining', checks });
      const list = Object.values(checks);
      if (list.some((c) => !c.ok && c.critical)) return reply.code(503).send({ status: 'not_ready', checks });
      return reply.code(200).send({ status: list.every((c) => c.ok) ? 'ready' : 'degraded', checks });
    },
  );

  app.get(
    '/metrics',
    {
      schema: {
        summary: 'Prometheus metrics (text format)',
        description:
          'With METRICS_TOKEN set, only for `Authorization: Bearer <METRICS_TOKEN>` (401 `unauthorized` otherwise).',
        response: errorResponses(401),
      },
    },
    async (request, reply) => {
      const token = deps.metricsToken;
      if (token !== undefined && !bearerMatches(request.headers.authorization, token)) {
        reply.header('www-authenticate', 'Bearer realm="metrics"');
        throw new HeraldError('unauthorized', 'Send Authorization: Bearer <METRICS_TOKEN>.');
      }
      const text = await deps.metrics.registry.metrics();
      return reply.type(deps.metrics.registry.contentType).send(text);
    },
  );
}
