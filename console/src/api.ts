/**
 * HTTP calls of the console. Every call sends the admin token (kept in sessionStorage for this tab)
 * as a Bearer token, and turns both error formats of Herald into an ApiError: `{ error: { code,
 * message } }` (Herald's API) and `{ code, msg, data }` (the merchant webhook admin API).
 */

const TOKEN_KEY = 'herald.console.token';

export function getToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string | null): void {
  try {
    if (token === null) sessionStorage.removeItem(TOKEN_KEY);
    else sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Storage disabled: the token lives as long as the page.
  }
  window.dispatchEvent(new Event('herald:token'));
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** The node has no such route: the feature is not deployed on it (yet). */
  get missingRoute(): boolean {
    return this.status === 404 && this.code === 'not_found' && /^No route /.test(this.message);
  }
}

/** Raised on 401: the console asks for the token again. */
function unauthorized(): void {
  window.dispatchEvent(new Event('herald:unauthorized'));
}

export interface CallOptions {
  method?: 'GET' | 'POST';
  body?: unknown;
  query?: Record<string, string | number | boolean | undefined | null>;
  signal?: AbortSignal;
}

export function withQuery(path: string, query: CallOptions['query']): string {
  if (!query) return path;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query))
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

export async function call<T>(path: string, opts: CallOptions = {}): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  const token = getToken();
  if (token) headers.authorization = `Bearer ${token}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(withQuery(path, opts.query), {
      method: opts.method ?? (opts.body === undefined ? 'GET' : 'POST'),
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal: opts.signal,
    });
  } catch (err) {
    if ((err as Error).name === 'AbortError') throw err;
    throw new ApiError(0, 'network_error', 'The node did not answer. Is it running and reachable?');
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  const body = (json ?? {}) as {
    error?: { code?: string; message?: string };
    code?: unknown;
    msg?: unknown;
    data?: unknown;
  };
  if (res.status === 401) unauthorized();
  if (!res.ok) {
    const code = body.error?.code ?? `http_${res.status}`;
    const message =
      body.error?.message ??
      (typeof body.msg === 'string' ? body.msg : `HTTP ${res.status} ${res.statusText}`);
    throw new ApiError(res.status, code, message);
  }
  if (json === undefined)
    throw new ApiError(res.status, 'invalid_response', 'The node answered without JSON.');
  return json as T;
}

/** The merchant webhook admin API: `{ code, msg, data }`, `code` 200 on success. */
export async function envelope<T>(path: string, opts: CallOptions = {}): Promise<T> {
  const body = await call<{ code: number; msg: string; data: T }>(`/admin/merchant-notify${path}`, opts);
  if (body.code !== 200) throw new ApiError(body.code, `code_${body.code}`, body.msg);
  return body.data;
}

/**
 * Payment tracking routes (/payments/*, /devices*) called through the console's admin proxy, which
 * acts for `appId` (its API key in apps mode); `appId` empty: every app (open mode only).
 */
export function asApp<T>(appId: string, path: string, opts: CallOptions = {}): Promise<T> {
  return call<T>(`/admin/api/as-app/${encodeURIComponent(appId || '-')}${path}`, opts);
}

export function describeError(err: unknown): string {
  if (err instanceof ApiError) {
    if (err.missingRoute) return `${err.message} This node does not serve this feature yet.`;
    return err.code && !err.code.startsWith('http_') ? `${err.message} (${err.code})` : err.message;
  }
  return (err as Error)?.message ?? String(err);
}

let routes: Promise<Set<string>> | undefined;

/**
 * Whether this node serves a route (`GET /admin/merchant-notify/alerts`), from its OpenAPI document,
 * so that the console shows "not available" for a feature the node lacks without calling it.
 * When the document cannot be read, every route is assumed to exist.
 */
export async function hasRoute(method: 'get' | 'post', path: string): Promise<boolean> {
  routes ??= fetch('/openapi.json')
    .then((r) =>
      r.ok
        ? (r.json() as Promise<{ paths?: Record<string, Record<string, unknown>> }>)
        : { paths: undefined },
    )
    .then((doc) => {
      if (!doc.paths) return new Set(['*']);
      const out = new Set<string>();
      for (const [p, methods] of Object.entries(doc.paths))
        for (const m of Object.keys(methods)) out.add(`${m} ${p}`);
      return out;
    })
    .catch(() => new Set(['*']));
  const set = await routes;
  return set.has('*') || set.has(`${method} ${path}`);
}

/** An ApiError saying the node lacks a route, as if it had been called. */
export function missing(method: string, path: string): ApiError {
  return new ApiError(404, 'not_found', `No route ${method.toUpperCase()} ${path}.`);
}

/** Calls `run` when the node serves `method path`, else fails with {@link missing}. */
export async function ifRoute<T>(method: 'get' | 'post', path: string, run: () => Promise<T>): Promise<T> {
  if (!(await hasRoute(method, path))) throw missing(method, path);
  return run();
}
