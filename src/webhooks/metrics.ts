import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { dnsLookupCounts, MAX_HOST_LOOKUPS } from './ssrf.js';

/** Live figures the gauges read at scrape time (from the store, cached briefly by the engine). */
export interface WebhookGaugeSource {
  depth(): Promise<Record<string, number>>;
  merchants(): Promise<{ open: number; halfOpen: number; slow: number }>;
  inFlight(): number;
}

/** The webhook engine's Prometheus metrics, registered on the node's registry. */
export class WebhookMetrics {
  readonly enqueued: Counter<'result'>;
  readonly deliveries: Counter<'result'>;
  readonly responseSeconds: Histogram;
  readonly alerts: Counter<'type' | 'sink' | 'result'>;
  readonly breakerDelayed: Counter;

  constructor(registry: Registry, source: WebhookGaugeSource) {
    const registers = [registry];
    this.enqueued = new Counter({
      name: 'herald_webhooks_enqueued_total',
      help: 'Merchant webhooks accepted (result=new) or recognised by their idempotency key (result=duplicate).',
      labelNames: ['result'],
      registers,
    });
    this.deliveries = new Counter({
      name: 'herald_webhook_deliveries_total',
      help: 'Webhook attempts by result: success, http_error, bad_body, network_error, timeout, gone, refused, disabled; expired: ended failed by WEBHOOK_MAX_AGE without a request.',
      labelNames: ['result'],
      registers,
    });
    this.responseSeconds = new Histogram({
      name: 'herald_webhook_response_seconds',
      help: 'Time from sending a webhook to the end of the merchant response (or the timeout).',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30],
      registers,
    });
    this.alerts = new Counter({
      name: 'herald_webhook_alerts_total',
      help: 'Alerts handed to each sink, by type and result (ok, failed).',
      labelNames: ['type', 'sink', 'result'],
      registers,
    });
    this.breakerDelayed = new Counter({
      name: 'herald_webhook_breaker_delayed_total',
      help: 'Due webhooks moved to the delay queue because their merchant breaker was open.',
      registers,
    });
    new Gauge({
      name: 'herald_webhook_queue_depth',
      help: 'Webhooks by queue state (cluster-wide): pending, retrying, delayed, in_flight (leased), failed.',
      labelNames: ['state'],
      registers,
      async collect() {
        const depth = await source.depth().catch(() => undefined);
        this.reset();
        if (!depth) return;
        for (const [state, n] of Object.entries(depth)) this.set({ state }, n);
      },
    });
    new Gauge({
      name: 'herald_webhook_in_flight',
      help: 'Webhook requests in flight on this node.',
      registers,
      collect() {
        this.set(source.inFlight());
      },
    });
    new Gauge({
      name: 'herald_webhook_dns_lookups',
      help: `Notify-URL hostnames being looked up (at most ${MAX_HOST_LOOKUPS} at once, UV_THREADPOOL_SIZE - 4) and waiting for a slot: a lasting "running" at the cap means hosts whose DNS does not answer.`,
      labelNames: ['state'],
      registers,
      collect() {
        const c = dnsLookupCounts();
        this.set({ state: 'running' }, c.running);
        this.set({ state: 'queued' }, c.queued);
      },
    });
    new Gauge({
      name: 'herald_webhook_breakers_open',
      help: 'Merchants whose circuit breaker is open or half-open (cluster-wide).',
      labelNames: ['state'],
      registers,
      async collect() {
        const m = await source.merchants().catch(() => undefined);
        this.reset();
        if (!m) return;
        this.set({ state: 'open' }, m.open);
        this.set({ state: 'half_open' }, m.halfOpen);
      },
    });
    new Gauge({
      name: 'herald_webhook_slow_merchants',
      help: 'Merchants marked slow (cluster-wide).',
      registers,
      async collect() {
        const m = await source.merchants().catch(() => undefined);
        this.set(m?.slow ?? 0);
      },
    });
  }
}
