import { useRef, useState } from 'preact/hooks';
import type { WebhookFeedItem } from '../../../src/console/types.js';
import { ApiError, envelope, ifRoute } from '../api.js';
import { useLive } from '../live.js';
import {
  AsyncView,
  Badge,
  Card,
  Empty,
  ErrorBox,
  fmtNum,
  fmtTime,
  stateTone,
  useAsync,
  useDebounced,
} from '../ui.js';

interface Delivery {
  id: string;
  order_id: number;
  order_no: string;
  merchant_key: string;
  notify_url: string;
  status: string;
  attempts: number;
  next_attempt_at: string | null;
  last_status_code: number | null;
  last_error: string | null;
}

interface QueueStatus {
  pending_count: number;
  retry_count: number;
  delayed_count: number;
  in_flight_count: number;
  failed_count: number;
  queue_length: number;
  pending_orders: Delivery[];
  retry_orders: Delivery[];
  delayed_orders: Delivery[];
}

interface Merchant {
  merchant_key: string;
  merchant_id: string | null;
  notify_url: string;
  failure_count: number;
  avg_response_time: number;
  status: 'normal' | 'slow' | 'circuit_breaker';
  breaker_state: string;
  breaker_until: string | null;
  success_total: number;
  failure_total: number;
  disabled: boolean;
  last_status_code: number | null;
  last_error: string | null;
  last_attempt_at: string | null;
}

interface Attempt {
  id: number;
  webhook_id: string;
  order_no: string;
  merchant_key: string;
  url: string;
  attempt: number;
  status: 0 | 1;
  outcome: string;
  status_code: number | null;
  response_body: string | null;
  duration_ms: number;
  error: string | null;
  created_at: string;
}

interface Page<T> {
  total: number;
  page: number;
  limit: number;
  list: T[];
}

interface Alert {
  alert_type?: string;
  type?: string;
  level?: string;
  merchant_key?: string;
  text?: string;
  created_at?: string;
  sent_at?: string;
}

