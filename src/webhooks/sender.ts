import { Agent, type Dispatcher } from 'undici';
import { type LookupAllFunction, type SharedLookup, SsrfError, sharedLookupFor } from './ssrf.js';
import type { AttemptResult } from './types.js';

/** Response bytes kept for the attempt log (and the `success` body check). */
const KEEP_BYTES = 1024;
/** Response bytes read at most; a longer body is cut off and its connection closed. */
const READ_LIMIT = 64 * 1024;
/** The longest Retry-After honoured. */
export const MAX_RETRY_AFTER_MS = 3_600_000;

export interface SenderOptions {
  /** Whole-request deadline, and undici's headers and body timeouts. */
  timeout: number;
  allowPrivateNetworks: boolean;
  userAgent: string;
  /** Connections kept per merchant origin. */
  connectionsPerOrigin: number;
  /**
   * @internal Test seam: the `dns.lookup` of the SSRF guard (a DNS server that never answers). Given, the
   * sender gets a shared lookup of its own; by default it uses the process-wide one over `dns.lookup`.
   */
  lookup?: LookupAllFunction;
  /** @internal With `lookup`: hostnames its shared lookup looks up at once (default MAX_HOST_LOOKUPS). */
  maxHostLookups?: number;
}

export interface SendRequest {
  url: string;
  body: string;
  headers: Record<string, string>;
  requireSuccessBody: boolean;
  /** Aborts the request (shutdown). */
  cancel?: Cancel;
}

/**
 * Aborts one request from outside (shutdown). A plain object rather than an AbortController: a
 * controller, its AbortSignal and the listeners on it cost a few percent of the dispatcher's CPU at
 * thousands of webhooks per second (profile of `npm run bench -- webhooks`).
 */
export class Cancel {
  aborted = false;
  /** Set by the sender while the request runs. */
  onAbort: ((err: Error) => void) | undefined = undefined;

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.onAbort?.(new AbortedByShutdown('aborted by shutdown'));
  }
}

interface Exchange {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  kept: Buffer[];
  total: number;
}

/**
 * One request over undici's dispatch API: the response body is read straight from the handler's
 * callbacks (first KEEP_BYTES kept, the connection cut after READ_LIMIT), with no AbortSignal, stream
 * or async iterator per request. `abort` is called with a function that aborts the request.
 */
function exchange(
  agent: Agent,
  opts: Dispatcher.DispatchOptions,
  setAbort: (abort: (err: Error) => void) => void,
): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const out: Exchange = { status: 0, headers: {}, kept: [], total: 0 };
    let keptBytes = 0;
    let cut = false;
    let settled = false;
    let pending: Error | undefined;
    let controller: Dispatcher.DispatchController | undefined;
    setAbort((err) => {
      if (controller) controller.abort(err);
      else pending = err;
    });
    const handler: Dispatcher.DispatchHandler = {
      onRequestStart(c) {
        controller = c;
        if (pending) c.abort(pending);
      },
      onResponseStart(_c, statusCode, headers) {
        if (statusCode < 200) return; // 1xx: the real answer follows
        out.status = statusCode;
        out.headers = headers as Exchange['headers'];
      },
      onResponseData(c, chunk) {
        out.total += chunk.length;
        if (keptBytes < KEEP_BYTES) {
          const part = chunk.subarray(0, KEEP_BYTES - keptBytes);
          out.kept.push(part);
          keptBytes += part.length;
        }
        if (out.total > READ_LIMIT && !cut) {
          cut = true;
          c.abort(new Error('response body over the read limit'));
        }
      },
      onResponseEnd() {
        if (settled) return;
        settled = true;
        resolve(out);
      },
      onResponseError(_c, err) {
        if (settled) return;
        settled = true;
        // A body cut off at the read limit is an answer (what was read is kept), not an error.
        if (cut) resolve(out);
        else reject(err);
      },
    };
    try {
      agent.dispatch(opts, handler);
    } catch (err) {
      settled = true;
      reject(err);
    }
  });
}

