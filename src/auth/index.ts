import { createHash, timingSafeEqual } from 'node:crypto';
import { errors as joseErrors, jwtVerify } from 'jose';
import type { AppConfig } from '../config/index.js';
import { HeraldError } from '../errors.js';
import { isId, isMerchantId } from '../gateway/validate.js';

export type AccessMode = 'open' | 'apps';

/**
 * Seconds a client token's `exp` and `nbf` may be off from this server's clock: a back-end whose clock
 * runs a little ahead signs a token with `nbf` (or `iat`-based `nbf`) this server would take as not valid
 * yet for a few seconds (the usual allowance of JWT libraries).
 */
export const JWT_CLOCK_TOLERANCE_S = 30;

export interface ClientIdentity {
  clientId: string;
  deviceId: string | undefined;
  /** Apps mode: the `merchantId` claim of the token, which machines cannot change at the handshake. */
  merchantId?: string;
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Compares two secrets in constant time (their SHA-256 digests, so lengths do not leak either). */
export function safeEqual(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

/** Reads `Authorization: Bearer <token>`; returns undefined when absent or of another scheme. */
export function bearer(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1] : undefined;
}

/**
 * Whether `Authorization` carries `Bearer <token>`, compared in constant time: the check of every
 * operator token (ADMIN_TOKEN, METRICS_TOKEN).
 */
export function bearerMatches(authorization: string | undefined, token: string): boolean {
  const given = bearer(authorization);
  return given !== undefined && safeEqual(given, token);
}

/**
 * Access control. `open` mode (no apps configured): any appId, no credentials. `apps` mode: only the
 * configured apps; the HTTP API needs one of the app's API keys and clients need a JWT (HS256) signed
 * with the app's secret whose `sub` is the client id.
 */
export class AccessControl {
  readonly mode: AccessMode;
  private readonly apps = new Map<string, { secret: Uint8Array; keys: Buffer[] }>();

  constructor(apps: readonly AppConfig[]) {
    this.mode = apps.length === 0 ? 'open' : 'apps';
    for (const app of apps) {
      this.apps.set(app.id, {
        secret: new TextEncoder().encode(app.secret),
        keys: app.apiKeys.map(digest),
      });
    }
  }

  /** Whether this appId may be used at all. */
  knows(appId: string): boolean {
    return this.mode === 'open' || this.apps.has(appId);
  }

  appIds(): string[] {
    return [...this.apps.keys()];
  }

  /**
   * Checks the Authorization header of an HTTP API call for `appId`. Throws `unknown_app`,
   * `unauthorized` (no or unknown key) or `forbidden` (a key of another app).
   */
  checkApiKey(appId: string, authorization: string | undefined): void {
    if (this.mode === 'open') return;
    const app = this.apps.get(appId);
    const key = bearer(authorization);
    if (!key) throw new HeraldError('unauthorized', 'Send Authorization: Bearer <apiKey> of the app.');
    const d = digest(key);
    if (app?.keys.some((k) => timingSafeEqual(k, d))) return;
    for (const other of this.apps.values()) {
      if (other.keys.some((k) => timingSafeEqual(k, d))) {
        if (!app) throw new HeraldError('unknown_app', `No app ${JSON.stringify(appId)} is configured.`);
        throw new HeraldError('forbidden', `This API key does not belong to app ${JSON.stringify(appId)}.`);
      }
    }
    throw new HeraldError('unauthorized', 'Unknown API key.');
  }

  /** The app an API key belongs to, if any. */
  appOfKey(authorization: string | undefined): string | undefined {
    const key = bearer(authorization);
    if (!key) return undefined;
    const d = digest(key);
    for (const [id, app] of this.apps) if (app.keys.some((k) => timingSafeEqual(k, d))) return id;
    return undefined;
  }

  /**
   * Verifies a client's JWT for `appId` and returns the identity it grants. In `open` mode returns
   * undefined (the handshake's own identity is used).
   */
  async verifyClient(appId: string, token: string | undefined): Promise<ClientIdentity | undefined> {
    if (this.mode === 'open') return undefined;
    const app = this.apps.get(appId);
    if (!app) throw new HeraldError('unknown_app', `No app ${JSON.stringify(appId)} is configured.`);
    if (!token) throw new HeraldError('invalid_token', 'This app needs a token: auth: { token } or ?token=.');
    try {
      const { payload } = await jwtVerify(token, app.secret, {
        algorithms: ['HS256'],
        clockTolerance: JWT_CLOCK_TOLERANCE_S,
      });
      if (typeof payload.sub !== 'string' || payload.sub.length === 0) {
        throw new HeraldError('invalid_token', 'The token has no sub (client id).');
      }
      // Claims are ids like those a client gives at the handshake, with the same rules (a claim that is
      // not a string is ignored, as before).
      if (!isId(payload.sub)) {
        throw new HeraldError(
          'invalid_token',
          'The token sub (client id) is not a valid id: 1-128 characters, no control characters.',
        );
      }
      if (typeof payload.deviceId === 'string' && !isId(payload.deviceId)) {
        throw new HeraldError(
          'invalid_token',
          'The token deviceId is not a valid id: 1-128 characters, no control characters.',
        );
      }
      if (typeof payload.merchantId === 'string' && !isMerchantId(payload.merchantId)) {
        throw new HeraldError(
          'invalid_token',
          'The token merchantId is not a valid merchant id: 1-128 characters, no whitespace or control characters.',
        );
      }
      const deviceId = typeof payload.deviceId === 'string' ? payload.deviceId : undefined;
      const identity: ClientIdentity = { clientId: payload.sub, deviceId };
      if (typeof payload.merchantId === 'string') identity.merchantId = payload.merchantId;
      return identity;
    } catch (err) {
      if (err instanceof HeraldError) throw err;
      const reason =
        err instanceof joseErrors.JWTExpired
          ? 'the token has expired'
          : err instanceof joseErrors.JWTClaimValidationFailed && err.claim === 'nbf'
            ? `the token is not valid yet (nbf more than ${JWT_CLOCK_TOLERANCE_S} s ahead of this server's clock)`
            : err instanceof joseErrors.JWTClaimValidationFailed
              ? `its ${err.claim} claim is not valid (${err.reason})`
              : err instanceof joseErrors.JWSSignatureVerificationFailed
                ? 'the signature does not match the app secret'
                : err instanceof joseErrors.JOSEAlgNotAllowed
                  ? 'only HS256 tokens are accepted'
                  : 'the token is malformed or invalid';
      throw new HeraldError('invalid_token', `Invalid token: ${reason}.`);
    }
  }
}
