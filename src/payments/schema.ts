import { Type } from '@sinclair/typebox';
import { HeraldError } from '../errors.js';
import { compile, ErrorSchema } from '../http/schemas.js';
import { isStorableTime, jsonProblem, textProblem } from '../input.js';
import { currencyDigits } from './announce.js';
import { ORDER_STATES } from './state-machine.js';
import type { PaymentEvent } from './types.js';

/** Ids that also appear in topics (`order:<orderId>:status`, `devices:<merchantId>`): no whitespace. */
export const TOPIC_SAFE_ID_RE = /^[^\s\p{Cc}]{1,128}$/u;
const TopicSafeId = Type.String({ minLength: 1, maxLength: 128, pattern: '^[^\\s\\u0000-\\u001f\\u007f]+$' });
const Id = Type.String({ minLength: 1, maxLength: 128, pattern: '^[^\\u0000-\\u001f\\u007f]+$' });
const AppId = Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$', description: 'Application id.' });
const ISO_TIME_RE = '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}(:\\d{2}(\\.\\d{1,9})?)?(Z|[+-]\\d{2}:?\\d{2})$';

export const StateSchema = Type.Union(
  ORDER_STATES.map((s) => Type.Literal(s)),
  { description: `One of ${ORDER_STATES.join(', ')}.` },
);

/** Largest `meta` of one event, as JSON. */
export const MAX_META_BYTES = 8 * 1024;

/** A payment event as reported by a machine or a payment back-end. */
export const PaymentEventSchema = Type.Object(
  {
    eventId: Id,
    orderId: TopicSafeId,
    appId: AppId,
    merchantId: TopicSafeId,
    deviceId: Type.Optional(Id),
    type: StateSchema,
    amount: Type.Optional(
      Type.Number({
        minimum: 0,
        maximum: 1e14,
        description: 'In major units (4.00 CNY is 4); for refunded, the refunded amount.',
      }),
    ),
    currency: Type.Optional(
      Type.String({ pattern: '^[A-Z]{3}$', description: 'ISO 4217; default PAYMENT_CURRENCY.' }),
    ),
    occurredAt: Type.Union([Type.String({ pattern: ISO_TIME_RE }), Type.Integer({ minimum: 0 })], {
      description: 'When it happened: ISO 8601 with a time zone, or milliseconds since the epoch.',
    }),
    notifyUrl: Type.Optional(
      Type.String({ maxLength: 2048, description: 'Merchant server URL that receives every state change.' }),
    ),
    meta: Type.Optional(
      Type.Record(Type.String(), Type.Unknown(), {
        description: 'Free-form, stored with the event (up to 8 KiB); meta.reason explains failed/closed.',
      }),
    ),
  },
  { additionalProperties: false },
);

const eventValidator = compile(PaymentEventSchema);

/** Validates and normalises one event; throws `invalid_event` with the bad paths in `details`. */
/** The string fields of an event, checked for text the store cannot hold. */
const TEXT_FIELDS = [
  'eventId',
  'orderId',
  'appId',
  'merchantId',
  'deviceId',
  'currency',
  'notifyUrl',
] as const;

export function parseEvent(raw: unknown, defaultCurrency: string, pathPrefix = ''): PaymentEvent {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new HeraldError('invalid_event', 'A payment event is a JSON object.', [
      { path: pathPrefix || '/', message: 'Expected object' },
    ]);
  }
  if (!eventValidator.check(raw)) {
    const details = eventValidator
      .errors(raw)
      .map((e) => ({ ...e, path: `${pathPrefix}${e.path === '/' ? '' : e.path}` || '/' }));
    const first = details[0];
    throw new HeraldError(
      'invalid_event',
      first ? `Invalid payment event: ${first.path}: ${first.message}.` : undefined,
      details,
    );
  }
  const bad = (path: string, message: string): never => {
    throw new HeraldError('invalid_event', `Invalid payment event: ${pathPrefix}${path}: ${message}.`, [
      { path: `${pathPrefix}${path}`, message },
    ]);
  };
  // The store holds text without NUL characters or unpaired surrogates, and times in years 1-9999.
  for (const field of TEXT_FIELDS) {
    const v = raw[field];
    const problem = typeof v === 'string' ? textProblem(v) : undefined;
    if (problem) bad(`/${field}`, problem);
  }
  const occurredAt = new Date(raw.occurredAt);
  if (Number.isNaN(occurredAt.getTime())) bad('/occurredAt', 'not a valid time');
  if (!isStorableTime(occurredAt.getTime())) bad('/occurredAt', 'outside the years 1-9999');
  let notifyUrl: string | null = null;
  if (raw.notifyUrl !== undefined) {
    let u: URL | undefined;
    try {
      u = new URL(raw.notifyUrl);
    } catch {
      u = undefined;
    }
    if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:'))
      bad('/notifyUrl', 'expected an http(s) URL');
    notifyUrl = raw.notifyUrl;
  }
  if (raw.amount !== undefined) {
    const currency = raw.currency ?? defaultCurrency;
    const digits = Math.min(4, currencyDigits(currency));
    if (Math.abs(Number(raw.amount.toFixed(digits)) - raw.amount) > 1e-9) {
      bad('/amount', `more than ${digits} decimals for ${currency}`);
    }
  }
  let meta: Record<string, unknown> | null = null;
  let reason: string | null = null;
  if (raw.meta !== undefined) {
    const problem = jsonProblem(raw.meta, true);
    if (problem) bad(`/meta${problem.path}`, problem.message);
    if (Buffer.byteLength(JSON.stringify(raw.meta)) > MAX_META_BYTES) {
      bad('/meta', `larger than ${MAX_META_BYTES} bytes as JSON`);
    }
    meta = raw.meta;
    const r = raw.meta.reason;
    if (r !== undefined) {
      if (typeof r !== 'string' || r.length === 0 || r.length > 200)
        bad('/meta/reason', 'expected 1-200 characters');
      reason = r as string;
    }
  }
  return {
    eventId: raw.eventId,
    orderId: raw.orderId,
    appId: raw.appId,
    merchantId: raw.merchantId,
    deviceId: raw.deviceId ?? null,
    type: raw.type,
    amount: raw.amount ?? null,
    currency: raw.currency ?? null,
    occurredAt,
    notifyUrl,
    meta,
    reason,
  };
}