/**
 * Text a store can hold: NUL characters and unpaired UTF-16 surrogates replaced with U+FFFD. PostgreSQL
 * (and PGlite) refuse both in text and JSON (SQLSTATE 22P05 and the like), and one such value in a
 * results batch would fail the whole statement. Response bodies and error messages come from outside.
 */
export function storableText(s: string): string {
  const w = s as string & { isWellFormed(): boolean; toWellFormed(): string };
  const clean = w.isWellFormed() ? s : w.toWellFormed();
  return clean.includes('\u0000') ? clean.replaceAll('\u0000', '\uFFFD') : clean;
}

/** Thrown (as the result's error) when a request was aborted by shutdown rather than by its deadline. */
export class AbortedByShutdown extends Error {}

/** Parses Retry-After (seconds or an HTTP date) into milliseconds, capped at one hour. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | null {
  const text = Array.isArray(value) ? value[0] : value;
  if (!text) return null;
  const t = text.trim();
  let ms: number;
  if (/^\d+$/.test(t)) ms = Number(t) * 1000;
  else {
    const at = Date.parse(t);
    if (Number.isNaN(at)) return null;
    ms = at - now;
  }
  if (!Number.isFinite(ms) || ms < 0) return 0;
  return Math.min(ms, MAX_RETRY_AFTER_MS);
}

/** The `success` convention of Chinese payment platforms: the body is `success`, any case, spaces ignored. */
export function isSuccessBody(body: string): boolean {
  return body.replace(/\s+/g, '').toLowerCase() === 'success';
}

function describe(err: unknown): { timeout: boolean; message: string } {
  const e = err as Error & { code?: string; name?: string; cause?: unknown };
  const code = e.code ?? '';
  const timeout =
    e.name === 'TimeoutError' ||
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT' ||
    code === 'UND_ERR_CONNECT_TIMEOUT';
  const cause = e.cause instanceof Error ? `: ${e.cause.message}` : '';
  const message = `${code ? `${code} ` : ''}${e.message || String(err)}${cause}`.slice(0, 500);
  return { timeout, message };
}

/**
 * Sends webhooks over one undici Agent: keep-alive connection pools per merchant origin, headers and body
 * timeouts equal to the request timeout plus a whole-request deadline, no redirects (the Agent has no
 * redirect interceptor, so a 3xx is returned as it is and counts as a failure), and the SSRF guard both
 * before the request (every resolved address) and at connection time (the lookup of the socket).
 */
export class Sender {
  private readonly agent: Agent;
  private readonly dns: SharedLookup;

  constructor(private readonly opts: SenderOptions) {
    this.dns = sharedLookupFor(opts.lookup, opts.maxHostLookups);
    this.agent = new Agent({
      connections: opts.connectionsPerOrigin,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 120_000,
      headersTimeout: opts.timeout,
      bodyTimeout: opts.timeout,
      connect: {
        timeout: opts.timeout,
        ...(opts.allowPrivateNetworks ? {} : { lookup: this.dns.guardedLookup }),
      },
    });
  }

