import { useEffect, useRef, useState } from 'preact/hooks';
import type { MachineFeedItem, PaymentFeedItem } from '../../../src/console/types.js';
import { ApiError, asApp, describeError, ifRoute } from '../api.js';
import { useLive } from '../live.js';
import {
  AsyncView,
  Badge,
  Bars,
  Card,
  Empty,
  ErrorBox,
  fmtMoney,
  fmtNum,
  fmtTime,
  stateTone,
  useAsync,
  useDebounced,
} from '../ui.js';
import { useStats } from './overview.js';

const STATES = ['created', 'paying', 'succeeded', 'failed', 'closed', 'refunded'];

interface PaymentStats {
  counts: Record<string, number>;
  total: number;
  finished: number;
  successRate: number | null;
  throughput: { minutes: number; eventsPerMinute: number; transitionsPerMinute: number };
}

interface Machine {
  appId: string;
  deviceId: string;
  merchantId: string;
  online: boolean;
  lastSeenAt: string;
  connectedAt: string | null;
  disconnectedAt: string | null;
}

function Missing({ err, what }: { err: unknown; what: string }) {
  if (err instanceof ApiError && err.missingRoute) {
    return (
      <Empty>
        {what} is not available: this node does not serve payment tracking yet (
        {err.message.replace(/\.$/, '')}).
      </Empty>
    );
  }
  if (
    err instanceof ApiError &&
    (err.status === 401 || err.code === 'unauthorized') &&
    err.message.includes('apiKey')
  ) {
    return <Empty>Pick an app above: in apps mode payment data is read per app.</Empty>;
  }
  return <ErrorBox error={err} />;
}

function Counts({ appId, merchantId, reloadKey }: { appId: string; merchantId: string; reloadKey: number }) {
  const [s, reload] = useAsync(
    (signal) =>
      ifRoute('get', '/payments/stats', () =>
        asApp<PaymentStats>(appId, '/payments/stats', { query: { merchantId, minutes: 15 }, signal }),
      ),
    [appId, merchantId, reloadKey],
  );
  return (
    <Card title="Orders per state" id="payment-counts">
      {s.state === 'error' ? (
        <Missing err={s.error} what="Per-state counts" />
      ) : (
        <AsyncView value={s} retry={reload}>
          {(d) =>
            d.total === 0 ? (
              <Empty>No order yet{merchantId ? ` for merchant ${merchantId}` : ''}.</Empty>
            ) : (
              <>
                <div data-testid="state-counts">
                  <Bars rows={STATES.map((k) => ({ key: k, value: d.counts[k] ?? 0, tone: stateTone(k) }))} />
                </div>
                <div class="totals">
                  <span>
                    <b>{fmtNum(d.total)}</b> orders
                  </span>
                  <span>
                    <b>{d.successRate === null ? '–' : `${(d.successRate * 100).toFixed(1)}%`}</b> success
                    rate
                  </span>
                  <span>
                    <b>{fmtNum(d.throughput.eventsPerMinute)}</b> events/min (15 min)
                  </span>
                </div>
              </>
            )
          }
        </AsyncView>
      )}
    </Card>
  );
}

function OrderFeed({ items }: { items: PaymentFeedItem[] | undefined }) {
  return (
    <Card title="Live orders" id="order-feed">
      {items === undefined ? (
        <Empty>Waiting for the realtime feed…</Empty>
      ) : items.length === 0 ? (
        <Empty>No payment event yet. Orders appear here as machines and back-ends report them.</Empty>
      ) : (
        <ul class="feed" data-testid="order-feed">
          {items.map((x) => (
            <li key={x.seq} data-order={x.orderId}>
              <div>
                <code>{x.orderId}</code> {x.from && <Badge tone={stateTone(x.from)}>{x.from}</Badge>}
                {x.from && ' → '}
                <Badge tone={stateTone(x.to ?? x.type)}>{x.to ?? x.type}</Badge>
                {x.outcome === 'stale' && <span class="muted small"> (stale {x.type}, no effect)</span>}{' '}
                <b>{fmtMoney(x.amount, x.currency)}</b>
              </div>
              <div class="muted small">
                merchant {x.merchantId}
                {x.deviceId ? ` · machine ${x.deviceId}` : ''} · {x.appId} · {x.source}
                {x.reason ? ` · ${x.reason}` : ''} · {fmtTime(x.receivedAt)}
              </div>
            </li>
          ))}
        </ul>
      )}
    </Card>
  );
}

