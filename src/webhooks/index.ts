/**
 * Merchant webhooks: durable intake, delivery with retries, per-merchant isolation, circuit breakers,
 * alerts and the admin API. `WebhookEngine.enqueue` is the API for in-process producers (payments).
 */
export type { Alert, AlertLevel, AlertSink, AlertType } from './alerts.js';
export { WebhookEngine, type WebhookEngineOptions } from './engine.js';
export { merchantKeyOf } from './merchant-key.js';
export { type WebhookRouteDeps, webhookRoutes } from './routes.js';
export { sign, signatureHeaders } from './signing.js';
export type { DeliveryStatus } from './types.js';

/** What a producer hands to the engine: one notification for one merchant's notify URL. */
export interface MerchantNotifyInput {
  orderNo: string;
  notifyUrl: string;
  payload: unknown;
  merchantId?: string;
  eventType?: string;
  idempotencyKey?: string;
}
