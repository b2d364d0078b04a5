import { HeraldError } from '../errors.js';
import '../input.js';

/** 1-200 characters, no whitespace, no control characters. */
const TOPIC_RE = /^[^\s\p{Cc}]{1,200}$/u;
/** Client and device ids: 1-128 characters, no control characters. */
const ID_RE = /^[^\p{Cc}]{1,128}$/u;

// Both also refuse unpaired UTF-16 surrogates: Redis, the stores and UTF-8 on the wire would each turn
// one into U+FFFD, so two different ids would become one.

export function isTopic(value: unknown): value is string {
  return typeof value === 'string' && value.length <= 200 && TOPIC_RE.test(value) && value.isWellFormed();
}

export function isId(value: unknown): value is string {
  return typeof value === 'string' && value.length <= 128 && ID_RE.test(value) && value.isWellFormed();
}

/** A merchant id (a machine's, or a token's claim): 1-128 characters, also a part of topics. */
export function isMerchantId(value: unknown): value is string {
  return typeof value === 'string' && value.length <= 128 && isTopic(value);
}

/**
 * Normalises the argument of subscribe/unsubscribe/subscribeCount/unsubscribeCount: one topic or
 * a list of them, at most `max`, de-duplicated in order. Throws a HeraldError naming the problem.
 */
export function parseTopics(arg: unknown, max: number): string[] {
  const list = typeof arg === 'string' ? [arg] : arg;
  if (!Array.isArray(list)) {
    throw new HeraldError('invalid_arguments', 'Pass a topic or an array of topics.');
  }
  if (list.length > max) {
    throw new HeraldError('too_many_topics', `At most ${max} topics per call; got ${list.length}.`);
  }
  const out: string[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < list.length; i++) {
    const t: unknown = list[i];
    if (!isTopic(t)) {
      const shown =
        typeof t === 'string' ? JSON.stringify(t.length > 40 ? `${t.slice(0, 40)}...` : t) : typeof t;
      throw new HeraldError(
        'invalid_topic',
        `Topic at index ${i} (${shown}) is invalid: a topic is 1-200 characters without whitespace or control characters.`,
      );
    }
    if (!seen.has(t)) {
      seen.add(t);
      out.push(t);
    }
  }
  return out;
}

function first(value: unknown): unknown {
  return Array.isArray(value) ? value[0] : value;
}

export interface HandshakeLike {
  headers: Record<string, string | string[] | undefined>;
  auth: Record<string, unknown>;
  query: Record<string, unknown>;
}

export interface RawIdentity {
  clientId: string | undefined;
  deviceId: string | undefined;
  token: string | undefined;
}

/**
 * Reads the identity a client claims: `x-client-id` / `x-device-id` headers (Node clients, as in the
 * seed examples), else `auth: { clientId, deviceId, token }` (browsers), else the query string
 * (`clientId`, `deviceId`, `token`). Throws when a given id is malformed.
 */
export function readIdentity(h: HandshakeLike): RawIdentity {
  const pick = (header: string, key: string): unknown => {
    const fromHeader = first(h.headers[header]);
    if (fromHeader !== undefined && fromHeader !== '') return fromHeader;
    const fromAuth = h.auth?.[key];
    if (fromAuth !== undefined && fromAuth !== null && fromAuth !== '') return fromAuth;
    const fromQuery = first(h.query?.[key]);
    if (fromQuery !== undefined && fromQuery !== '') return fromQuery;
    return undefined;
  };
  const clientId = pick('x-client-id', 'clientId');
  const deviceId = pick('x-device-id', 'deviceId');
  let token = pick('x-auth-token', 'token');
  if (token === undefined) {
    const authz = first(h.headers.authorization);
    if (typeof authz === 'string' && /^Bearer\s+/i.test(authz))
      token = authz.replace(/^Bearer\s+/i, '').trim();
  }
  if (clientId !== undefined && !isId(clientId)) {
    throw new HeraldError('invalid_client_id');
  }
  if (deviceId !== undefined && !isId(deviceId)) {
    throw new HeraldError('invalid_device_id');
  }
  if (token !== undefined && typeof token !== 'string') {
    throw new HeraldError('invalid_token', 'The token must be a string.');
  }
  return {
    clientId: clientId as string | undefined,
    deviceId: deviceId as string | undefined,
    token: token as string | undefined,
  };
}