function Machines({
  appId,
  merchantId,
  changes,
  onPick,
}: {
  appId: string;
  merchantId: string;
  changes: MachineFeedItem[];
  onPick: (m: Machine) => void;
}) {
  const [m, reload] = useAsync(
    (signal) =>
      ifRoute('get', '/devices', () =>
        asApp<{ devices: Machine[]; total: number }>(appId, '/devices', {
          query: { merchantId, limit: 1000 },
          signal,
        }),
      ),
    [appId, merchantId],
  );
  // Apply live online/offline changes over the loaded list.
  const live = new Map<string, Machine>();
  for (const d of m.data?.devices ?? []) live.set(`${d.appId}|${d.deviceId}`, d);
  for (const c of changes) {
    if (appId && c.appId !== appId) continue;
    if (merchantId && c.merchantId !== merchantId) continue;
    const key = `${c.appId}|${c.deviceId}`;
    const prev = live.get(key);
    live.set(key, {
      appId: c.appId,
      deviceId: c.deviceId,
      merchantId: c.merchantId,
      online: c.online,
      lastSeenAt: c.at,
      connectedAt: c.online ? c.at : (prev?.connectedAt ?? null),
      disconnectedAt: c.online ? (prev?.disconnectedAt ?? null) : c.at,
    });
  }
  const byMerchant = new Map<string, Machine[]>();
  for (const d of live.values()) {
    const list = byMerchant.get(d.merchantId) ?? [];
    list.push(d);
    byMerchant.set(d.merchantId, list);
  }
  return (
    <Card title="Machines" class="span-all" id="machines">
      {m.state === 'error' ? (
        <Missing err={m.error} what="The machine list" />
      ) : (
        <AsyncView value={m} retry={reload}>
          {() =>
            byMerchant.size === 0 ? (
              <Empty>No machine has connected{merchantId ? ` for merchant ${merchantId}` : ''}.</Empty>
            ) : (
              <div class="merchant-machines" data-testid="machines">
                {[...byMerchant]
                  .sort(([a], [b]) => a.localeCompare(b))
                  .map(([merchant, list]) => {
                    const online = list.filter((d) => d.online).length;
                    return (
                      <div class="merchant-box" key={merchant} data-merchant={merchant}>
                        <div class="merchant-head">
                          <b>{merchant}</b>
                          <span>
                            <Badge tone="ok">{online} online</Badge>{' '}
                            <Badge tone="muted">{list.length - online} offline</Badge>
                          </span>
                        </div>
                        <div class="machines">
                          {list
                            .sort(
                              (a, b) =>
                                Number(b.online) - Number(a.online) || a.deviceId.localeCompare(b.deviceId),
                            )
                            .map((d) => (
                              <button
                                type="button"
                                key={d.deviceId}
                                class={`machine ${d.online ? 'on' : 'off'}`}
                                data-device={d.deviceId}
                                data-online={String(d.online)}
                                title={`${d.online ? 'online' : 'offline'} · last seen ${fmtTime(d.lastSeenAt)}`}
                                onClick={() => onPick(d)}
                              >
                                <span class="dot" aria-hidden="true" />
                                {d.deviceId}
                              </button>
                            ))}
                        </div>
                      </div>
                    );
                  })}
              </div>
            )
          }
        </AsyncView>
      )}
    </Card>
  );
}

function CommandForm({ appId, picked }: { appId: string; picked: Machine | undefined }) {
  const [app, setApp] = useState(appId);
  const [deviceId, setDeviceId] = useState('');
  const [command, setCommand] = useState('ping');
  const [args, setArgs] = useState('{}');
  const [timeout, setTimeoutMs] = useState(5000);
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ ok: true; reply: unknown } | { ok: false; error: unknown }>();
  useEffect(() => {
    if (picked) {
      setApp(picked.appId);
      setDeviceId(picked.deviceId);
    }
  }, [picked]);
  useEffect(() => {
    if (appId) setApp(appId);
  }, [appId]);

  const send = async (e: Event) => {
    e.preventDefault();
    let parsed: unknown;
    try {
      parsed = args.trim() ? JSON.parse(args) : undefined;
    } catch (err) {
      setResult({ ok: false, error: new Error(`args is not valid JSON: ${(err as Error).message}`) });
      return;
    }
    setBusy(true);
    setResult(undefined);
    try {
      const r = await ifRoute('post', '/devices/{deviceId}/commands', () =>
        asApp<{ reply: unknown }>(app, `/devices/${encodeURIComponent(deviceId.trim())}/commands`, {
          body: { appId: app, command, args: parsed, timeoutMs: timeout },
        }),
      );
      setResult({ ok: true, reply: r.reply });
    } catch (error) {
      setResult({ ok: false, error });
    } finally {
      setBusy(false);
    }
  };
  return (
    <Card title="Send a command to a machine" id="command">
      <form class="form" onSubmit={send} data-testid="command-form">
        <div class="row">
          <label>
            App
            <input
              name="appId"
              value={app}
              onInput={(e) => setApp((e.target as HTMLInputElement).value)}
              required
            />
          </label>
          <label>
            Machine (device id)
            <input
              name="deviceId"
              value={deviceId}
              onInput={(e) => setDeviceId((e.target as HTMLInputElement).value)}
              required
              placeholder="click a machine above"
            />
          </label>
        </div>
        <div class="row">
          <label>
            Command
            <input
              name="command"
              value={command}
              onInput={(e) => setCommand((e.target as HTMLInputElement).value)}
              required
            />
          </label>
          <label>
            Timeout (ms)
            <input
              name="timeoutMs"
              type="number"
              min={100}
              max={120000}
              value={timeout}
              onInput={(e) => setTimeoutMs(Number((e.target as HTMLInputElement).value))}
            />
          </label>
        </div>
        <label>
          args (JSON)
          <textarea
            name="args"
            rows={2}
            value={args}
            onInput={(e) => setArgs((e.target as HTMLTextAreaElement).value)}
            spellcheck={false}
          />
        </label>
        <div class="row end">
          <button type="submit" class="primary" disabled={busy}>
            {busy ? 'Waiting for the machine…' : 'Send command'}
          </button>
        </div>
        {result?.ok === true && (
          <div class="ok-box" role="status" data-testid="command-result">
            Reply: <code>{JSON.stringify(result.reply)}</code>
          </div>
        )}
        {result?.ok === false &&
          (result.error instanceof ApiError && result.error.missingRoute ? (
            <Empty>Commands are not available: this node does not serve payment tracking yet.</Empty>
          ) : (
            <div class="state error" role="alert" data-testid="command-error">
              {describeError(result.error)}
            </div>
          ))}
      </form>
    </Card>
  );
}

