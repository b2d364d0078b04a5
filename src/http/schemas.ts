import { type Static, type TSchema, Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { ValueErrorType } from '@sinclair/typebox/errors';
import type { Config } from '../config/index.js';
import { type ErrorCode, HeraldError } from '../errors.js';

export const ErrorSchema = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ description: 'Stable error code, e.g. validation_failed, no_target.' }),
      message: Type.String(),
      details: Type.Optional(Type.Unknown()),
    }),
  },
  { $id: 'Error', description: 'Every 4xx/5xx response of the HTTP API has this body.' },
);

/** The `response` entries of error statuses, all with the one error body. */
export function errorResponses(...statuses: number[]): Record<number, typeof ErrorSchema> {
  return Object.fromEntries(statuses.map((status) => [status, ErrorSchema]));
}

const AppId = Type.String({
  pattern: '^[A-Za-z0-9_.-]{1,64}$',
  description: 'Application id (Socket.IO namespace).',
});
// Control characters are C0, DEL and C1 (\p{Cc}), as the gateway checks them.
const Id = Type.String({ minLength: 1, maxLength: 128, pattern: '^[^\\u0000-\\u001f\\u007f-\\u009f]+$' });
const Topic = Type.String({
  minLength: 1,
  maxLength: 200,
  pattern: '^[^\\s\\u0000-\\u001f\\u007f-\\u009f]+$',
});

/** The body of POST /notify, with list limits from the config. */
export function notifySchema(config: Pick<Config, 'maxTargets'>) {
  return Type.Object(
    {
      appId: AppId,
      users: Type.Optional(
        Type.Array(Id, {
          maxItems: config.maxTargets,
          description: 'Client ids: every socket of each user.',
        }),
      ),
      devices: Type.Optional(Type.Array(Id, { maxItems: config.maxTargets, description: 'Device ids.' })),
      eventTopics: Type.Optional(
        Type.Array(Topic, { maxItems: config.maxTargets, description: 'Topics: every subscriber of each.' }),
      ),
      broadcast: Type.Optional(Type.Boolean({ description: 'Every socket of the app.' })),
      ack: Type.Optional(
        Type.Boolean({
          description: 'Receivers acknowledge it; GET /notify/{id} lists who received it and when.',
        }),
      ),
      data: Type.Unknown({ description: 'Delivered as the first argument of dataUpdate, exactly as given.' }),
    },
    { additionalProperties: false },
  );
}
export type NotifyBody = Static<ReturnType<typeof notifySchema>>;

export const NotifyAccepted = Type.Object(
  {
    id: Type.String({ description: 'Notification id, also in meta.id of dataUpdate.' }),
    ts: Type.Number({ description: 'Accepted at, milliseconds since the epoch.' }),
    delivered: Type.Optional(
      Type.Number({
        description:
          'Sockets reached (single-node mode only; absent in cluster mode). A fan-out to more than 2,048 sockets ' +
          '(or one published while such a fan-out is being written) is written over the next milliseconds, in ' +
          'publish order; it then counts the sockets it addresses.',
      }),
    ),
  },
  { $id: 'NotifyAccepted' },
);

export function batchSchema(config: Pick<Config, 'maxBatch'>) {
  return Type.Object(
    {
      notifications: Type.Array(Type.Unknown(), {
        minItems: 1,
        maxItems: config.maxBatch,
        description: 'Each item has the body of POST /notify; each is validated and answered on its own.',
      }),
    },
    { additionalProperties: false },
  );
}

export const BatchResult = Type.Object(
  {
    accepted: Type.Number(),
    rejected: Type.Number(),
    results: Type.Array(
      Type.Union([
        Type.Object({
          ok: Type.Literal(true),
          id: Type.String(),
          ts: Type.Number(),
          delivered: Type.Optional(Type.Number()),
        }),
        Type.Object({ ok: Type.Literal(false), error: ErrorSchema.properties.error }),
      ]),
    ),
  },
  { $id: 'BatchResult' },
);

/** Lists over a configured limit that have their own error code rather than `validation_failed`. */
const LIMIT_CODES: Record<string, ErrorCode> = {
  '/users': 'too_many_targets',
  '/devices': 'too_many_targets',
  '/eventTopics': 'too_many_targets',
  '/notifications': 'batch_too_large',
};

/** A compiled validator that reports errors as `{ path, message }` pairs. */
export function compile<T extends TSchema>(schema: T) {
  const checker = TypeCompiler.Compile(schema);
  return {
    check: (value: unknown): value is Static<T> => checker.Check(value),
    errors: (value: unknown) =>
      [...checker.Errors(value)].slice(0, 10).map((e) => ({ path: e.path || '/', message: e.message })),
    /** `too_many_targets` / `batch_too_large` when a failed value has a list over its limit. */
    limitError: (value: unknown): HeraldError | undefined => {
      for (const e of checker.Errors(value)) {
        const code = e.type === ValueErrorType.ArrayMaxItems ? LIMIT_CODES[e.path] : undefined;
        if (code) {
          const max = (e.schema as { maxItems?: number }).maxItems;
          return new HeraldError(code, `${e.path.slice(1)} holds more than ${max} entries.`, [
            { path: e.path, message: e.message },
          ]);
        }
      }
      return undefined;
    },
  };
}
