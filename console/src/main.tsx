/** The console shell: token gate, navigation, live status, and the page of the current path. */
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ApiError, call, getToken, setToken } from './api.js';
import { resetLive, useLiveStatus } from './live.js';
import { MerchantsPage } from './pages/merchants.js';
import { OverviewPage } from './pages/overview.js';
import { PaymentsPage } from './pages/payments.js';
import { RealtimePage } from './pages/realtime.js';
import { ErrorBox, Loading } from './ui.js';
import './style.css';

const BASE = '/console';

const PAGES = [
  { path: '', title: 'Overview', icon: '◎', Page: OverviewPage },
  { path: 'realtime', title: 'Realtime', icon: '⇄', Page: RealtimePage },
  { path: 'merchants', title: 'Merchant notifications', icon: '✉', Page: MerchantsPage },
  { path: 'payments', title: 'Payments & machines', icon: '¥', Page: PaymentsPage },
] as const;

function currentPath(): string {
  const p = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) : location.pathname;
  const seg = p.replace(/^\/+|\/+$/g, '').split('/')[0] ?? '';
  return seg === 'overview' ? '' : seg;
}

export function navigate(path: string): void {
  history.pushState(null, '', `${BASE}/${path}${location.search}`);
  window.dispatchEvent(new Event('herald:navigate'));
}

function usePath(): string {
  const [path, set] = useState(currentPath());
  useEffect(() => {
    const on = () => set(currentPath());
    window.addEventListener('popstate', on);
    window.addEventListener('herald:navigate', on);
    return () => {
      window.removeEventListener('popstate', on);
      window.removeEventListener('herald:navigate', on);
    };
  }, []);
  return path;
}

type Gate =
  | { state: 'checking' }
  | { state: 'login'; error?: string }
  | { state: 'in' }
  | { state: 'error'; error: unknown };

function Login({ error, onToken }: { error?: string; onToken: (t: string) => void }) {
  const [value, setValue] = useState('');
  return (
    <main class="login">
      <form
        class="card login-card"
        onSubmit={(e) => {
          e.preventDefault();
          if (value.trim()) onToken(value.trim());
        }}
      >
        <h1>
          <span class="logo">Herald</span> console
        </h1>
        <p>
          This node requires its admin token (<code>ADMIN_TOKEN</code>). It is kept for this browser tab only.
        </p>
        <label>
          Admin token
          <input
            type="password"
            name="token"
            autocomplete="current-password"
            value={value}
            onInput={(e) => setValue((e.target as HTMLInputElement).value)}
            required
          />
        </label>
        {error && (
          <p class="form-error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary">
          Sign in
        </button>
      </form>
    </main>
  );
}

function LiveDot() {
  const s = useLiveStatus();
  const text = {
    connecting: 'connecting',
    live: 'live',
    offline: 'reconnecting',
    unauthorized: 'signed out',
  }[s];
  return (
    <span class={`live-dot ${s}`} data-testid="live-status" title="Realtime channel to this node">
      <span aria-hidden="true" />
      {text}
    </span>
  );
}

function App() {
  const path = usePath();
  const [gate, setGate] = useState<Gate>({ state: 'checking' });
  const [menu, setMenu] = useState(false);

  const check = async (tokenError?: string) => {
    try {
      const { required } = await call<{ required: boolean }>('/admin/api/auth');
      if (required && !getToken()) return setGate({ state: 'login', error: tokenError });
      await call('/admin/api/overview');
      setGate({ state: 'in' });
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        setToken(null);
        setGate({
          state: 'login',
          error: getToken() === null && tokenError ? tokenError : 'That token was not accepted.',
        });
      } else setGate({ state: 'error', error: err });
    }
  };

  useEffect(() => {
    check();
    const onUnauthorized = () => {
      if (getToken() !== null) setToken(null);
      resetLive();
      setGate({ state: 'login', error: 'The admin token is missing or no longer valid.' });
    };
    window.addEventListener('herald:unauthorized', onUnauthorized);
    return () => window.removeEventListener('herald:unauthorized', onUnauthorized);
  }, []);

  useEffect(() => {
    const page = PAGES.find((p) => p.path === path);
    document.title = `${page?.title ?? 'Not found'} · Herald console`;
    setMenu(false);
  }, [path]);

  if (gate.state === 'checking') return <Loading what="Connecting to the node" />;
  if (gate.state === 'error')
    return (
      <main class="login">
        <ErrorBox error={gate.error} retry={() => check()} />
      </main>
    );
  if (gate.state === 'login')
    return (
      <Login
        error={gate.error}
        onToken={(t) => {
          setToken(t);
          resetLive();
          setGate({ state: 'checking' });
          check('That token was not accepted.');
        }}
      />
    );

  const page = PAGES.find((p) => p.path === path);
  return (
    <div class={`shell ${menu ? 'menu-open' : ''}`}>
      <header class="topbar">
        <button
          type="button"
          class="menu-btn"
          aria-label="Menu"
          aria-expanded={menu}
          onClick={() => setMenu(!menu)}
        >
          ☰
        </button>
        <a
          class="brand"
          href={`${BASE}/`}
          onClick={(e) => {
            e.preventDefault();
            navigate('');
          }}
        >
          <span class="logo">Herald</span> console
        </a>
        <span class="spacer" />
        <LiveDot />
        {getToken() && (
          <button
            type="button"
            class="link"
            onClick={() => {
              setToken(null);
              resetLive();
              setGate({ state: 'checking' });
              check();
            }}
          >
            Sign out
          </button>
        )}
      </header>
      <nav class="sidenav" aria-label="Pages">
        {PAGES.map((p) => (
          <a
            key={p.path}
            href={`${BASE}/${p.path}`}
            class={p.path === path ? 'active' : ''}
            aria-current={p.path === path ? 'page' : undefined}
            onClick={(e) => {
              e.preventDefault();
              navigate(p.path);
            }}
          >
            <span class="nav-icon" aria-hidden="true">
              {p.icon}
            </span>
            {p.title}
          </a>
        ))}
        <a href={`${BASE}/cashier`} target="_blank" rel="noopener">
          <span class="nav-icon" aria-hidden="true">
            ♪
          </span>
          Cashier demo ↗
        </a>
      </nav>
      <main class="content" id="main">
        {page ? (
          <>
            <h1 class="page-title">{page.title}</h1>
            <page.Page />
          </>
        ) : (
          <div class="card">
            <h1 class="page-title">Page not found</h1>
            <p>
              There is no console page at <code>{location.pathname}</code>.{' '}
              <a
                href={`${BASE}/`}
                onClick={(e) => {
                  e.preventDefault();
                  navigate('');
                }}
              >
                Go to the overview
              </a>
              .
            </p>
          </div>
        )}
      </main>
    </div>
  );
}

render(<App />, document.getElementById('app') as HTMLElement);