export function PaymentsPage() {
  const { snap } = useStats();
  const apps = snap?.apps.map((a) => a.appId) ?? [];
  const apiMode = snap?.node.accessMode;
  const [appId, setAppId] = useState('');
  const [merchantId, setMerchantId] = useState('');
  const [merchantInput, setMerchantInput] = useState('');
  const [feed, setFeed] = useState<PaymentFeedItem[] | undefined>(undefined);
  const [changes, setChanges] = useState<MachineFeedItem[]>([]);
  const [picked, setPicked] = useState<Machine>();
  const [reloadKey, setReloadKey] = useState(0);
  const primed = useRef(false);
  const refresh = useDebounced(() => setReloadKey((k) => k + 1), 1500);

  useEffect(() => {
    if (apiMode === 'apps' && !appId && apps[0]) setAppId(apps[0]);
  }, [apiMode, apps[0], appId]);

  useLive('payments', 'payments', (rows) => {
    setFeed((prev) => {
      const seen = new Set((prev ?? []).map((r) => r.seq));
      const fresh = rows.filter((r) => !seen.has(r.seq)).reverse();
      return [...fresh, ...(prev ?? [])].slice(0, 100);
    });
    if (primed.current) refresh();
    primed.current = true;
  });
  useLive('machines', 'machines', (rows) => setChanges((prev) => [...prev, ...rows].slice(-2000)));

  const shown = feed?.filter(
    (x) => (!appId || x.appId === appId) && (!merchantId || x.merchantId === merchantId),
  );

  return (
    <div class="grid">
      <Card class="span-all">
        <form
          class="form inline"
          onSubmit={(e) => {
            e.preventDefault();
            setMerchantId(merchantInput.trim());
          }}
        >
          <select
            name="appId"
            value={appId}
            onChange={(e) => setAppId((e.target as HTMLSelectElement).value)}
            aria-label="App"
          >
            {apiMode !== 'apps' && <option value="">all apps</option>}
            {[...new Set([...(appId ? [appId] : []), ...apps])].map((a) => (
              <option key={a} value={a}>
                {a}
              </option>
            ))}
          </select>
          <input
            name="merchantId"
            type="search"
            placeholder="merchant id (all merchants)"
            value={merchantInput}
            onInput={(e) => setMerchantInput((e.target as HTMLInputElement).value)}
            aria-label="Merchant id"
          />
          <button type="submit">Apply</button>
          {merchantId && (
            <a
              class="link"
              href={`/console/cashier?appId=${encodeURIComponent(appId || apps[0] || '')}&merchantId=${encodeURIComponent(merchantId)}`}
              target="_blank"
              rel="noopener"
            >
              Open this merchant’s cashier ↗
            </a>
          )}
        </form>
      </Card>
      <Counts appId={appId} merchantId={merchantId} reloadKey={reloadKey} />
      <OrderFeed items={shown} />
      <Machines appId={appId} merchantId={merchantId} changes={changes} onPick={setPicked} />
      <CommandForm appId={appId} picked={picked} />
    </div>
  );
}
