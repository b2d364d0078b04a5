import { useEffect, useState } from 'preact/hooks';
import type { ClientSocket, TopicRow } from '../../../src/console/types.js';
import { call } from '../api.js';
import { useLive } from '../live.js';
import { Card, Empty, ErrorBox, fmtNum, Loading } from '../ui.js';
import { useStats } from './overview.js';

type Target = 'eventTopics' | 'users' | 'devices' | 'broadcast';

function PublishForm({ apps }: { apps: string[] }) {
  const [appId, setAppId] = useState(apps[0] ?? '');
  // The apps arrive with the first stats push: preselect the busiest one.
  useEffect(() => {
    if (!appId && apps[0]) setAppId(apps[0]);
  }, [apps[0]]);
  const [target, setTarget] = useState<Target>('eventTopics');
  const [to, setTo] = useState('');
  const [data, setData] = useState('{\n  "type": "test",\n  "message": "Hello from the Herald console"\n}');
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<
    { ok: true; id: string; delivered?: number } | { ok: false; error: unknown }
  >();

  const submit = async (e: Event) => {
    e.preventDefault();
    let parsed: unknown;
    try {
      parsed = JSON.parse(data);
    } catch (err) {
      setResult({ ok: false, error: new Error(`data is not valid JSON: ${(err as Error).message}`) });
      return;
    }
    const body: Record<string, unknown> = { appId: appId.trim(), data: parsed };
    if (target === 'broadcast') body.broadcast = true;
    else
      body[target] = to
        .split(/[\s,]+/)
        .map((s) => s.trim())
        .filter(Boolean);
    setBusy(true);
    try {
      const r = await call<{ id: string; delivered?: number }>('/admin/api/publish', { body });
      setResult({ ok: true, ...r });
    } catch (error) {
      setResult({ ok: false, error });
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="form" onSubmit={submit} data-testid="publish-form">
      <div class="row">
        <label>
          App
          <input
            name="appId"
            list="app-list"
            value={appId}
            onInput={(e) => setAppId((e.target as HTMLInputElement).value)}
            required
            pattern="[A-Za-z0-9_.\-]{1,64}"
            placeholder="my-app"
          />
          <datalist id="app-list">
            {apps.map((a) => (
              <option key={a} value={a} />
            ))}
          </datalist>
        </label>
        <label>
          To
          <select
            name="target"
            value={target}
            onChange={(e) => setTarget((e.target as HTMLSelectElement).value as Target)}
          >
            <option value="eventTopics">topic subscribers</option>
            <option value="users">users (client ids)</option>
            <option value="devices">devices</option>
            <option value="broadcast">everyone in the app</option>
          </select>
        </label>
      </div>
      {target !== 'broadcast' && (
        <label>
          {target === 'eventTopics' ? 'Topics' : target === 'users' ? 'Client ids' : 'Device ids'} (comma
          separated)
          <input
            name="to"
            value={to}
            onInput={(e) => setTo((e.target as HTMLInputElement).value)}
            required
            placeholder={
              target === 'eventTopics'
                ? 'order:12345:status'
                : target === 'users'
                  ? 'user-567'
                  : 'mobile-ios-001'
            }
          />
        </label>
      )}
      <label>
        data (JSON)
        <textarea
          name="data"
          rows={4}
          value={data}
          onInput={(e) => setData((e.target as HTMLTextAreaElement).value)}
          spellcheck={false}
        />
      </label>
      <div class="row end">
        {result?.ok === true && (
          <span class="ok-text" role="status" data-testid="publish-result">
            Published {result.id.slice(0, 8)}… ·{' '}
            {result.delivered === undefined
              ? 'sent to every node'
              : `${result.delivered} socket(s) on this node`}
          </span>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? 'Publishing…' : 'Publish test notification'}
        </button>
      </div>
      {result?.ok === false && <ErrorBox error={result.error} />}
    </form>
  );
}

function ClientSearch({ apps }: { apps: string[] }) {
  const [q, setQ] = useState('');
  const [appId, setAppId] = useState('');
  const [res, setRes] = useState<
    | { state: 'idle' }
    | { state: 'loading' }
    | { state: 'ok'; rows: ClientSocket[]; q: string }
    | { state: 'error'; error: unknown }
  >({
    state: 'idle',
  });
  const search = async (e: Event) => {
    e.preventDefault();
    if (!q.trim()) return;
    setRes({ state: 'loading' });
    try {
      const rows = await call<ClientSocket[]>('/admin/api/clients', { query: { q: q.trim(), appId } });
      setRes({ state: 'ok', rows, q: q.trim() });
    } catch (error) {
      setRes({ state: 'error', error });
    }
  };
  return (
    <>
      <form class="form inline" onSubmit={search}>
        <input
          name="q"
          type="search"
          value={q}
          onInput={(e) => setQ((e.target as HTMLInputElement).value)}
          placeholder="client id or device id, e.g. user-567"
          aria-label="Client id or device id"
        />
        <select
          name="appId"
          value={appId}
          onChange={(e) => setAppId((e.target as HTMLSelectElement).value)}
          aria-label="App"
        >
          <option value="">all apps</option>
          {apps.map((a) => (
            <option key={a} value={a}>
              {a}
            </option>
          ))}
        </select>
        <button type="submit">Search</button>
      </form>
      {res.state === 'loading' && <Loading what="Searching" />}
      {res.state === 'error' && <ErrorBox error={res.error} />}
      {res.state === 'ok' &&
        (res.rows.length === 0 ? (
          <Empty>No socket of a client or device matching “{res.q}” is connected to this node.</Empty>
        ) : (
          <div class="sockets" data-testid="client-results">
            {res.rows.map((s) => (
              <div class="socket" key={s.socketId}>
                <div>
                  <b>{s.clientId}</b> <span class="muted">in</span> <code>{s.appId}</code>
                </div>
                <div class="muted small">
                  device {s.deviceId ?? <i>none</i>} · socket {s.socketId}
                </div>
                <div class="chips">
                  {s.topics.length === 0 && s.watches.length === 0 && (
                    <span class="muted small">no subscriptions</span>
                  )}
                  {s.topics.map((t) => (
                    <span class="chip" key={t}>
                      {t}
                    </span>
                  ))}
                  {s.watches.map((t) => (
                    <span class="chip watch" key={`w:${t}`} title="count watch">
                      # {t}
                    </span>
                  ))}
                </div>
              </div>
            ))}
          </div>
        ))}
    </>
  );
}

export function RealtimePage() {
  const { snap } = useStats();
  const [topics, setTopics] = useState<TopicRow[] | undefined>(undefined);
  const [filter, setFilter] = useState('');
  useLive('topics', 'topics', setTopics);
  const apps = snap?.apps.map((a) => a.appId) ?? [];
  const shown = (topics ?? []).filter((t) => !filter || t.appId === filter);

  return (
    <div class="grid">
      <Card title="Apps" class="span-all">
        {!snap ? (
          <Loading />
        ) : snap.apps.length === 0 ? (
          <Empty>No app has a client connected to this node.</Empty>
        ) : (
          <div class="app-chips">
            <button
              type="button"
              class={`chip-btn ${filter === '' ? 'active' : ''}`}
              onClick={() => setFilter('')}
            >
              all apps
            </button>
            {snap.apps.map((a) => (
              <button
                type="button"
                key={a.appId}
                class={`chip-btn ${filter === a.appId ? 'active' : ''}`}
                onClick={() => setFilter(a.appId)}
                data-app={a.appId}
              >
                {a.appId}{' '}
                <small>
                  {a.connections} conn · {fmtNum(a.deliveryRate)}/s
                </small>
              </button>
            ))}
          </div>
        )}
      </Card>

      <Card title="Busiest topics" id="topics">
        {topics === undefined ? (
          <Loading />
        ) : shown.length === 0 ? (
          <Empty>No topic has subscribers{filter ? ` in ${filter}` : ''} on this node.</Empty>
        ) : (
          <div class="table-wrap">
            <table data-testid="topics-table">
              <thead>
                <tr>
                  <th>Topic</th>
                  <th>App</th>
                  <th class="num" title="distinct client ids">
                    Subscribers
                  </th>
                  <th class="num">Sockets</th>
                </tr>
              </thead>
              <tbody>
                {shown.map((t) => (
                  <tr key={`${t.appId}|${t.topic}`}>
                    <td class="wrap">
                      <code>{t.topic}</code>
                    </td>
                    <td>{t.appId}</td>
                    <td class="num">{t.count}</td>
                    <td class="num">{t.connections}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Card>

      <Card title="Find a client">
        <ClientSearch apps={apps} />
      </Card>

      <Card title="Publish a test notification" class="span-all">
        <PublishForm apps={apps} />
      </Card>
    </div>
  );
}
