import { type TSchema, Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { bearerMatches } from '../auth/index.js';
import type { Config } from '../config/index.js';
import { HeraldError } from '../errors.js';
import { toHeraldError } from '../http/index.js';
import { isStorableTime, jsonProblem, MAX_TIME_MS } from '../input.js';
import type { Logger } from '../logger.js';
import { SqlError } from '../store/index.js';
import type { WebhookEngine } from './engine.js';
import { type AttemptRow, type DeliveryRow, isDataException, type MerchantRow } from './queue.js';
import { generateSecret, isValidSecret } from './signing.js';

export interface WebhookRouteDeps {
  config: Pick<Config, 'adminToken' | 'webhookIntakeToken' | 'bodyLimit'>;
  /**
   * Without ADMIN_TOKEN the admin API is open in open mode (anyone may use any app there anyway, as in
   * the seed's examples) and closed in apps mode, like the console: it reads every merchant's payloads
   * and URLs and can resend, reset and reconfigure them. Default `open`.
   */
  accessMode?: 'open' | 'apps';
  /**
   * Apps mode: the app whose API key `Authorization` carries. Without WEBHOOK_INTAKE_TOKEN the intake
   * then takes any app's API key, and nothing else: open to anyone, it would sign and send any payload
   * to any merchant's URL with that merchant's secret (a forged "paid").
   */
  appOfKey?: (authorization: string | undefined) => string | undefined;
  engine: WebhookEngine;
  logger: Logger;
  /** Throws `shutting_down` while the node drains. */
  assertAccepting: () => void;
  /** Counts error responses by code (the node's herald_http_errors_total). */
  onError?: (code: string) => void;
}

/** `{ code, msg, data }`: the seed's envelope, kept so existing admin tooling works. */
function Envelope(data: TSchema, description: string) {
  return Type.Object({ code: Type.Integer(), msg: Type.String(), data }, { description });
}

const ErrorEnvelope = Type.Object(
  {
    code: Type.Integer({ description: 'The HTTP status.' }),
    msg: Type.String(),
    data: Type.Null(),
    error: Type.Object({
      code: Type.String({ description: 'Stable error code, e.g. validation_failed, store_unavailable.' }),
      message: Type.String(),
      details: Type.Optional(Type.Unknown()),
    }),
  },
  { description: 'Errors of the merchant webhook routes: the envelope plus the stable error code.' },
);

const errors = {
  400: ErrorEnvelope,
  401: ErrorEnvelope,
  403: ErrorEnvelope,
  404: ErrorEnvelope,
  503: ErrorEnvelope,
};
const Digits = Type.String({ pattern: '^[0-9]{1,9}$' });
const Data = Type.Unknown();

const MSG_OK = '获取成功';
const MSG_DONE = '操作成功';

const ok = (data: unknown, msg = MSG_OK) => ({ code: 200, msg, data });

function iso(d: Date | string | null | undefined): string | null {
  if (d === null || d === undefined) return null;
  return (d instanceof Date ? d : new Date(d)).toISOString();
}

function deliveryView(d: DeliveryRow) {
  return {
    id: d.id,
    order_id: d.seq,
    order_no: d.order_no,
    event_type: d.event_type,
    merchant_key: d.merchant_key,
    merchant_id: d.merchant_id,
    notify_url: d.notify_url,
    status: d.status,
    attempts: d.attempts,
    next_attempt_at: iso(d.next_attempt_at),
    in_flight: d.locked_until !== null && new Date(d.locked_until).getTime() > Date.now(),
    last_status_code: d.last_status_code,
    last_error: d.last_error,
    created_at: iso(d.created_at),
    finished_at: iso(d.finished_at),
  };
}

function attemptView(a: AttemptRow) {
  return {
    id: a.id,
    webhook_id: a.delivery_id,
    order_no: a.order_no,
    merchant_key: a.merchant_key,
    url: a.url,
    attempt: a.attempt,
    status: a.outcome === 'success' ? 1 : 0,
    outcome: a.outcome,
    status_code: a.status_code,
    response_body: a.response_body,
    duration_ms: a.duration_ms,
    error: a.error,
    created_at: iso(a.created_at),
  };
}

/** The seed's merchant status (merchant_key … status) plus the engine's details. */
function merchantView(engine: WebhookEngine, m: MerchantRow) {
  const open = m.breaker_state !== 'closed';
  return {
    merchant_key: m.merchant_key,
    merchant_id: m.merchant_id,
    notify_url: m.notify_url,
    failure_count: m.consecutive_failures,
    avg_response_time: Number((m.avg_ms / 1000).toFixed(3)),
    is_circuit_breaker_open: open,
    is_slow_merchant: m.is_slow,
    status: open ? 'circuit_breaker' : m.is_slow ? 'slow' : 'normal',
    breaker_state: m.breaker_state,
    breaker_opened_at: iso(m.breaker_opened_at),
    breaker_until: iso(m.breaker_until),
    concurrency: engine.concurrencyOf(m),
    samples: m.samples,
    success_total: m.success_total,
    failure_total: m.failure_total,
    disabled: m.disabled_url !== null,
    disabled_url: m.disabled_url,
    disabled_at: iso(m.disabled_at),
    last_status_code: m.last_status_code,
    last_error: m.last_error,
    last_attempt_at: iso(m.last_attempt_at),
    require_success_body: m.require_success_body,
    has_own_secret: m.secret !== null,
  };
}

/**
 * Start of the day for `YYYY-MM-DD` (local time; the next day's start with `endOfDay`), or any date the
 * Date parser accepts. Only real calendar dates in years 1-9999 (what the store holds) are accepted.
 */
function parseTime(text: string, field: string, endOfDay: boolean): Date {
  const invalid = () =>
    new HeraldError(
      'validation_failed',
      `${field} must be a date (2025-01-31) or a date and time (ISO 8601) in years 1-9999.`,
      [{ path: `/${field}`, message: 'must be a date or a date and time in years 1-9999' }],
    );
  const dateOnly = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text.trim());
  let t: number;
  if (dateOnly) {
    const [y, m, day] = [Number(dateOnly[1]), Number(dateOnly[2]) - 1, Number(dateOnly[3])];
    const d = new Date(2000, 0, 1);
    d.setFullYear(y, m, day); // not new Date(y, …): it reads years 0-99 as 1900-1999
    if (d.getFullYear() !== y || d.getMonth() !== m || d.getDate() !== day) throw invalid();
    if (!isStorableTime(d.getTime())) throw invalid();
    if (endOfDay) d.setDate(d.getDate() + 1);
    // The end of 9999-12-31 is past the last storable instant: the range ends there instead.
    t = Math.min(d.getTime(), MAX_TIME_MS);
  } else {
    t = Date.parse(text);
  }
  if (!isStorableTime(t)) throw invalid();
  return new Date(t);
}

