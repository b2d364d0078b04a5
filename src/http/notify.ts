import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { AccessControl } from '../auth/index.js';
import type { Config } from '../config/index.js';
import type { ErrorBody } from '../errors.js';
import { HeraldError } from '../errors.js';
import type { Receipts } from '../history/receipts.js';
import type { NotifyInput, NotifyResult, NotifyService } from '../router/notify.js';
import { fastRoutes, toHeraldError, validationError } from './index.js';
import {
  BatchResult,
  batchSchema,
  compile,
  errorResponses,
  NotifyAccepted,
  notifySchema,
} from './schemas.js';
import { TurnQueue } from './turns.js';

export interface NotifyRouteDeps {
  config: Config;
  access: AccessControl;
  notify: NotifyService;
  receipts: Receipts;
  /** Throws `shutting_down` / `not_ready` when the node must not accept work. */
  assertAccepting: () => void;
}

const errors = errorResponses(400, 401, 403, 404, 413, 503);

/** Batch items validated and published in one slice (one step of the shared TurnQueue). */
const BATCH_SLICE = 100;
/**
 * Time per turn of the event loop for batch slices, all batch requests together (a slice of 100 is
 * 2-4 ms here): the gateway's flush of the sockets then runs (FLUSH_TURN_MS), then other requests.
 * Measured with 4 batches in flight (BENCHMARKS.md, eleventh session): loop p99 13-16 ms at 4 or 8 ms
 * against 17-21 ms without the queue; 8 ms keeps a few percent more of the throughput than 4.
 */
const BATCH_TURN_MS = 8;

type ItemResult = ({ ok: true } & NotifyResult) | { ok: false; error: ErrorBody };

/** POST /notify and POST /notify/batch. */
export function notifyRoutes(app: FastifyInstance, deps: NotifyRouteDeps): void {
  const { config, access, notify } = deps;
  const single = notifySchema(config);
  const item = compile(single);
  const turns = new TurnQueue(BATCH_TURN_MS);
  const publishOptions = { requireCluster: config.redisDownNotify === 'reject' };

  /** POST /notify once its body passed the schema. */
  const notifyOne = (body: NotifyInput, authorization: string | undefined): Promise<NotifyResult> => {
    deps.assertAccepting();
    if (!access.knows(body.appId))
      throw new HeraldError('unknown_app', `No app ${JSON.stringify(body.appId)} is configured.`);
    access.checkApiKey(body.appId, authorization);
    const now = notify.publishNow(body);
    return now ? Promise.resolve(now) : notify.publish(body, publishOptions);
  };

  const failed = (err: unknown): ItemResult => ({ ok: false, error: toHeraldError(err).toBody() });

  /**
   * One item of a batch: its result, never a throw nor a rejection; the result itself when the item was
   * published at once (one node: see NotifyService.publishNow), else a promise of it.
   */
  const batchItem = (
    n: unknown,
    i: number,
    authorization: string | undefined,
  ): ItemResult | Promise<ItemResult> => {
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
      access.checkApiKey(n.appId, authorization);
      const now = notify.publishNow(n as NotifyInput);
      if (now) return { ok: true as const, ...now };
      return notify
        .publish(n as NotifyInput, publishOptions)
        .then((r): ItemResult => ({ ok: true as const, ...r }), failed);
    } catch (err) {
      return failed(err);
    }
  };

  /**
   * POST /notify/batch once its body passed the schema. Items are validated and published in slices of
   * BATCH_SLICE from one queue shared by every batch request (`turns`: at most BATCH_TURN_MS of slices
   * per turn of the event loop, however many batches are in flight): a batch of 1,000 would otherwise
   * hold the loop for the whole batch, and between slices the sockets are written (the deliveries of
   * the first items leave before the last ones are read) and other requests are served. A batch's next
   * slice waits until its previous one is published (in cluster mode: answered by Redis).
   */
  const notifyBatch = async (notifications: unknown[], authorization: string | undefined) => {
    deps.assertAccepting();
    if (access.mode === 'apps' && !access.appOfKey(authorization)) {
      throw new HeraldError('unauthorized', 'Send Authorization: Bearer <apiKey> of the app.');
    }
    const results: ItemResult[] = new Array(notifications.length);
    let accepted = 0;
    for (let start = 0; start < notifications.length; start += BATCH_SLICE) {
      const end = Math.min(notifications.length, start + BATCH_SLICE);
      const slice = await turns.run(() => {
        const items: (ItemResult | Promise<ItemResult>)[] = [];
        let waits = false;
        for (let i = start; i < end; i++) {
          const r = batchItem(notifications[i], i, authorization);
          if (r instanceof Promise) waits = true;
          items.push(r);
        }
        return { items, waits };
      });
      // Published at once (one node): no promise to wait for; else those of the slice, in order.
      const done = slice.waits ? await Promise.all(slice.items) : (slice.items as ItemResult[]);
      for (let k = 0; k < done.length; k++) {
        const r = done[k] as ItemResult;
        if (r.ok) accepted++;
        results[start + k] = r;
      }
    }
    return { accepted, rejected: results.length - accepted, results };
  };

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
    async (request, reply) =>
      reply.code(202).send(await notifyOne(request.body as NotifyInput, request.headers.authorization)),
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
    async (request) =>
      notifyBatch(
        (request.body as { notifications: unknown[] }).notifications,
        request.headers.authorization,
      ),
  );

  // The same two routes on the fast path in front of Fastify (plain requests; see FastRoutes).
  const fast = fastRoutes(app);
  if (fast) {
    const batchBody = compile(batchSchema(config));
    fast.post('/notify', config.bodyLimit, async (body, request) => {
      if (!item.check(body)) throw validationError(item, body);
      return { status: 202, body: await notifyOne(body as NotifyInput, request.headers.authorization) };
    });
    fast.post('/notify/batch', config.batchBodyLimit, async (body, request) => {
      if (!batchBody.check(body)) throw validationError(batchBody, body);
      return { status: 200, body: await notifyBatch(body.notifications, request.headers.authorization) };
    });
  }

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
      // Credentials first (apps mode): without them, 404 against 401 would tell anyone which ids exist.
      if (access.mode === 'apps' && access.appOfKey(request.headers.authorization) === undefined) {
        throw new HeraldError('unauthorized', 'Send Authorization: Bearer <apiKey> of the app.');
      }
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
