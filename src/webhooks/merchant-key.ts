import { createHash } from 'node:crypto';

/**
 * The merchant a notification belongs to: its `merchantId` when the producer gives one, otherwise a hash
 * of the notify URL's origin and path (the seed's `merchant_key`), so that query strings that differ per
 * order still map to one merchant.
 */
export function merchantKeyOf(notifyUrl: string, merchantId?: string | null): string {
  if (merchantId) return `id:${merchantId}`;
  return urlKey(notifyUrl);
}

/** `url:` + the first 16 hex characters of sha256(origin + path). */
export function urlKey(notifyUrl: string): string {
  let basis = notifyUrl;
  try {
    const u = new URL(notifyUrl);
    basis = `${u.origin}${u.pathname}`;
  } catch {
    // not a URL: hash the text as it is
  }
  return `url:${createHash('sha256').update(basis).digest('hex').slice(0, 16)}`;
}
