import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
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

/**
 * The longest path parameter the router matches (Fastify's default, 100, answered 414 with its own
 * body). An id may have 128 characters: with 3 bytes of UTF-8 each, percent-encoded or not, it fits
 * with room to spare, and a parameter longer than its route allows reaches the route, whose schema
 * answers 400 `validation_failed`. Beyond this, the router refuses the path (also 400
 * `validation_failed`, see `frameworkError`).
 */
export const MAX_PARAM_LENGTH = 1024;

/**
 * Errors Fastify's router answers before any route or hook (`frameworkErrors`): a URL that does not
 * decode (`%ZZ`, bad UTF-8, a bare `%`), a path parameter over `MAX_PARAM_LENGTH`.
 */
export function frameworkError(err: FastifyError): HeraldError {
  switch (err.code) {
    case 'FST_ERR_BAD_URL':
      return new HeraldError(
        'bad_request',
        'The URL is malformed: not a path, or a percent-encoded sequence that does not decode to UTF-8 text.',
      );
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return new HeraldError(
        'validation_failed',
        `A path parameter is longer than ${MAX_PARAM_LENGTH} characters.`,
        [{ path: '/', message: `Expected string length less or equal to ${MAX_PARAM_LENGTH}` }],
      );
    default:
      return toHeraldError(err);
  }
}

/**
 * The raw HTTP response to a request Node's HTTP parser refused (`clientError`: a request line and
 * headers over the size limit, a malformed request, a request head that came too slowly), with the
 * Herald error body and `Connection: close`; undefined when nothing may be written (the connection is
 * reset, or a response is already being written on it).
 */
export function clientErrorResponse(err: NodeJS.ErrnoException, socket: Duplex): string | undefined {
  if (err.code === 'ECONNRESET' || socket.destroyed || !socket.writable) return undefined;
  // As Node does: never write into a response that has started on this connection (pipelining).
  const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (inFlight?.headersSent) return undefined;
  let status = 400;
  let message = 'The request is malformed and could not be parsed as HTTP/1.1.';
  if (err.code === 'HPE_HEADER_OVERFLOW') {
    status = 431;
    message = 'The request line and headers are larger than the server accepts; shorten the URL or headers.';
  } else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    status = 408;
    message = 'The request was not received in time.';
  }
  const body = JSON.stringify({ error: new HeraldError('bad_request', message).toBody() });
  return (
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n` +
    'Content-Type: application/json; charset=utf-8\r\n' +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    'Connection: close\r\n\r\n' +
    body
  );
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
    // Valid ids are up to 128 characters (see MAX_PARAM_LENGTH).
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: MAX_PARAM_LENGTH },
    // Malformed URLs and over-long path parameters: Herald's error body, not Fastify's.
    frameworkErrors: (err, request, reply) => {
      const he = frameworkError(err);
      metrics.httpErrors.inc({ code: he.code });
      if (he.code === 'internal_error') request.log.error({ err, url: request.url }, 'request failed');
      return sendError(reply, he);
    },
    // Requests Node's HTTP parser refuses (431 head too large, 400 malformed): Herald's error body too.
    clientErrorHandler: (err, socket) => {
      const response = clientErrorResponse(err, socket);
      if (response !== undefined) {
        metrics.httpErrors.inc({ code: 'bad_request' });
        socket.write(response);
      }
      socket.destroy();
    },
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