// ---- HTTP shapes (validation of queries, OpenAPI documentation of bodies and responses) ----

export const ReportOk = Type.Object({
  ok: Type.Literal(true),
  eventId: Type.String(),
  orderId: Type.String(),
  state: StateSchema,
  duplicate: Type.Optional(Type.Literal(true, { description: 'The eventId was seen before.' })),
  stale: Type.Optional(Type.Literal(true, { description: 'The order is already in or past this state.' })),
});

export const ReportError = Type.Object({ ok: Type.Literal(false), error: ErrorSchema.properties.error });

export function eventsBodySchema(maxBatch: number) {
  return Type.Union([
    PaymentEventSchema,
    Type.Object(
      {
        events: Type.Array(PaymentEventSchema, {
          minItems: 1,
          maxItems: maxBatch,
          description: 'Up to MAX_BATCH events; each is answered on its own, in order.',
        }),
      },
      { additionalProperties: false },
    ),
  ]);
}

export const BatchReport = Type.Object({
  accepted: Type.Integer(),
  rejected: Type.Integer(),
  results: Type.Array(Type.Union([ReportOk, ReportError])),
});

const Time = Type.String({ description: 'ISO 8601.' });
const Nullable = <T extends ReturnType<typeof Type.String> | ReturnType<typeof Type.Number>>(t: T) =>
  Type.Union([t, Type.Null()]);

export const OrderSchema = Type.Object({
  appId: Type.String(),
  orderId: Type.String(),
  merchantId: Type.String(),
  state: StateSchema,
  reason: Nullable(Type.String()),
  amount: Nullable(Type.Number()),
  currency: Nullable(Type.String()),
  refundedAmount: Nullable(Type.Number()),
  notifyUrl: Nullable(Type.String()),
  deviceId: Nullable(Type.String()),
  version: Type.Integer({ description: 'Transitions so far.' }),
  createdAt: Time,
  updatedAt: Time,
});

export const HistoryEntrySchema = Type.Object({
  eventId: Type.String(),
  type: StateSchema,
  outcome: Type.Union([Type.Literal('transition'), Type.Literal('stale')]),
  from: Nullable(Type.String()),
  to: Nullable(Type.String()),
  reason: Nullable(Type.String()),
  deviceId: Nullable(Type.String()),
  amount: Nullable(Type.Number()),
  currency: Nullable(Type.String()),
  source: Type.String(),
  occurredAt: Time,
  receivedAt: Time,
  meta: Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()]),
});

export const OrderWithHistory = Type.Intersect([
  OrderSchema,
  Type.Object({ events: Type.Array(HistoryEntrySchema) }),
]);

const TimeQuery = Type.String({
  minLength: 1,
  maxLength: 40,
  description: 'ISO 8601 time or milliseconds since the epoch.',
});

export const OrderQuery = Type.Object({ appId: Type.Optional(AppId) }, { additionalProperties: false });

/** Query strings arrive as text (the validator does not coerce): numbers and booleans are patterns. */
const IntQuery = (description: string) => Type.String({ pattern: '^[1-9][0-9]{0,6}$', description });
const BoolQuery = (description: string) =>
  Type.Union([Type.Literal('true'), Type.Literal('false')], { description });

