import { createHmac, randomBytes, randomUUID } from 'node:crypto';

/** `whsec_` + base64 of 24 to 64 bytes: the Standard Webhooks secret format. */
export const SECRET_RE = /^whsec_[A-Za-z0-9+/]{32,88}={0,2}$/;

export function isValidSecret(secret: string): boolean {
  if (!SECRET_RE.test(secret)) return false;
  const n = Buffer.from(secret.slice(6), 'base64').length;
  return n >= 24 && n <= 64;
}

/** A fresh secret of 32 random bytes. */
export function generateSecret(): string {
  return `whsec_${randomBytes(32).toString('base64')}`;
}

/** A webhook id: kept across redeliveries, so merchants can de-duplicate on `webhook-id`. */
export function newMessageId(): string {
  return `msg_${randomUUID().replaceAll('-', '')}`;
}

/**
 * The Standard Webhooks signature header value: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`,
 * keyed with the base64-decoded part of the `whsec_` secret.
 */
export function sign(secret: string, id: string, timestampSeconds: number, body: string): string {
  const key = Buffer.from(secret.startsWith('whsec_') ? secret.slice(6) : secret, 'base64');
  const mac = createHmac('sha256', key).update(`${id}.${timestampSeconds}.${body}`).digest('base64');
  return `v1,${mac}`;
}

/** The three Standard Webhooks headers for one request. */
export function signatureHeaders(
  secret: string,
  id: string,
  body: string,
  now: number = Date.now(),
): Record<'webhook-id' | 'webhook-timestamp' | 'webhook-signature', string> {
  const ts = Math.floor(now / 1000);
  return {
    'webhook-id': id,
    'webhook-timestamp': String(ts),
    'webhook-signature': sign(secret, id, ts, body),
  };
}
