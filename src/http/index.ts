import type { IncomingMessage, ServerResponse } from 'node:http';
import cors from '@fastify/cors';
import swagger from '@fastify/swagger';
import type { TSchema } from '@sinclair/typebox';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import type { Config } from '../config/index.js';
import { type ErrorCode, ErrorCodes, HeraldError, isHeraldError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics/index.js';
import { FastRoutes } from './fast.js';
import { compile } from './schemas.js';

export interface HttpDeps {
  config: Config;
  logger: Logger;
  metrics: Metrics;
  version: string;
}

/** Sends `{ error: { code, message, details? } }` with the code's status. */
export function sendError(reply: FastifyReply, err: HeraldError): FastifyReply {
  return reply.code(err.status).send({ error: err.toBody() });
}

const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'body_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_INVALID_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'invalid_json',
  FST_ERR_CTP_EMPTY_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_INVALID_TYPE: 'unsupported_media_type',
};

function parseJson(text: string): unknown {
  if (text.trim() === '')
    throw new HeraldError('invalid_json', 'The request body is empty; send a JSON object.');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HeraldError('invalid_json', `The request body is not valid JSON: ${(err as Error).message}`);
  }
}

/** Maps any error thrown while serving a request to a HeraldError. */
export function toHeraldError(err: unknown): HeraldError {
  if (isHeraldError(err)) return err;
  const e = err as FastifyError & { validation?: { path: string; message: string }[] };
  if (e.validation) {
    return new HeraldError('validation_failed', `Invalid request: ${e.message}`, e.validation);
  }
  const mapped = e.code ? FASTIFY_CODES[e.code] : undefined;
  if (mapped === 'body_too_large') {
    return new HeraldError('body_too_large', 'The request body is larger than the limit of this route.');
  }
  if (mapped) return new HeraldError(mapped, e.message);
  if (e.statusCode === 404) return new HeraldError('not_found');
  if (e.statusCode === 405) return new HeraldError('method_not_allowed');
  if (e instanceof SyntaxError || e.statusCode === 400) return new HeraldError('invalid_json', e.message);
  return new HeraldError('internal_error');
}

/** The fast path of each app made by `createHttp` (see `FastRoutes`). */
const fastRoutesOf = new WeakMap<object, FastRoutes>();

/** The fast path in front of an app made by `createHttp`, for its hot POST routes. */
export function fastRoutes(app: FastifyInstance): FastRoutes | undefined {
  return fastRoutesOf.get(app);
}

/** The validation error of a body a compiled schema rejected, as the validator compiler reports it. */
export function validationError(v: ReturnType<typeof compile>, data: unknown): Error {
  const limit = v.limitError(data);
  if (limit) return limit;
  const details = v.errors(data);
  const first = details[0];
  const err = new Error(first ? `${first.path}: ${first.message}` : 'invalid') as Error & {
    validation: unknown;
  };
  err.validation = details;
  return err;
}

/**
 * The HTTP API server: JSON in and out (also accepting JSON sent as text/plain or form-encoded, as
 * `fetch` and `curl -d` send it without a header), TypeBox schemas that are both the validation and
 * the OpenAPI document, and one error format.
 */
export async function createHttp(deps: HttpDeps): Promise<FastifyInstance> {
  return (await build(deps)) as unknown as FastifyInstance;
}

async function build(deps: HttpDeps) {
  const { config, logger, metrics } = deps;
  const app = Fastify({
    // Request logs only at debug/trace: one line per request would cost more than the request itself.
    loggerInstance: logger.child(
      { part: 'http' },
      { level: config.logLevel === 'debug' || config.logLevel === 'trace' ? config.logLevel : 'warn' },
    ),
    bodyLimit: config.bodyLimit,
    forceCloseConnections: 'idle',
    // Fastify's own 503 while closing has a body of another shape; the onRequest hook below answers instead.
    return503OnClosing: false,
    keepAliveTimeout: 65_000,
    routerOptions: { ignoreTrailingSlash: true },
  });

  // Requests that arrive (on open keep-alive connections) while the server closes: 503 shutting_down.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  // A callback hook, not an async one: no promise per request.
  app.addHook('onRequest', (_request, reply, done) => {
    if (!closing) return done();
    metrics.httpErrors.inc({ code: 'shutting_down' });
    reply.header('connection', 'close');
    sendError(reply, new HeraldError('shutting_down'));
  });

  app.setValidatorCompiler(({ schema }) => {
    const v = compile(schema as TSchema);
    return (data: unknown) => (v.check(data) ? { value: data } : { error: validationError(v, data) });
  });

  // Every body is JSON, whatever the Content-Type says.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseJson(body as string));
    } catch (err) {
      done(err as Error, undefined);
    }
  });

  await app.register(cors, {
    origin: config.corsOrigins.includes('*') ? true : config.corsOrigins,
    methods: ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'],
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Herald HTTP API',
        version: deps.version,
        description:
          'Publish notifications to Herald clients. Errors always have the body {"error":{"code","message","details?"}}. ' +
          `Error codes: ${Object.keys(ErrorCodes).join(', ')}.`,
      },
      components: {
        securitySchemes: {
          apiKey: { type: 'http', scheme: 'bearer', description: 'An API key of the app (apps mode).' },
        },
      },
    },
  });

  const onError = (err: unknown, log: Pick<Logger, 'error'>, url: string | undefined): HeraldError => {
    const he = toHeraldError(err);
    metrics.httpErrors.inc({ code: he.code });
    if (he.code === 'internal_error') log.error({ err, url }, 'request failed');
    return he;
  };
  app.setErrorHandler((err, request, reply) => sendError(reply, onError(err, request.log, request.url)));

  // POST /notify and /notify/batch in front of Fastify (see FastRoutes); other requests go on to it.
  const fast = new FastRoutes({
    parseJson,
    onError: (err, req) => onError(err, app.log, req.url),
    closing: () => closing,
    // @fastify/cors adds `Vary: Origin` to every response when the allowed origins are not one string.
    headers: { vary: 'Origin' },
  });
  const server = app.server;
  const fastify = server.listeners('request') as ((...args: unknown[]) => void)[];
  server.removeAllListeners('request');
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (!fast.dispatch(req, res)) for (const l of fastify) l.call(server, req, res);
  });
  fastRoutesOf.set(app, fast);
  app.setNotFoundHandler((request, reply) => {
    metrics.httpErrors.inc({ code: 'not_found' });
    return sendError(
      reply,
      new HeraldError('not_found', `No route ${request.method} ${request.url.split('?')[0]}.`),
    );
  });

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