function Queue({ reloadKey }: { reloadKey: number }) {
  const [q, reload] = useAsync(
    (signal) =>
      ifRoute('get', '/admin/merchant-notify/queue-status', () =>
        envelope<QueueStatus>('/queue-status', { signal }),
      ),
    [reloadKey],
  );
  return (
    <Card
      title="Queue"
      actions={
        <button type="button" class="link" onClick={reload}>
          Refresh
        </button>
      }
    >
      <AsyncView value={q} retry={reload}>
        {(d) => (
          <>
            <div class="stat-tiles" data-testid="queue-status">
              <div class="tile">
                <b>{fmtNum(d.queue_length)}</b>queued
              </div>
              <div class="tile">
                <b>{fmtNum(d.pending_count)}</b>pending
              </div>
              <div class="tile warn">
                <b>{fmtNum(d.retry_count)}</b>retrying
              </div>
              <div class="tile warn">
                <b>{fmtNum(d.delayed_count)}</b>delayed (breaker)
              </div>
              <div class="tile">
                <b>{fmtNum(d.in_flight_count)}</b>in flight
              </div>
              <div class="tile bad">
                <b>{fmtNum(d.failed_count)}</b>failed
              </div>
            </div>
            {d.queue_length === 0 ? (
              <Empty>The queue is empty: every accepted notification has been delivered or has failed.</Empty>
            ) : (
              <div class="table-wrap">
                <table>
                  <thead>
                    <tr>
                      <th>Order</th>
                      <th>State</th>
                      <th class="num">Attempts</th>
                      <th>Next attempt</th>
                    </tr>
                  </thead>
                  <tbody>
                    {[...d.retry_orders, ...d.delayed_orders, ...d.pending_orders].slice(0, 10).map((o) => (
                      <tr key={o.id}>
                        <td>
                          <code>{o.order_no}</code>
                        </td>
                        <td>
                          <Badge tone={stateTone(o.status)}>{o.status}</Badge>
                        </td>
                        <td class="num">{o.attempts}</td>
                        <td>{fmtTime(o.next_attempt_at)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </>
        )}
      </AsyncView>
    </Card>
  );
}

function Merchants({ reloadKey }: { reloadKey: number }) {
  const [page, setPage] = useState(1);
  const [m, reload] = useAsync(
    (signal) =>
      ifRoute('get', '/admin/merchant-notify/all-merchant-status', () =>
        envelope<Page<Merchant>>('/all-merchant-status', { query: { page, limit: 20 }, signal }),
      ),
    [page, reloadKey],
  );
  const [action, setAction] = useState<{ key: string; error?: unknown; done?: string }>();
  const reset = async (merchant: Merchant) => {
    setAction({ key: merchant.merchant_key });
    try {
      await envelope('/reset-circuit-breaker', { body: { merchant_key: merchant.merchant_key } });
      setAction({ key: merchant.merchant_key, done: 'Breaker reset' });
      reload();
    } catch (error) {
      setAction({ key: merchant.merchant_key, error });
    }
  };
  return (
    <Card title="Merchants" class="span-all" id="merchants">
      {action?.error !== undefined && <ErrorBox error={action.error} />}
      <AsyncView value={m} retry={reload}>
        {(d) =>
          d.list.length === 0 ? (
            <Empty>No merchant has been notified yet. Merchants appear after their first webhook.</Empty>
          ) : (
            <>
              <div class="table-wrap">
                <table data-testid="merchants-table">
                  <thead>
                    <tr>
                      <th>Merchant</th>
                      <th>State</th>
                      <th class="num">Avg response</th>
                      <th class="num">Failures in a row</th>
                      <th class="num">OK / failed</th>
                      <th>Last attempt</th>
                      <th />
                    </tr>
                  </thead>
                  <tbody>
                    {d.list.map((x) => (
                      <tr key={x.merchant_key} data-merchant={x.merchant_key}>
                        <td class="wrap">
                          <b>{x.merchant_id ?? x.merchant_key}</b>
                          <div class="muted small">{x.notify_url}</div>
                        </td>
                        <td>
                          <Badge tone={stateTone(x.status)}>
                            {x.status === 'circuit_breaker'
                              ? `breaker ${x.breaker_state.replace('_', '-')}`
                              : x.status}
                          </Badge>
                          {x.disabled && <Badge tone="bad">URL disabled (410)</Badge>}
                          {x.breaker_until && x.status === 'circuit_breaker' && (
                            <div class="muted small">until {fmtTime(x.breaker_until)}</div>
                          )}
                        </td>
                        <td class="num">{x.avg_response_time.toFixed(3)} s</td>
                        <td class="num">{x.failure_count}</td>
                        <td class="num">
                          {fmtNum(x.success_total)} / {fmtNum(x.failure_total)}
                        </td>
                        <td>
                          {fmtTime(x.last_attempt_at)}
                          {x.last_status_code !== null && (
                            <div class="muted small">HTTP {x.last_status_code}</div>
                          )}
                        </td>
                        <td>
                          {(x.status === 'circuit_breaker' || x.failure_count > 0 || x.disabled) && (
                            <button
                              type="button"
                              class="small-btn"
                              disabled={action?.key === x.merchant_key && !action.done && !action.error}
                              onClick={() => reset(x)}
                            >
                              Reset breaker
                            </button>
                          )}
                          {action?.key === x.merchant_key && action.done && (
                            <span class="ok-text small"> {action.done}</span>
                          )}
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
              <Pager page={d.page} total={d.total} limit={d.limit} onPage={setPage} />
            </>
          )
        }
      </AsyncView>
    </Card>
  );
}

function Pager({
  page,
  total,
  limit,
  onPage,
}: {
  page: number;
  total: number;
  limit: number;
  onPage: (p: number) => void;
}) {
  const pages = Math.max(1, Math.ceil(total / limit));
  if (pages <= 1) return null;
  return (
    <div class="pager">
      <button type="button" disabled={page <= 1} onClick={() => onPage(page - 1)}>
        ‹ Previous
      </button>
      <span>
        page {page} of {pages} · {total}
      </span>
      <button type="button" disabled={page >= pages} onClick={() => onPage(page + 1)}>
        Next ›
      </button>
    </div>
  );
}

function AttemptDetail({ webhookId, onClose }: { webhookId: string; onClose: () => void }) {
  const [a, reload] = useAsync(
    (signal) => envelope<Page<Attempt>>('/logs', { query: { webhook_id: webhookId, limit: 100 }, signal }),
    [webhookId],
  );
  const [retry, setRetry] = useState<{ busy?: boolean; done?: string; error?: unknown }>({});
  const doRetry = async () => {
    setRetry({ busy: true });
    try {
      const r = await envelope<{ retried: number }>('/retry', {
        body: { order_id: webhookId, include_delivered: true },
      });
      setRetry({ done: `Queued again (${r.retried})` });
      reload();
    } catch (error) {
      setRetry({ error });
    }
  };
  return (
    <div class="detail" data-testid="attempt-detail">
      <div class="detail-head">
        <b>
          Webhook <code>{webhookId}</code>
        </b>
        <span class="spacer" />
        {retry.done && <span class="ok-text">{retry.done}</span>}
        <button type="button" class="primary small-btn" onClick={doRetry} disabled={retry.busy}>
          Retry now
        </button>
        <button type="button" class="link" onClick={onClose}>
          Close
        </button>
      </div>
      {retry.error !== undefined && <ErrorBox error={retry.error} />}
      <AsyncView value={a} retry={reload}>
        {(d) =>
          d.list.length === 0 ? (
            <Empty>No attempt of this webhook is logged.</Empty>
          ) : (
            <ol class="attempts">
              {[...d.list]
                .sort((x, y) => x.attempt - y.attempt || x.id - y.id)
                .map((x) => (
                  <li key={x.id}>
                    <div>
                      <b>Attempt {x.attempt}</b> <Badge tone={stateTone(x.outcome)}>{x.outcome}</Badge>{' '}
                      {x.status_code !== null && <span>HTTP {x.status_code}</span>} · {x.duration_ms} ms ·{' '}
                      {fmtTime(x.created_at)}
                    </div>
                    <div class="muted small wrap">{x.url}</div>
                    {x.error && <div class="bad-text small">{x.error}</div>}
                    {x.response_body && <pre class="body">{x.response_body}</pre>}
                  </li>
                ))}
            </ol>
          )
        }
      </AsyncView>
    </div>
  );
}

function Logs({ reloadKey }: { reloadKey: number }) {
  const [orderNo, setOrderNo] = useState('');
  const [status, setStatus] = useState('');
  const [applied, setApplied] = useState({ orderNo: '', status: '' });
  const [page, setPage] = useState(1);
  const [open, setOpen] = useState<string>();
  const [l, reload] = useAsync(
    (signal) =>
      ifRoute('get', '/admin/merchant-notify/logs', () =>
        envelope<Page<Attempt>>('/logs', {
          query: { page, limit: 20, order_no: applied.orderNo, status: applied.status },
          signal,
        }),
      ),
    [page, applied, reloadKey],
  );
  return (
    <Card title="Delivery log" class="span-all" id="logs">
      <form
        class="form inline"
        onSubmit={(e) => {
          e.preventDefault();
          setPage(1);
          setApplied({ orderNo: orderNo.trim(), status });
        }}
      >
        <input
          name="order_no"
          type="search"
          placeholder="order number (prefix)"
          value={orderNo}
          onInput={(e) => setOrderNo((e.target as HTMLInputElement).value)}
          aria-label="Order number"
        />
        <select
          name="status"
          value={status}
          onChange={(e) => setStatus((e.target as HTMLSelectElement).value)}
          aria-label="Result"
        >
          <option value="">all results</option>
          <option value="success">successful</option>
          <option value="failed">failed</option>
        </select>
        <button type="submit">Filter</button>
      </form>
      {open && <AttemptDetail webhookId={open} onClose={() => setOpen(undefined)} />}
      <AsyncView value={l} retry={reload}>
        {(d) =>
          d.list.length === 0 ? (
            <Empty>
              {applied.orderNo || applied.status
                ? 'No attempt matches these filters.'
                : 'No webhook has been attempted yet.'}
            </Empty>
          ) : (
            <>
              <div class="table-wrap">
                <table data-testid="logs-table">
                  <thead>
                    <tr>
                      <th>Time</th>
                      <th>Order</th>
                      <th>Merchant</th>
                      <th class="num">#</th>
                      <th>Result</th>
                      <th class="num">Duration</th>
                    </tr>
                  </thead>
                  <tbody>
                    {d.list.map((x) => (
                      <tr
                        key={x.id}
                        class="clickable"
                        onClick={() => setOpen(x.webhook_id)}
                        data-webhook={x.webhook_id}
                      >
                        <td>{fmtTime(x.created_at)}</td>
                        <td>
                          <code>{x.order_no}</code>
                        </td>
                        <td class="wrap small">{x.merchant_key}</td>
                        <td class="num">{x.attempt}</td>
                        <td>
                          <Badge tone={stateTone(x.outcome)}>{x.outcome}</Badge>
                          {x.status_code !== null && <span class="muted small"> {x.status_code}</span>}
                        </td>
                        <td class="num">{x.duration_ms} ms</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
              <Pager page={d.page} total={d.total} limit={d.limit} onPage={setPage} />
            </>
          )
        }
      </AsyncView>
    </Card>
  );
}

function Alerts() {
  const [a, reload] = useAsync(
    (signal) =>
      ifRoute('get', '/admin/merchant-notify/alerts', () =>
        envelope<Page<Alert>>('/alerts', { query: { limit: 20 }, signal }),
      ),
    [],
  );
  return (
    <Card title="Alert history" id="alerts">
      {a.state === 'error' && a.error instanceof ApiError && a.error.missingRoute ? (
        <Empty>
          Alert history is not available: this node has no <code>GET /admin/merchant-notify/alerts</code>{' '}
          route yet. Alerts still go to the configured sinks (Telegram, webhook).
        </Empty>
      ) : (
        <AsyncView value={a} retry={reload}>
          {(d) =>
            d.list.length === 0 ? (
              <Empty>No alert has been raised.</Empty>
            ) : (
              <ul class="feed">
                {d.list.map((x, i) => (
                  <li key={i}>
                    <Badge tone={x.level === 'critical' ? 'bad' : 'warn'}>{x.level ?? 'alert'}</Badge>{' '}
                    <b>{x.alert_type ?? x.type}</b> {x.merchant_key && <code>{x.merchant_key}</code>}
                    <div class="muted small">{fmtTime(x.created_at ?? x.sent_at)}</div>
                    {x.text && <pre class="body">{x.text}</pre>}
                  </li>
                ))}
              </ul>
            )
          }
        </AsyncView>
      )}
    </Card>
  );
}

function LiveAttempts({ items }: { items: WebhookFeedItem[] | undefined }) {
  return (
    <Card title="Live deliveries" id="live-attempts">
      {items === undefined ? (
        <Empty>Waiting for the realtime feed…</Empty>
      ) : items.length === 0 ? (
        <Empty>No webhook attempt yet. Attempts appear here as they happen.</Empty>
      ) : (
        <ul class="feed" data-testid="webhook-feed">
          {items.map((x) => (
            <li key={x.id}>
              <Badge tone={stateTone(x.outcome)}>{x.outcome}</Badge> <code>{x.orderNo}</code> #{x.attempt}{' '}
              <span class="muted small">
                {x.statusCode !== null ? `HTTP ${x.statusCode} · ` : ''}
                {x.durationMs} ms · {fmtTime(x.at)}
              </span>
              <div class="muted small wrap">{x.merchantKey}</div>
            </li>
          ))}
        </ul>
      )}
    </Card>
  );
}

export function MerchantsPage() {
  const [reloadKey, setReloadKey] = useState(0);
  const [items, setItems] = useState<WebhookFeedItem[] | undefined>(undefined);
  const primed = useRef(false);
  // Every attempt changes the queue and a merchant's state: reload them, at most once per 2 s.
  const refresh = useDebounced(() => setReloadKey((k) => k + 1), 2000);
  useLive('webhooks', 'webhooks', (rows) => {
    setItems((prev) => {
      const seen = new Set((prev ?? []).map((r) => r.id));
      const fresh = rows.filter((r) => !seen.has(r.id)).reverse();
      return [...fresh, ...(prev ?? [])].slice(0, 30);
    });
    // The first push is the recent history; later ones are new attempts.
    if (primed.current) refresh();
    primed.current = true;
  });
  return (
    <div class="grid">
      <Queue reloadKey={reloadKey} />
      <LiveAttempts items={items} />
      <Merchants reloadKey={reloadKey} />
      <Logs reloadKey={reloadKey} />
      <Alerts />
    </div>
  );
}
