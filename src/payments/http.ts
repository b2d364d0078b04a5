import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { AccessControl } from '../auth/index.js';
import { APP_ID_RE, type Config } from '../config/index.js';
import { HeraldError } from '../errors.js';
import { toHeraldError } from '../http/index.js';
import { ErrorSchema, errorResponses } from '../http/schemas.js';
import { isStorableText } from '../input.js';
import type { Payments } from './index.js';
import type { OrderCursor } from './ledger.js';
import {
  BatchReport,
  CommandBody,
  CommandParams,
  CommandReply,
  DevicesPage,
  DevicesQuery,
  eventsBodySchema,
  intParam,
  OrderParams,
  OrderQuery,
  OrdersPage,
  OrdersQuery,
  OrderWithHistory,
  parseTime,
  ReportOk,
  StatsQuery,
  StatsSchema,
} from './schema.js';
import type { OrderState } from './state-machine.js';
import type { Order } from './types.js';

export interface PaymentRouteDeps {
  config: Config;
  access: AccessControl;
  payments: Payments;
  /** Throws `shutting_down` when the node must not accept work. */
  assertAccepting: () => void;
}

const errors = errorResponses(400, 401, 403, 404, 409, 413, 503);

/** Checks that `appId` exists and that the request's API key belongs to it (apps mode). */
function checkApp(access: AccessControl, appId: string, authorization: string | undefined): void {
  if (!access.knows(appId))
    throw new HeraldError('unknown_app', `No app ${JSON.stringify(appId)} is configured.`);
  access.checkApiKey(appId, authorization);
}

/**
 * The app a query is about: the given `appId` (whose API key is required in apps mode), or in apps
 * mode the app of the API key; in open mode without appId, every app.
 */
function scopeApp(
  access: AccessControl,
  appId: string | undefined,
  authorization: string | undefined,
): string | undefined {
  if (appId !== undefined) {
    checkApp(access, appId, authorization);
    return appId;
  }
  if (access.mode === 'open') return undefined;
  const own = access.appOfKey(authorization);
  if (!own) throw new HeraldError('unauthorized', 'Send Authorization: Bearer <apiKey> of the app.');
  return own;
}

/** A timestamptz as PostgreSQL prints it (the cursor's creation time). */
const PG_TIME_RE = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?[+-]\d{2}(:\d{2})?$/;

/** The opaque `cursor` of GET /payments/orders: base64url of the JSON [createdAt, appId, orderId]. */
export function encodeCursor(c: OrderCursor): string {
  return Buffer.from(JSON.stringify([c.createdAt, c.appId, c.orderId])).toString('base64url');
}

export function decodeCursor(text: string): OrderCursor {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'));
  } catch {
    v = undefined;
  }
  if (
    Array.isArray(v) &&
    v.length === 3 &&
    v.every((x) => typeof x === 'string' && x.length > 0 && x.length <= 256 && isStorableText(x)) &&
    PG_TIME_RE.test(v[0] as string) &&
    !Number.isNaN(Date.parse((v[0] as string).replace(' ', 'T').replace(/([+-]\d{2})$/, '$1:00')))
  ) {
    return { createdAt: v[0] as string, appId: v[1] as string, orderId: v[2] as string };
  }
  throw new HeraldError(
    'validation_failed',
    'cursor is not one this API gave (pass nextCursor as it came).',
    [{ path: '/cursor', message: 'Not a cursor of GET /payments/orders' }],
  );
}

function orderJson(o: Order) {
  return { ...o, createdAt: o.createdAt.toISOString(), updatedAt: o.updatedAt.toISOString() };
}

/**
 * POST /payments/events, GET /payments/orders/:orderId, GET /payments/orders, GET /payments/stats,
 * GET /devices, POST /devices/:deviceId/commands.
 */
