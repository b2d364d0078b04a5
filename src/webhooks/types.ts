import type { MerchantNotifyInput } from './index.js';

export type { MerchantNotifyInput };

/** Lifecycle of a queued webhook. `pending`, `retrying` and `delayed` are waiting to be sent. */
export type DeliveryStatus = 'pending' | 'retrying' | 'delayed' | 'delivered' | 'failed';

/** States in which a webhook is still queued. Keep in sync with the partial index of migration 010. */
export const QUEUED_STATUSES = `('pending', 'retrying', 'delayed')`;

export type BreakerState = 'closed' | 'open' | 'half_open';

/** How one attempt ended, as recorded in the attempt log and the metrics. */
export type AttemptOutcome =
  | 'success'
  | 'http_error'
  | 'bad_body'
  | 'network_error'
  | 'timeout'
  | 'gone'
  | 'refused'
  | 'disabled'
  /** Not sent: WEBHOOK_MAX_AGE passed (written by the store's sweep, no request). */
  | 'expired';

/** The result of one HTTP attempt (before it is written to the store). */
export interface AttemptResult {
  outcome: AttemptOutcome;
  statusCode: number | null;
  /** First 1 KiB of the response body, as text. */
  responseBody: string | null;
  durationMs: number;
  error: string | null;
  /** Seconds from a Retry-After header, when the merchant sent one. */
  retryAfterMs: number | null;
}

/** A claimed queue row, with what the sender needs from its merchant row. */
export interface ClaimedDelivery {
  id: string;
  seq: number;
  orderNo: string;
  eventType: string | null;
  merchantKey: string;
  notifyUrl: string;
  body: string;
  attempts: number;
  attemptBase: number;
  createdAt: Date;
  /** What WEBHOOK_MAX_AGE counts from: the last admin retry, else the creation. */
  ageFrom: Date;
  secret: string | null;
  requireSuccessBody: boolean | null;
  disabled: boolean;
  trial: boolean;
  /** The merchant was marked slow when this row was claimed. */
  slow: boolean;
}