  async send(req: SendRequest): Promise<AttemptResult> {
    const started = performance.now();
    const elapsed = () => performance.now() - started;
    let url: URL;
    try {
      url = new URL(req.url);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('not an http(s) URL');
    } catch (err) {
      return fail('refused', `invalid notify URL: ${(err as Error).message}`, elapsed());
    }
    // One cleared timer per request for the whole-request deadline (AbortSignal.timeout() keeps a timer
    // that fires and builds a DOMException after every request).
    let abort: ((err: Error) => void) | undefined;
    const deadline = { aborted: false };
    const timer = setTimeout(() => {
      deadline.aborted = true;
      abort?.(new Error(`deadline of ${this.opts.timeout}ms`));
    }, this.opts.timeout);
    const cancel = req.cancel;
    // Hands `fn` the deadline and the shutdown cancel: first for the DNS lookup of the SSRF check, then
    // for the request.
    const wire = (fn: (err: Error) => void) => {
      abort = fn;
      if (deadline.aborted) fn(new Error(`deadline of ${this.opts.timeout}ms`));
      if (cancel) {
        cancel.onAbort = fn;
        if (cancel.aborted) fn(new AbortedByShutdown('aborted by shutdown'));
      }
    };
    try {
      if (cancel?.aborted) throw new AbortedByShutdown('aborted by shutdown');
      if (!this.opts.allowPrivateNetworks) {
        // getaddrinfo cannot be cancelled: at the deadline (or shutdown) the attempt stops waiting for it,
        // and the shared lookup goes on for whoever else waits on that host.
        await new Promise<void>((resolve, reject) => {
          const stop = this.dns.checkUrl(url, (err) => (err ? reject(err) : resolve()));
          wire((err) => {
            stop();
            reject(
              err instanceof AbortedByShutdown
                ? err
                : new Error(
                    `DNS lookup of ${url.hostname} unanswered at the deadline of ${this.opts.timeout}ms`,
                  ),
            );
          });
        });
      }
      const res = await exchange(
        this.agent,
        {
          origin: url.origin,
          path: `${url.pathname}${url.search}`,
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'user-agent': this.opts.userAgent,
            ...req.headers,
          },
          body: req.body,
          headersTimeout: this.opts.timeout,
          bodyTimeout: this.opts.timeout,
        },
        wire,
      );
      const { kept, total } = res;
      // Invalid UTF-8 (a binary body) decodes to U+FFFD, but a NUL byte decodes to a NUL character.
      const text = storableText(Buffer.concat(kept).toString('utf8'));
      const durationMs = elapsed();
      const status = res.status;
      const base = { statusCode: status, responseBody: text, durationMs };
      if (status >= 200 && status < 300) {
        if (req.requireSuccessBody && (total > KEEP_BYTES || !isSuccessBody(text))) {
          return {
            ...base,
            outcome: 'bad_body',
            error: 'the merchant answered 2xx without the body "success"',
            retryAfterMs: null,
          };
        }
        return { ...base, outcome: 'success', error: null, retryAfterMs: null };
      }
      if (status === 410) {
        return {
          ...base,
          outcome: 'gone',
          error: '410 Gone: the notify URL is disabled until an admin resets the merchant',
          retryAfterMs: null,
        };
      }
      const location = res.headers.location;
      const error =
        status >= 300 && status < 400
          ? storableText(`redirect to ${String(location ?? '?').slice(0, 200)} not followed`)
          : `HTTP ${status}`;
      return {
        ...base,
        outcome: 'http_error',
        error,
        retryAfterMs: parseRetryAfter(res.headers['retry-after']),
      };
    } catch (err) {
      if (cancel?.aborted && !deadline.aborted) throw new AbortedByShutdown('aborted by shutdown');
      if (err instanceof SsrfError || (err as { cause?: unknown }).cause instanceof SsrfError) {
        return fail(
          'refused',
          (err instanceof SsrfError ? err : (err as { cause: SsrfError }).cause).message,
          elapsed(),
        );
      }
      const d = describe(err);
      if (deadline.aborted || d.timeout) {
        return fail('timeout', `no complete answer within ${this.opts.timeout}ms (${d.message})`, elapsed());
      }
      return fail('network_error', d.message, elapsed());
    } finally {
      clearTimeout(timer);
      if (cancel) cancel.onAbort = undefined;
    }
  }

  async close(): Promise<void> {
    await this.agent.close().catch(() => this.agent.destroy());
  }

  /** Ends every connection at once (after a shutdown deadline). */
  async destroy(): Promise<void> {
    await this.agent.destroy().catch(() => undefined);
  }
}

function fail(outcome: AttemptResult['outcome'], error: string, durationMs: number): AttemptResult {
  return {
    outcome,
    statusCode: null,
    responseBody: null,
    durationMs,
    error: storableText(error),
    retryAfterMs: null,
  };
}
