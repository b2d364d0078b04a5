import type { IncomingMessage, ServerResponse } from 'node:http';
import type { HeraldError } from '../errors.js';

/** What a fast route's handler answers: a status and a JSON body. */
export interface FastResult {
  status: number;
  body: unknown;
}

/** Handles a parsed JSON body; throws (any error, mapped like Fastify's error handler) to answer an error. */
export type FastHandler = (body: unknown, request: IncomingMessage) => Promise<FastResult>;

interface FastRoute {
  bodyLimit: number;
  handler: FastHandler;
}

export interface FastRoutesDeps {
  /** Parses a body as the Fastify content-type parser does (throws `invalid_json`). */
  parseJson: (text: string) => unknown;
  /** Maps an error as Fastify's error handler does (count, log) and returns it as a HeraldError. */
  onError: (err: unknown, request: IncomingMessage) => HeraldError;
  /** True once the server closes: the request is left to Fastify (its 503 `shutting_down`). */
  closing: () => boolean;
  /** Headers every response of the Fastify app carries for a request without `Origin` (CORS `Vary`). */
  headers: Record<string, string>;
}

/** Content types the Fastify app reads as JSON (see `addContentTypeParser('*')`) that the fast path takes. */
const JSON_TYPES = /^\s*(application\/json|text\/plain|application\/x-www-form-urlencoded)\s*(;|$)/i;

/**
 * A direct `node:http` path for the hot POST routes (`/notify`, `/notify/batch`), in front of Fastify.
 *
 * Fastify's per-request machinery (request and reply objects, a child logger, the hook chains, the
 * CORS hook, content-type lookup, the serializer) costs about as much CPU as the notification itself.
 * The fast path takes only the plain case: POST, exact path (a trailing slash allowed, as Fastify's
 * `ignoreTrailingSlash`), no query string, no `Origin` header (CORS), a `content-length` body within
 * the route's limit, a JSON-like content type, server not closing. Everything else (CORS requests,
 * chunked or oversized bodies, other content types, shutdown) goes to Fastify, which has the same
 * route with the same handler, schema, error codes and OpenAPI description. Bodies are parsed and
 * validated with the same functions, errors are mapped, counted and logged by the same function, and
 * responses have the same status, body and content type.
 */
export class FastRoutes {
  private readonly routes = new Map<string, FastRoute>();

  constructor(private readonly deps: FastRoutesDeps) {}

  /** Serves POST `path` on the fast path too (the Fastify route must exist as well: it is the fallback). */
  post(path: string, bodyLimit: number, handler: FastHandler): void {
    this.routes.set(path, { bodyLimit, handler });
  }

  /** Takes the request when it is a plain one for a fast route; false leaves it to Fastify. */
  dispatch(req: IncomingMessage, res: ServerResponse): boolean {
    if (req.method !== 'POST' || this.routes.size === 0) return false;
    let url = req.url ?? '';
    if (url.length > 1 && url.charCodeAt(url.length - 1) === 47 /* / */) url = url.slice(0, -1);
    const route = this.routes.get(url);
    if (!route) return false;
    const h = req.headers;
    if (h.origin !== undefined || h['transfer-encoding'] !== undefined) return false;
    const cl = h['content-length'];
    if (cl === undefined) return false;
    const length = Number(cl);
    if (!Number.isInteger(length) || length <= 0 || length > route.bodyLimit) return false;
    const type = h['content-type'];
    if (type !== undefined && !JSON_TYPES.test(type)) return false;
    if (this.deps.closing()) return false;

    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const text =
        chunks.length === 1 ? (chunks[0] as Buffer).toString('utf8') : Buffer.concat(chunks).toString('utf8');
      let body: unknown;
      try {
        body = this.deps.parseJson(text);
      } catch (err) {
        this.fail(err, req, res);
        return;
      }
      route.handler(body, req).then(
        (r) => this.send(res, r.status, r.body),
        (err: unknown) => this.fail(err, req, res),
      );
    });
    // An aborted or broken upload: Fastify answers 400 (invalid_json) when the connection still stands.
    req.on('error', (err) => this.fail(Object.assign(err, { statusCode: 400 }), req, res));
    return true;
  }

  private fail(err: unknown, req: IncomingMessage, res: ServerResponse): void {
    const he = this.deps.onError(err, req);
    this.send(res, he.status, { error: he.toBody() });
  }

  private send(res: ServerResponse, status: number, body: unknown): void {
    if (res.headersSent || res.destroyed) return;
    const text = JSON.stringify(body);
    res.writeHead(status, {
      ...this.deps.headers,
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  }
}