export function paymentRoutes(app: FastifyInstance, deps: PaymentRouteDeps): void {
  const { config, access, payments } = deps;

  /** One event through the same pipeline as `payment:report`, after the API key check. */
  const reportOne = async (raw: unknown, authorization: string | undefined, pathPrefix: string) => {
    const appId = (raw as { appId?: unknown } | null)?.appId;
    // A missing or malformed appId is reported by the validation as invalid_event.
    if (typeof appId === 'string' && APP_ID_RE.test(appId)) checkApp(access, appId, authorization);
    return payments.report(raw, 'http', pathPrefix);
  };

  app.post(
    '/payments/events',
    {
      bodyLimit: config.batchBodyLimit,
      // Each event is validated by the payment pipeline (invalid_event per event, as over the socket).
      validatorCompiler: () => (data: unknown) => ({ value: data }),
      schema: {
        summary: 'Report one payment event, or a batch as { events: [...] }',
        description:
          'Drives the order state machine (see the README, "Payment tracking"). Answered after the event is ' +
          'stored. One event: 200 { ok, eventId, orderId, state, duplicate?, stale? }, or 400 invalid_event, ' +
          '409 invalid_transition (details.retryable says whether sending it later can succeed). A batch: 200 ' +
          'with one result per event, in order. The socket event payment:report answers the same.',
        body: eventsBodySchema(config.maxBatch),
        security: [{ apiKey: [] }],
        response: { 200: Type.Union([ReportOk, BatchReport]), ...errors },
      },
    },
    async (request) => {
      deps.assertAccepting();
      const body = request.body as unknown;
      const authorization = request.headers.authorization;
      if (typeof body === 'object' && body !== null && !Array.isArray(body) && 'events' in body) {
        const events = (body as { events: unknown }).events;
        const extra = Object.keys(body).filter((k) => k !== 'events');
        if (
          !Array.isArray(events) ||
          events.length === 0 ||
          events.length > config.maxBatch ||
          extra.length > 0
        ) {
          throw new HeraldError(
            'validation_failed',
            `A batch is { events: [...] } with 1 to ${config.maxBatch} events.`,
            [{ path: '/events', message: `Expected 1-${config.maxBatch} events and no other key` }],
          );
        }
        let accepted = 0;
        const results = await Promise.all(
          events.map(async (raw, i) => {
            try {
              const r = await reportOne(raw, authorization, `/events/${i}`);
              accepted++;
              return { ok: true as const, ...r };
            } catch (err) {
              return { ok: false as const, error: toHeraldError(err).toBody() };
            }
          }),
        );
        return { accepted, rejected: results.length - accepted, results };
      }
      return { ok: true as const, ...(await reportOne(body, authorization, '')) };
    },
  );

  app.get(
    '/payments/orders/:orderId',
    {
      schema: {
        summary: 'An order: its state and the history of its events',
        description:
          'appId is required when the order id exists in several apps (and in apps mode, the key decides).',
        params: OrderParams,
        querystring: OrderQuery,
        security: [{ apiKey: [] }],
        response: { 200: OrderWithHistory, ...errors },
      },
    },
    async (request) => {
      const { orderId } = request.params as { orderId: string };
      const q = request.query as { appId?: string };
      const appId = scopeApp(access, q.appId, request.headers.authorization);
      const order = await payments.order(orderId, appId);
      if (!order)
        throw new HeraldError('not_found', `No order ${orderId}${appId ? ` in app ${appId}` : ''}.`);
      return { ...orderJson(order), events: order.events };
    },
  );

  app.get(
    '/payments/orders',
    {
      schema: {
        summary: 'Orders, newest first, filtered by merchant, state and creation time [from, to)',
        querystring: OrdersQuery,
        security: [{ apiKey: [] }],
        response: { 200: OrdersPage, ...errors },
      },
    },
    async (request) => {
      const q = request.query as {
        appId?: string;
        merchantId?: string;
        state?: OrderState;
        from?: string;
        to?: string;
        page?: string;
        limit?: string;
        cursor?: string;
      };
      const appId = scopeApp(access, q.appId, request.headers.authorization);
      const page = intParam(q.page, 'page', 1, 1_000_000);
      const limit = intParam(q.limit, 'limit', 50, 500);
      if (q.cursor !== undefined && q.page !== undefined) {
        throw new HeraldError('validation_failed', 'Give page or cursor, not both.', [
          { path: '/page', message: 'Not with cursor' },
        ]);
      }
      const after = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
      const { orders, total, next } = await payments.orders(
        {
          appId,
          merchantId: q.merchantId,
          state: q.state,
          from: parseTime(q.from, 'from'),
          to: parseTime(q.to, 'to'),
        },
        page,
        limit,
        after,
      );
      return {
        orders: orders.map(orderJson),
        page,
        limit,
        total,
        nextCursor: next ? encodeCursor(next) : null,
      };
    },
  );

  app.get(
    '/payments/stats',
    {
      schema: {
        summary: 'Orders per state, success rate, and events per minute',
        description:
          'counts and successRate cover the orders created in [from, to) (all when not given); successRate is ' +
          '(succeeded + refunded) / (succeeded + refunded + failed + closed). throughput covers the last `minutes` ' +
          'minutes, one entry per minute.',
        querystring: StatsQuery,
        security: [{ apiKey: [] }],
        response: { 200: StatsSchema, ...errors },
      },
    },
    async (request) => {
      const q = request.query as {
        appId?: string;
        merchantId?: string;
        from?: string;
        to?: string;
        minutes?: string;
      };
      const appId = scopeApp(access, q.appId, request.headers.authorization);
      return payments.stats(
        { appId, merchantId: q.merchantId, from: parseTime(q.from, 'from'), to: parseTime(q.to, 'to') },
        intParam(q.minutes, 'minutes', 60, 1440),
      );
    },
  );

  app.get(
    '/devices',
    {
      schema: {
        summary:
          'Machines (sockets with a deviceId and a merchantId) with their online state and last-seen time',
        querystring: DevicesQuery,
        security: [{ apiKey: [] }],
        response: { 200: DevicesPage, ...errors },
      },
    },
    async (request) => {
      const q = request.query as {
        appId?: string;
        merchantId?: string;
        online?: 'true' | 'false';
        page?: string;
        limit?: string;
      };
      const appId = scopeApp(access, q.appId, request.headers.authorization);
      const page = intParam(q.page, 'page', 1, 1_000_000);
      const limit = intParam(q.limit, 'limit', 500, 5000);
      const online = q.online === undefined ? undefined : q.online === 'true';
      const { devices, total } = await payments.devices(
        { appId, merchantId: q.merchantId, online },
        page,
        limit,
      );
      return { devices, page, limit, total };
    },
  );

  app.post(
    '/devices/:deviceId/commands',
    {
      schema: {
        summary: 'Send a command to a machine and wait for its answer',
        description:
          'Delivers the Socket.IO event `command` { id, command, args } to the machine, which answers through the ' +
          "event's ack. 200 { id, deviceId, reply }; 404 device_offline when the machine is not connected to this " +
          'node; 504 command_timeout when it does not answer within timeoutMs (default COMMAND_TIMEOUT).',
        params: CommandParams,
        body: CommandBody,
        security: [{ apiKey: [] }],
        response: { 200: CommandReply, ...errors, 504: ErrorSchema },
      },
    },
    async (request) => {
      deps.assertAccepting();
      const { deviceId } = request.params as { deviceId: string };
      const body = request.body as { appId: string; command: string; args?: unknown; timeoutMs?: number };
      checkApp(access, body.appId, request.headers.authorization);
      return payments.command(body.appId, deviceId, body.command, body.args, body.timeoutMs);
    },
  );
}