export const OrdersQuery = Type.Object(
  {
    appId: Type.Optional(AppId),
    merchantId: Type.Optional(TopicSafeId),
    state: Type.Optional(StateSchema),
    from: Type.Optional(TimeQuery),
    to: Type.Optional(TimeQuery),
    page: Type.Optional(IntQuery('Page, from 1 (default 1).')),
    limit: Type.Optional(IntQuery('Orders per page, 1-500 (default 50).')),
    cursor: Type.Optional(
      Type.String({
        maxLength: 1024,
        description:
          'The nextCursor of the previous page: the page starts after it, so orders created meanwhile are neither skipped nor repeated (not with page).',
      }),
    ),
  },
  { additionalProperties: false },
);

export const OrdersPage = Type.Object({
  orders: Type.Array(OrderSchema),
  page: Type.Integer(),
  limit: Type.Integer(),
  total: Type.Integer(),
  nextCursor: Type.Union([Type.String(), Type.Null()], {
    description: 'Where this page ended, for ?cursor=; null when the page is not full (the last one).',
  }),
});

export const StatsQuery = Type.Object(
  {
    appId: Type.Optional(AppId),
    merchantId: Type.Optional(TopicSafeId),
    from: Type.Optional(TimeQuery),
    to: Type.Optional(TimeQuery),
    minutes: Type.Optional(IntQuery('Throughput window in minutes, 1-1440 (default 60).')),
  },
  { additionalProperties: false },
);

export const StatsSchema = Type.Object({
  counts: Type.Record(Type.String(), Type.Integer(), { description: 'Orders per state.' }),
  total: Type.Integer(),
  finished: Type.Integer({ description: 'Orders in succeeded, failed, closed or refunded.' }),
  successRate: Type.Union([Type.Number(), Type.Null()], {
    description: '(succeeded + refunded) / finished; null when nothing finished.',
  }),
  throughput: Type.Object({
    minutes: Type.Integer(),
    eventsPerMinute: Type.Number({ description: 'Average accepted events per minute over the window.' }),
    transitionsPerMinute: Type.Number(),
    perMinute: Type.Array(
      Type.Object({ minute: Type.String(), events: Type.Integer(), transitions: Type.Integer() }),
    ),
  }),
});

export const DevicesQuery = Type.Object(
  {
    appId: Type.Optional(AppId),
    merchantId: Type.Optional(TopicSafeId),
    online: Type.Optional(BoolQuery('Only machines that are (true) or are not (false) online.')),
    page: Type.Optional(IntQuery('Page, from 1 (default 1).')),
    limit: Type.Optional(IntQuery('Machines per page, 1-5000 (default 500).')),
  },
  { additionalProperties: false },
);

export const MachineSchema = Type.Object({
  appId: Type.String(),
  deviceId: Type.String(),
  merchantId: Type.String(),
  online: Type.Boolean(),
  lastSeenAt: Time,
  connectedAt: Nullable(Type.String()),
  disconnectedAt: Nullable(Type.String()),
});

export const DevicesPage = Type.Object({
  devices: Type.Array(MachineSchema),
  page: Type.Integer(),
  limit: Type.Integer(),
  total: Type.Integer(),
});

export const CommandParams = Type.Object({ deviceId: Id });

export const OrderParams = Type.Object({ orderId: Id });

export const CommandBody = Type.Object(
  {
    appId: AppId,
    command: Type.String({ minLength: 1, maxLength: 128, description: 'Command name, e.g. reboot.' }),
    args: Type.Optional(Type.Unknown({ description: 'Anything JSON; delivered as is.' })),
    timeoutMs: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 120_000,
        description: 'How long to wait for the answer (default COMMAND_TIMEOUT).',
      }),
    ),
  },
  { additionalProperties: false },
);

export const CommandReply = Type.Object({
  id: Type.String({ description: 'Command id, also in the `command` event.' }),
  deviceId: Type.String(),
  reply: Type.Unknown({ description: "The machine's answer (the ack of the command event)." }),
});

/** Reads a time given as ISO 8601 or milliseconds; throws validation_failed naming the parameter. */
export function parseTime(value: string | undefined, name: string): Date | undefined {
  if (value === undefined) return undefined;
  const d = /^\d+$/.test(value) ? new Date(Number(value)) : new Date(value);
  if (Number.isNaN(d.getTime())) {
    throw new HeraldError('validation_failed', `${name} is not a time: give ISO 8601 or milliseconds.`, [
      { path: `/${name}`, message: 'Expected a time' },
    ]);
  }
  if (!isStorableTime(d.getTime())) {
    throw new HeraldError('validation_failed', `${name} is outside the years 1-9999.`, [
      { path: `/${name}`, message: 'Expected a time in the years 1-9999' },
    ]);
  }
  return d;
}

/** Reads an integer query parameter within [1, max]; throws validation_failed naming it. */
export function intParam(value: string | undefined, name: string, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1 || n > max) {
    throw new HeraldError('validation_failed', `${name} must be an integer from 1 to ${max}.`, [
      { path: `/${name}`, message: `Expected 1-${max}` },
    ]);
  }
  return n;
}
