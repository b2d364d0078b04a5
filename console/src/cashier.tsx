/**
 * Demo cashier page: `/console/cashier?appId=..&merchantId=..` connects to the app with the Herald
 * SDK as the merchant (client id = merchant id; in apps mode with `&token=<JWT>` whose sub is the
 * merchant id), receives the merchant's payment notifications and speaks each successful payment's
 * `announcement` (e.g. 收款 4.00 元) with the browser's speech synthesis, as the seed's merchant app does.
 */
import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { connect, type Status } from '../../src/sdk/index.js';
import { Badge, Empty, fmtMoney, stateTone } from './ui.js';
import './style.css';

interface PaymentNote {
  type: 'payment';
  status: string;
  orderId: string;
  merchantId?: string;
  amount: number | null;
  currency: string | null;
  announcement: string;
  eventId?: string;
  ts?: number;
}

interface Entry extends PaymentNote {
  key: string;
  at: number;
  spoken: boolean;
}

function isPayment(data: unknown): data is PaymentNote {
  const d = data as Partial<PaymentNote> | null;
  return (
    typeof d === 'object' &&
    d !== null &&
    d.type === 'payment' &&
    typeof d.orderId === 'string' &&
    typeof d.status === 'string'
  );
}

const TOKEN_KEY = 'herald.cashier.token';

function readParams() {
  const q = new URLSearchParams(location.search);
  const token = q.get('token');
  if (token) {
    // Keep the token out of the address bar and history.
    sessionStorage.setItem(TOKEN_KEY, token);
    q.delete('token');
    history.replaceState(null, '', `${location.pathname}${q.toString() ? `?${q}` : ''}`);
  }
  return {
    appId: q.get('appId') ?? '',
    merchantId: q.get('merchantId') ?? '',
    token: token ?? sessionStorage.getItem(TOKEN_KEY) ?? undefined,
  };
}

/** A Chinese voice when the browser has one. */
function chineseVoice(): SpeechSynthesisVoice | undefined {
  const voices = typeof speechSynthesis === 'undefined' ? [] : speechSynthesis.getVoices();
  return voices.find((v) => v.lang === 'zh-CN') ?? voices.find((v) => v.lang.toLowerCase().startsWith('zh'));
}

function speak(text: string): boolean {
  if (typeof speechSynthesis === 'undefined' || typeof SpeechSynthesisUtterance === 'undefined') return false;
  const u = new SpeechSynthesisUtterance(text);
  u.lang = 'zh-CN';
  const voice = chineseVoice();
  if (voice) u.voice = voice;
  u.rate = 1;
  speechSynthesis.speak(u);
  return true;
}

function Setup() {
  const [appId, setAppId] = useState('');
  const [merchantId, setMerchantId] = useState('');
  return (
    <main class="login">
      <form
        class="card login-card"
        onSubmit={(e) => {
          e.preventDefault();
          location.search = `?appId=${encodeURIComponent(appId.trim())}&merchantId=${encodeURIComponent(merchantId.trim())}`;
        }}
      >
        <h1>收款播报 · Cashier</h1>
        <p>Which merchant’s payments should this screen announce?</p>
        <label>
          App id
          <input
            name="appId"
            value={appId}
            onInput={(e) => setAppId((e.target as HTMLInputElement).value)}
            required
          />
        </label>
        <label>
          Merchant id
          <input
            name="merchantId"
            value={merchantId}
            onInput={(e) => setMerchantId((e.target as HTMLInputElement).value)}
            required
          />
        </label>
        <button type="submit" class="primary">
          Open cashier
        </button>
      </form>
    </main>
  );
}

