import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { AccessControl } from '../auth/index.js';
import type { Config } from '../config/index.js';
import { HeraldError } from '../errors.js';
import type { Receipts } from '../history/receipts.js';
import type { NotifyInput, NotifyService } from '../router/notify.js';
import { toHeraldError } from './index.js';
import {
  BatchResult,
  batchSchema,
  compile,
  errorResponses,
  NotifyAccepted,
  notifySchema,
} from './schemas.js';

export interface NotifyRouteDeps {
  config: Config;
  access: AccessControl;
  notify: NotifyService;
  receipts: Receipts;
  /** Throws `shutting_down` / `not_ready` when the node must not accept work. */
  assertAccepting: () => void;
}

const errors = errorResponses(400, 401, 403, 404, 413, 503);

/** POST /notify and POST /notify/batch. */
export function notifyRoutes(app: FastifyInstance, deps: NotifyRouteDeps): void {
  const { config, access, notify } = deps;
  const single = notifySchema(config);
  const item = compile(single);

  app.post(
    '/notify',
    {
      bodyLimit: config.bodyLimit,
      schema: {
        summary: 'Push a notification to users, devices and topic subscribers of one app',
        description:
          'Recipients are the union of every socket of `users`, the sockets of `devices` and the subscribers of ' +
          '`eventTopics` in `appId`; each socket receives the notification once, as dataUpdate(data, meta).',
        body: single,
        security: [{ apiKey: [] }],
        response: { 202: NotifyAccepted, ...errors },
      },
    },
    async (request, reply) => {
      deps.assertAccepting();
      const body = request.body as NotifyInput;
      if (!access.knows(body.appId))
        throw new HeraldError('unknown_app', `No app ${JSON.stringify(body.appId)} is configured.`);
      access.checkApiKey(body.appId, request.headers.authorization);
      const result = await notify.publish(body);
      return reply.code(202).send(result);
    },
  );

  app.post(
    '/notify/batch',
    {
      bodyLimit: config.batchBodyLimit,
      schema: {
        summary: 'Push up to MAX_BATCH notifications in one request',
        description:
          'Each item is validated and published on its own; the response has one result per item, in order. ' +
          'In apps mode the API key must belong to the app of each item.',
        body: batchSchema(config),
        security: [{ apiKey: [] }],
        response: { 200: BatchResult, ...errors },
      },
    },
    async (request) => {
      deps.assertAccepting();
      const { notifications } = request.body as { notifications: unknown[] };
      if (access.mode === 'apps' && !access.appOfKey(request.headers.authorization)) {
        throw new HeraldError('unauthorized', 'Send Authorization: Bearer <apiKey> of the app.');
      }
      let accepted = 0;
      const results = await Promise.all(
        notifications.map(async (n, i) => {
          try {
            if (!item.check(n)) {
              const limit = item.limitError(n);
              if (limit) throw limit;
              const details = item
                .errors(n)
                .map((e) => ({ ...e, path: `/notifications/${i}${e.path === '/' ? '' : e.path}` }));
              throw new HeraldError('validation_failed', `Invalid notification at index ${i}.`, details);
            }
            if (!access.knows(n.appId))
              throw new HeraldError('unknown_app', `No app ${JSON.stringify(n.appId)} is configured.`);
            access.checkApiKey(n.appId, request.headers.authorization);
            const r = await notify.publish(n as NotifyInput);
            accepted++;
            return { ok: true as const, ...r };
          } catch (err) {
            return { ok: false as const, error: toHeraldError(err).toBody() };
          }
        }),
      );
      return { accepted, rejected: results.length - accepted, results };
    },
  );

  app.get(
    '/notify/:id',
    {
      schema: {
        summary: 'Delivery receipts of a notification sent with ack: true',
        description:
          'Lists each device that acknowledged the notification and when (one entry per client id and device). ' +
          'Kept for RECEIPT_TTL; 404 for an unknown or expired id, or one sent without ack. In apps mode the API key must belong to its app.',
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }),
        security: [{ apiKey: [] }],
        response: {
          200: Type.Object({
            id: Type.String(),
            appId: Type.String(),
            ts: Type.Number(),
            receipts: Type.Array(
              Type.Object({
                clientId: Type.String(),
                deviceId: Type.Union([Type.String(), Type.Null()]),
                at: Type.Number(),
              }),
            ),
          }),
          ...errors,
        },
      },
    },
    async (request) => {
      const { id } = request.params as { id: string };
      const report = await deps.receipts.get(id);
      if (!report)
        throw new HeraldError(
          'not_found',
          `No receipts for notification ${JSON.stringify(id)} (unknown, expired, or sent without ack).`,
        );
      access.checkApiKey(report.appId, request.headers.authorization);
      return report;
    },
  );
}