/**
 * Refuses text the store cannot hold (a NUL character, an unpaired surrogate) anywhere in a query or
 * body, naming the field: the SQL would fail with a data exception otherwise.
 */
function assertStorable(value: unknown): void {
  const bad = jsonProblem(value, true);
  if (bad) {
    const name = bad.path.slice(1) || 'the request';
    throw new HeraldError('validation_failed', `${name} ${bad.message}.`, [
      { path: bad.path || '/', message: bad.message },
    ]);
  }
}

const MerchantRef = {
  notify_url: Type.Optional(Type.String({ minLength: 1, maxLength: 2048 })),
  merchant_id: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  merchant_key: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
};

type Ref = { notify_url?: string; merchant_id?: string; merchant_key?: string };

/**
 * POST /merchant-notify and the admin API under /admin/merchant-notify (the seed's paths). Every answer
 * of these routes uses the seed's `{ code, msg, data }` envelope; errors add `error: { code, message }`
 * with a stable code.
 */
export async function webhookRoutes(app: FastifyInstance, deps: WebhookRouteDeps): Promise<void> {
  const { engine, config } = deps;

  await app.register(async (scope) => {
    scope.setErrorHandler((err, request, reply) => {
      // SQLSTATE class 22 (data exception): the store refused a value of the request, which sending it
      // again cannot change (a 400); any other store error means it is unavailable (a 503, retry later).
      const refused = isDataException(err);
      const he = refused
        ? new HeraldError(
            'validation_failed',
            'The store refused a value of this request (text, number or time it cannot hold); fix the request.',
          )
        : err instanceof SqlError
          ? new HeraldError('store_unavailable', 'The store failed to answer; retry later.')
          : toHeraldError(err);
      deps.onError?.(he.code);
      if (refused) request.log.warn({ err, url: request.url }, 'store refused a value');
      else if (err instanceof SqlError) request.log.error({ err, url: request.url }, 'store failed');
      if (he.code === 'internal_error') request.log.error({ err, url: request.url }, 'request failed');
      return reply.code(he.status).send({ code: he.status, msg: he.message, data: null, error: he.toBody() });
    });

    const findMerchant = async (ref: Ref): Promise<MerchantRow | null> => {
      if (!ref.notify_url && !ref.merchant_id && !ref.merchant_key) {
        throw new HeraldError('validation_failed', 'Give notify_url, merchant_id or merchant_key.');
      }
      return engine.queue.findMerchant({
        key: ref.merchant_key ?? (ref.notify_url ? engine.merchantKey(ref.notify_url) : undefined),
        notifyUrl: ref.notify_url,
        merchantId: ref.merchant_id,
      });
    };
    const mustFindMerchant = async (ref: Ref): Promise<MerchantRow> => {
      const m = await findMerchant(ref);
      if (!m)
        throw new HeraldError(
          'not_found',
          'No merchant has been notified at this notify_url or merchant_id.',
        );
      return m;
    };

    // ---- intake ----
    scope.post(
      '/merchant-notify',
      {
        bodyLimit: config.bodyLimit,
        schema: {
          summary: "Queue a webhook to a merchant's notify URL (stored durably before the answer)",
          description:
            'The payload is POSTed as JSON to notifyUrl with Standard Webhooks signature headers, retried on ' +
            'failure. The same idempotencyKey (default: orderNo + eventType) never creates a second delivery. ' +
            'Requires Authorization: Bearer WEBHOOK_INTAKE_TOKEN when that is set.',
          body: Type.Object(
            {
              orderNo: Type.String({ minLength: 1, maxLength: 128 }),
              notifyUrl: Type.String({ minLength: 1, maxLength: 2048 }),
              payload: Type.Unknown({ description: 'Sent as the JSON body of the webhook.' }),
              merchantId: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
              eventType: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
              idempotencyKey: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
            },
            { additionalProperties: false },
          ),
          response: {
            202: Envelope(
              Type.Object({ id: Type.String(), duplicate: Type.Boolean() }),
              'Stored; data.id is the webhook-id merchants receive.',
            ),
            413: ErrorEnvelope,
            ...errors,
          },
        },
      },
      async (request, reply) => {
        deps.assertAccepting();
        if (
          config.webhookIntakeToken &&
          !bearerMatches(request.headers.authorization, config.webhookIntakeToken)
        ) {
          throw new HeraldError('unauthorized', 'Send Authorization: Bearer <WEBHOOK_INTAKE_TOKEN>.');
        }
        if (
          !config.webhookIntakeToken &&
          deps.accessMode === 'apps' &&
          deps.appOfKey?.(request.headers.authorization) === undefined
        ) {
          throw new HeraldError(
            'unauthorized',
            'This node runs in apps mode: send Authorization: Bearer <apiKey> of an app (or set WEBHOOK_INTAKE_TOKEN and send it).',
          );
        }
        const body = request.body as {
          orderNo: string;
          notifyUrl: string;
          payload: unknown;
          merchantId?: string;
          eventType?: string;
          idempotencyKey?: string;
        };
        if (!('payload' in body)) throw new HeraldError('validation_failed', 'payload is required.');
        const r = await engine.enqueue(body);
        return reply.code(202).send(ok(r, r.duplicate ? '重复通知，已忽略' : '已接收'));
      },
    );

    // ---- admin ----
    await scope.register(
      async (admin) => {
        admin.addHook('onRequest', async (request: FastifyRequest) => {
          if (!config.adminToken && deps.accessMode === 'apps') {
            throw new HeraldError(
              'forbidden',
              'This node runs in apps mode: set ADMIN_TOKEN to use the webhook admin API (without it, anyone could read and resend every merchant’s webhooks).',
            );
          }
          if (config.adminToken && !bearerMatches(request.headers.authorization, config.adminToken)) {
            throw new HeraldError('unauthorized', 'Send Authorization: Bearer <ADMIN_TOKEN>.');
          }
        });
        // After the schema: every string of a query or body may reach SQL.
        admin.addHook('preHandler', async (request: FastifyRequest) => {
          assertStorable(request.query);
          assertStorable(request.body);
        });

        admin.get(
          '/queue-status',
          {
            schema: {
              summary: 'Queue lengths by state and the next queued webhooks',
              response: {
                200: Envelope(Data, 'pending_count, retry_count, … and the first 20 of each list'),
                ...errors,
              },
            },
          },
          async () => {
            const [depth, pending, retry, delayed, failed] = await Promise.all([
              engine.queue.depth(),
              engine.queue.listDeliveries(['pending'], 20),
              engine.queue.listDeliveries(['retrying'], 20),
              engine.queue.listDeliveries(['delayed'], 20),
              engine.queue.listFailed(20),
            ]);
            return ok({
              pending_count: depth.pending,
              retry_count: depth.retrying,
              delayed_count: depth.delayed,
              in_flight_count: depth.in_flight,
              failed_count: depth.failed,
              queue_length: depth.pending + depth.retrying + depth.delayed,
              pending_orders: pending.map(deliveryView),
              retry_orders: retry.map(deliveryView),
              delayed_orders: delayed.map(deliveryView),
              failed_orders: failed.map(deliveryView),
            });
          },
        );

        admin.get(
          '/logs',
          {
            schema: {
              summary: 'Attempt log, newest first',
              description:
                'order_no matches a prefix; status=1 (or success) keeps successful attempts, status=0 (or failed) the others. ' +
                'cursor (data.next_cursor of the previous page) pages without repeating or skipping attempts while new ones ' +
                'are logged; page counts from the newest attempt and shifts as they arrive.',
              querystring: Type.Object({
                page: Type.Optional(Digits),
                limit: Type.Optional(Digits),
                cursor: Type.Optional(Type.String({ pattern: '^[0-9]{1,15}$' })),
                order_no: Type.Optional(Type.String({ maxLength: 128 })),
                status: Type.Optional(
                  Type.Union([
                    Type.Literal('0'),
                    Type.Literal('1'),
                    Type.Literal('2'),
                    Type.Literal('success'),
                    Type.Literal('failed'),
                  ]),
                ),
                webhook_id: Type.Optional(Type.String({ maxLength: 64 })),
              }),
              response: { 200: Envelope(Data, '{ total, page, limit, list }'), ...errors },
            },
          },
          async (request) => {
            const q = request.query as Record<string, string | undefined>;
            const page = Math.max(1, Number(q.page ?? 1));
            const limit = Math.min(100, Math.max(1, Number(q.limit ?? 20)));
            const success = q.status === undefined ? undefined : q.status === '1' || q.status === 'success';
            const before = q.cursor === undefined ? undefined : Number(q.cursor);
            const r = await engine.queue.logs({
              page,
              limit,
              orderNo: q.order_no || undefined,
              success,
              deliveryId: q.webhook_id || undefined,
              ...(before !== undefined ? { before } : {}),
            });
            const last = r.rows[r.rows.length - 1];
            return ok({
              total: r.total,
              page,
              limit,
              next_cursor: r.rows.length === limit && last ? String(last.id) : null,
              list: r.rows.map(attemptView),
            });
          },
        );

        admin.get(
          '/alerts',
          {
            schema: {
              summary: 'Alert history, newest first',
              description:
                'Every alert raised (breaker opened, slow merchant, queue length, rates), kept for WEBHOOK_LOG_RETENTION.',
              querystring: Type.Object({
                page: Type.Optional(Digits),
                limit: Type.Optional(Digits),
                type: Type.Optional(Type.String({ maxLength: 64 })),
              }),
              response: { 200: Envelope(Data, '{ total, page, limit, list }'), ...errors },
            },
          },
          async (request) => {
            const q = request.query as Record<string, string | undefined>;
            const page = Math.max(1, Number(q.page ?? 1));
            const limit = Math.min(100, Math.max(1, Number(q.limit ?? 20)));
            const r = await engine.queue.alerts({ page, limit, type: q.type || undefined });
            const list = r.rows.map((a) => ({
              id: Number(a.id),
              alert_type: a.type,
              level: a.level,
              merchant_key: a.merchant_key,
              text: a.text,
              data: a.data,
              created_at: a.created_at instanceof Date ? a.created_at.toISOString() : a.created_at,
            }));
            return ok({ total: r.total, page, limit, list });
          },
        );

        admin.post(
          '/retry',
          {
            schema: {
              summary: 'Send webhooks again now, with a fresh retry schedule',
              description:
                'order_id is the numeric order_id of a webhook (see queue-status and logs), a webhook id (msg_…) ' +
                'or an order number (all its webhooks). Delivered webhooks are re-sent only with include_delivered.',
              body: Type.Object(
                {
                  order_id: Type.Union([
                    // webhook_deliveries.seq is a bigint; JavaScript numbers are exact up to 2^53 - 1.
                    Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
                    Type.String({ minLength: 1, maxLength: 128 }),
                  ]),
                  include_delivered: Type.Optional(Type.Boolean()),
                },
                { additionalProperties: false },
              ),
              response: { 200: Envelope(Data, '{ retried, list }'), ...errors, 409: ErrorEnvelope },
            },
          },
          async (request) => {
            const b = request.body as { order_id: number | string; include_delivered?: boolean };
            const ref =
              typeof b.order_id === 'number' ? { seq: b.order_id } : { id: b.order_id, orderNo: b.order_id };
            const rows = await engine.retry(ref, b.include_delivered === true);
            if (rows.length === 0) {
              // Say why: an admin must not read "no such webhook" for one that is being sent right now.
              const found = await engine.queue.retryBlockers(ref);
              if (found.length === 0) throw new HeraldError('not_found', 'No webhook matches order_id.');
              const why = found.map((d) => ({
                path: '/order_id',
                message: d.in_flight
                  ? 'in_flight'
                  : d.purged
                    ? 'purged'
                    : d.status === 'delivered'
                      ? 'delivered'
                      : d.status,
                webhook_id: d.id,
                status: d.status,
              }));
              const first = found[0] as (typeof found)[number];
              const message = first.in_flight
                ? `Webhook ${first.id} is being sent right now; retry once this attempt has ended (its result is in the logs).`
                : first.purged
                  ? `Webhook ${first.id} finished before the log retention and lost its payload; it cannot be sent again.`
                  : first.status === 'delivered'
                    ? `Webhook ${first.id} was delivered; pass include_delivered: true to send it again.`
                    : `Webhook ${first.id} is ${first.status} and was not retried; try again.`;
              throw new HeraldError(
                'not_retryable',
                found.length > 1 ? `${message} (${found.length} webhooks match; see details)` : message,
                why,
              );
            }
            return ok({ retried: rows.length, list: rows.map(deliveryView) }, MSG_DONE);
          },
        );

        admin.get(
          '/stats',
          {
            schema: {
              summary: 'Counts and rates of webhooks created between start_time and end_time',
              description: 'Dates (2025-01-31, end day included) or ISO times; default: the last 24 hours.',
              querystring: Type.Object({
                start_time: Type.Optional(Type.String({ maxLength: 40 })),
                end_time: Type.Optional(Type.String({ maxLength: 40 })),
              }),
              response: { 200: Envelope(Data, 'totals, success_rate, average response time'), ...errors },
            },
          },
          async (request) => {
            const q = request.query as { start_time?: string; end_time?: string };
            const to = q.end_time ? parseTime(q.end_time, 'end_time', true) : new Date();
            const from = q.start_time
              ? parseTime(q.start_time, 'start_time', false)
              : new Date(to.getTime() - 86_400_000);
            if (from.getTime() > to.getTime()) {
              // Swapped bounds would answer an empty range (all zeros) that reads like no traffic.
              throw new HeraldError('validation_failed', 'start_time must not be after end_time.', [
                { path: '/start_time', message: 'must not be after end_time' },
              ]);
            }
            const s = await engine.queue.stats(from, to);
            const n = (k: string) => Number(s[k] ?? 0);
            const finished = n('delivered') + n('failed');
            return ok({
              start_time: from.toISOString(),
              end_time: to.toISOString(),
              total: n('total'),
              delivered: n('delivered'),
              failed: n('failed'),
              queued: n('queued'),
              retried: n('retried'),
              success_rate: finished > 0 ? Number((n('delivered') / finished).toFixed(4)) : null,
              attempts: n('attempts'),
              successful_attempts: n('successful_attempts'),
              attempt_success_rate:
                n('attempts') > 0 ? Number((n('successful_attempts') / n('attempts')).toFixed(4)) : null,
              avg_response_time:
                s.avg_ms === null || s.avg_ms === undefined ? null : Number((n('avg_ms') / 1000).toFixed(3)),
              max_response_time: s.max_ms === null || s.max_ms === undefined ? null : n('max_ms') / 1000,
            });
          },
        );

        admin.post(
          '/cleanup',
          {
            schema: {
              summary:
                'Delete attempt logs older than `days` (default 30) and the payload of webhooks finished before then; ' +
                'their idempotency keys stay until WEBHOOK_IDEMPOTENCY_RETENTION',
              body: Type.Object(
                { days: Type.Optional(Type.Integer({ minimum: 1, maximum: 3650 })) },
                { additionalProperties: false },
              ),
              response: {
                200: Envelope(
                  Data,
                  '{ days, deleted_logs, deleted_notifications, deleted_idempotency_keys }',
                ),
                ...errors,
              },
            },
          },
          async (request) => {
            const days = (request.body as { days?: number } | undefined)?.days ?? 30;
            const r = await engine.cleanup(days * 86_400_000);
            return ok(
              {
                days,
                deleted_logs: r.logs,
                deleted_notifications: r.notifications,
                deleted_idempotency_keys: r.keys,
              },
              MSG_DONE,
            );
          },
        );

        admin.get(
          '/merchant-status',
          {
            schema: {
              summary: "A merchant's state: failures, average response time, breaker, slow flag",
              querystring: Type.Object(MerchantRef),
              response: {
                200: Envelope(Data, 'The seed fields (merchant_key … status) and details'),
                ...errors,
              },
            },
          },
          async (request) => {
            const q = request.query as Ref;
            const m = await findMerchant(q);
            if (m) return ok(merchantView(engine, m));
            // Never notified: the seed answers with a clean state.
            const key = q.merchant_key ?? engine.merchantKey(q.notify_url ?? '', q.merchant_id);
            return ok({
              merchant_key: key,
              notify_url: q.notify_url ?? null,
              failure_count: 0,
              avg_response_time: 0,
              is_circuit_breaker_open: false,
              is_slow_merchant: false,
              status: 'normal',
              known: false,
            });
          },
        );

        admin.post(
          '/reset-circuit-breaker',
          {
            schema: {
              summary: "Close a merchant's breaker, clear its failures and re-enable a URL disabled by 410",
              body: Type.Object(MerchantRef, { additionalProperties: false }),
              response: { 200: Envelope(Data, 'The merchant status after the reset'), ...errors },
            },
          },
          async (request) => {
            const m = await mustFindMerchant(request.body as Ref);
            const r = await engine.resetMerchant(m.merchant_key);
            if (!r) throw new HeraldError('not_found', 'The merchant is gone.');
            return ok(merchantView(engine, r), MSG_DONE);
          },
        );

        admin.get(
          '/all-merchant-status',
          {
            schema: {
              summary: 'Every merchant, breakers and slow ones first',
              querystring: Type.Object({ page: Type.Optional(Digits), limit: Type.Optional(Digits) }),
              response: { 200: Envelope(Data, '{ total, page, limit, list }'), ...errors },
            },
          },
          async (request) => {
            const q = request.query as { page?: string; limit?: string };
            const page = Math.max(1, Number(q.page ?? 1));
            const limit = Math.min(100, Math.max(1, Number(q.limit ?? 20)));
            const r = await engine.queue.listMerchants(page, limit);
            return ok({ total: r.total, page, limit, list: r.rows.map((m) => merchantView(engine, m)) });
          },
        );

        admin.post(
          '/send-alert',
          {
            schema: {
              summary: 'Send a merchant alert (slow_merchant or circuit_breaker) to the alert sinks now',
              body: Type.Object(
                {
                  ...MerchantRef,
                  alert_type: Type.Union([Type.Literal('slow_merchant'), Type.Literal('circuit_breaker')]),
                },
                { additionalProperties: false },
              ),
              response: { 200: Envelope(Data, '{ alert_type, level, sinks, text }'), ...errors },
            },
          },
          async (request) => {
            const b = request.body as Ref & { alert_type: 'slow_merchant' | 'circuit_breaker' };
            const m = await mustFindMerchant(b);
            const alert = engine.sendMerchantAlert(m, b.alert_type);
            return ok(
              {
                alert_type: alert.type,
                level: alert.level,
                sinks: engine.alerter.sinks.map((s) => s.name),
                text: alert.text,
              },
              engine.alerter.sinks.length > 0 ? '告警已发送' : '未配置告警渠道',
            );
          },
        );

        admin.post(
          '/merchant-settings',
          {
            schema: {
              summary: "Set a merchant's signing secret and success-body rule",
              description:
                'secret: a whsec_ secret, "generate" for a new random one (returned once in data.secret), or null ' +
                'for the default secret. require_success_body: true/false, or null for WEBHOOK_REQUIRE_SUCCESS_BODY.',
              body: Type.Object(
                {
                  notify_url: Type.String({ minLength: 1, maxLength: 2048 }),
                  merchant_id: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
                  secret: Type.Optional(Type.Union([Type.String({ maxLength: 100 }), Type.Null()])),
                  require_success_body: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
                },
                { additionalProperties: false },
              ),
              response: {
                200: Envelope(Data, 'The merchant status (and data.secret when generated)'),
                ...errors,
              },
            },
          },
          async (request) => {
            const b = request.body as {
              notify_url: string;
              merchant_id?: string;
              secret?: string | null;
              require_success_body?: boolean | null;
            };
            let secret = b.secret;
            if (secret === 'generate') secret = generateSecret();
            if (typeof secret === 'string' && !isValidSecret(secret)) {
              throw new HeraldError(
                'validation_failed',
                'secret must be whsec_ followed by base64 of 24-64 bytes.',
              );
            }
            let url: URL;
            try {
              url = new URL(b.notify_url);
            } catch {
              throw new HeraldError('invalid_notify_url', 'notify_url is not a URL.');
            }
            if (url.protocol !== 'http:' && url.protocol !== 'https:') {
              // No webhook can go to it: settings stored for it would never apply.
              throw new HeraldError('invalid_notify_url', 'notify_url must start with http:// or https://.');
            }
            let merchantKey = engine.merchantKey(url.href, b.merchant_id);
            let merchantId = b.merchant_id ?? null;
            if (b.merchant_id === undefined) {
              // Named by its URL only: the merchant of that URL, or else the one merchant keyed by its
              // merchantId whose webhooks go there (settings for a new `url:` merchant would never apply
              // to its webhooks, which would stay signed with the previous secret).
              const at = await engine.queue.merchantsAt(url.href);
              if (!at.some((x) => x.merchant_key === merchantKey)) {
                const byId = at.filter((x) => x.merchant_id !== null);
                if (byId.length === 1) {
                  merchantKey = (byId[0] as { merchant_key: string }).merchant_key;
                  merchantId = (byId[0] as { merchant_id: string }).merchant_id;
                } else if (byId.length > 1) {
                  throw new HeraldError(
                    'validation_failed',
                    'Several merchants receive their webhooks at this notify_url; name one with merchant_id.',
                    { merchant_keys: byId.slice(0, 10).map((x) => x.merchant_key) },
                  );
                }
              }
            }
            const m = await engine.queue.upsertMerchantSettings({
              merchantKey,
              merchantId,
              notifyUrl: url.href,
              ...(secret !== undefined ? { secret } : {}),
              ...(b.require_success_body !== undefined ? { requireSuccessBody: b.require_success_body } : {}),
            });
            deps.logger.info({ merchantKey: m.merchant_key }, 'merchant settings changed');
            return ok(
              { ...merchantView(engine, m), ...(b.secret === 'generate' ? { secret } : {}) },
              MSG_DONE,
            );
          },
        );

        admin.get(
          '/signing-secret',
          {
            schema: {
              summary: "The secret a merchant's webhooks are signed with (only when ADMIN_TOKEN is set)",
              querystring: Type.Object(MerchantRef),
              response: { 200: Envelope(Data, '{ merchant_key, secret, source }'), ...errors },
            },
          },
          async (request) => {
            if (!config.adminToken) {
              throw new HeraldError(
                'forbidden',
                'Set ADMIN_TOKEN to read signing secrets through the admin API.',
              );
            }
            const q = request.query as Ref;
            const m = await findMerchant(q);
            return ok({
              merchant_key: m?.merchant_key ?? engine.merchantKey(q.notify_url ?? '', q.merchant_id),
              secret: await engine.signingSecret(m),
              source: m?.secret ? 'merchant' : 'default',
            });
          },
        );
      },
      { prefix: '/admin/merchant-notify' },
    );
  });
}