function Cashier({
  appId,
  merchantId,
  token,
}: {
  appId: string;
  merchantId: string;
  token: string | undefined;
}) {
  const [status, setStatus] = useState<Status>('connecting');
  const [reason, setReason] = useState<string>();
  const [entries, setEntries] = useState<Entry[]>([]);
  const [voice, setVoice] = useState(false);
  const [voiceName, setVoiceName] = useState<string>();
  const voiceOn = useRef(false);
  const supported = typeof speechSynthesis !== 'undefined';

  useEffect(() => {
    const client = connect({ url: location.origin, appId, clientId: merchantId, token });
    const offStatus = client.onStatus((s, r) => {
      setStatus(s);
      setReason(r);
    });
    const off = client.on((data, meta) => {
      if (!isPayment(data)) return;
      if (data.merchantId !== undefined && data.merchantId !== merchantId) return;
      const key = data.eventId ?? `${data.orderId}:${data.status}`;
      const say = data.status === 'succeeded' && voiceOn.current && speak(data.announcement);
      setEntries((prev) =>
        prev.some((e) => e.key === key)
          ? prev
          : [{ ...data, key, at: meta.ts ?? Date.now(), spoken: say }, ...prev].slice(0, 200),
      );
    });
    return () => {
      off();
      offStatus();
      client.close();
    };
  }, [appId, merchantId, token]);

  useEffect(() => {
    if (!supported) return;
    const update = () => setVoiceName(chineseVoice()?.name);
    update();
    speechSynthesis.addEventListener?.('voiceschanged', update);
    return () => speechSynthesis.removeEventListener?.('voiceschanged', update);
  }, [supported]);

  const enable = () => {
    voiceOn.current = !voice;
    setVoice(!voice);
    // Browsers only speak after a user gesture: say something short now, in that gesture.
    if (!voice) speak('语音播报已开启');
    else speechSynthesis.cancel();
  };

  const received = entries.filter((e) => e.status === 'succeeded');
  const totals = new Map<string, number>();
  for (const e of received)
    totals.set(e.currency ?? 'CNY', (totals.get(e.currency ?? 'CNY') ?? 0) + (e.amount ?? 0));
  const live = status === 'connected';

  return (
    <div class="cashier">
      <header class="topbar">
        <span class="brand">
          <span class="logo">Herald</span> 收款播报
        </span>
        <span class="spacer" />
        <span
          class={`live-dot ${live ? 'live' : status === 'closed' ? 'unauthorized' : 'offline'}`}
          data-testid="cashier-status"
        >
          <span aria-hidden="true" />
          {live
            ? '已连接 connected'
            : status === 'connecting'
              ? '连接中 connecting'
              : `未连接 ${reason ?? status}`}
        </span>
      </header>
      <main class="cashier-main">
        <section class="card cashier-hero">
          <div class="muted">
            商户 merchant <b data-testid="merchant">{merchantId}</b> · app <code>{appId}</code>
          </div>
          <div class="big" data-testid="cashier-total">
            {totals.size === 0 ? '¥0.00' : [...totals].map(([c, v]) => fmtMoney(v, c)).join(' + ')}
          </div>
          <div class="muted">{received.length} 笔收款 payments received on this screen</div>
          <button
            type="button"
            class={voice ? '' : 'primary'}
            onClick={enable}
            disabled={!supported}
            data-testid="voice-toggle"
          >
            {!supported
              ? 'This browser cannot speak'
              : voice
                ? '语音播报已开启 · Voice on (click to mute)'
                : '开启语音播报 · Turn on voice'}
          </button>
          {supported && (
            <div class="muted small">
              {voiceName
                ? `Voice: ${voiceName}`
                : 'No Chinese voice installed: the default voice is used with lang zh-CN.'}
            </div>
          )}
        </section>
        <section class="card">
          <h2>收款记录 · Payments</h2>
          {entries.length === 0 ? (
            <Empty>
              {live
                ? '等待收款… Waiting for payments. Each successful payment is shown and announced here.'
                : 'Connecting to Herald…'}
            </Empty>
          ) : (
            <ul class="feed cashier-feed" data-testid="cashier-feed">
              {entries.map((e) => (
                <li
                  key={e.key}
                  class={e.status === 'succeeded' ? 'paid' : ''}
                  data-status={e.status}
                  data-spoken={String(e.spoken)}
                >
                  <div class="announce">{e.announcement}</div>
                  <div class="muted small">
                    <Badge tone={stateTone(e.status)}>{e.status}</Badge> {fmtMoney(e.amount, e.currency)} ·
                    order {e.orderId} · {new Date(e.at).toLocaleTimeString()}
                    {e.spoken && ' · ♪ spoken'}
                  </div>
                </li>
              ))}
            </ul>
          )}
        </section>
      </main>
    </div>
  );
}

function App() {
  const p = readParams();
  if (!p.appId || !p.merchantId) return <Setup />;
  return <Cashier appId={p.appId} merchantId={p.merchantId} token={p.token} />;
}

render(<App />, document.getElementById('app') as HTMLElement);
