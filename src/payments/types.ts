import type { EventType, OrderState } from './state-machine.js';

/** Where an event came from. `timeout` events are made by the sweep, not reported. */
export type EventSource = 'http' | 'socket' | 'timeout';

/** A payment event after validation (see `parseEvent`). */
export interface PaymentEvent {
  eventId: string;
  orderId: string;
  appId: string;
  merchantId: string;
  deviceId: string | null;
  type: EventType;
  /** In major units (4.00 CNY is 4). For `refunded`, the refunded amount. */
  amount: number | null;
  /** ISO 4217; `null` when the event gives none (the order's, or PAYMENT_CURRENCY, applies). */
  currency: string | null;
  occurredAt: Date;
  notifyUrl: string | null;
  meta: Record<string, unknown> | null;
  /** Why an order failed or closed (`meta.reason` when it is a string), e.g. `cancelled`, `timeout`. */
  reason: string | null;
}

/** The answer to one reported event, over the socket (as the ack) and over HTTP alike. */
export interface ReportResult {
  eventId: string;
  orderId: string;
  /** The order's state after the event. */
  state: OrderState;
  /** The event id was seen before: nothing was stored again. */
  duplicate?: true;
  /** The order is already in, or past, the reported state: recorded, no effect. */
  stale?: true;
}

/** An order as stored. */
export interface Order {
  appId: string;
  orderId: string;
  merchantId: string;
  state: OrderState;
  reason: string | null;
  amount: number | null;
  currency: string | null;
  refundedAmount: number | null;
  notifyUrl: string | null;
  /** The device that reported the last transition (it also receives the notifications). */
  deviceId: string | null;
  /** Number of transitions so far (1 after the first one). */
  version: number;
  createdAt: Date;
  updatedAt: Date;
}

/** One state change, as notified to apps, devices and merchant servers. */
export interface Transition {
  appId: string;
  orderId: string;
  merchantId: string;
  deviceId: string | null;
  from: OrderState | null;
  to: OrderState;
  reason: string | null;
  amount: number | null;
  refundedAmount: number | null;
  currency: string;
  notifyUrl: string | null;
  version: number;
  eventId: string;
  occurredAt: Date;
  source: EventSource;
  /** When the transition was decided, just before its commit (ms since the epoch). */
  at: number;
  /** The id of its realtime notification, derived from the event (stable across re-publishing). */
  notificationId: string;
  /** Its realtime payload, as written to the outbox. */
  data?: Record<string, unknown>;
}

/** The input of the webhook engine's `enqueue` (src/webhooks), as payments uses it. */
export interface MerchantNotifyInput {
  orderNo: string;
  notifyUrl: string;
  payload: unknown;
  merchantId?: string;
  eventType?: string;
  idempotencyKey?: string;
}

/**
 * What payments needs from the webhook engine: a durable, idempotent enqueue. The engine's
 * `WebhookEngine` satisfies it; tests pass a fake.
 */
export interface MerchantNotifier {
  enqueue(input: MerchantNotifyInput): Promise<{ id: string; duplicate: boolean }>;
}
