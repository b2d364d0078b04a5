/** Small building blocks shared by the pages: states, cards, badges, charts, formatting. */
import type { ComponentChildren } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { describeError } from './api.js';

export function Loading({ what = 'Loading' }: { what?: string }) {
  return (
    <div class="state loading" role="status" aria-live="polite">
      <span class="spinner" aria-hidden="true" />
      {what}…
    </div>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <div class="state empty">{children}</div>;
}

export function ErrorBox({ error, retry }: { error: unknown; retry?: () => void }) {
  return (
    <div class="state error" role="alert">
      <span>{describeError(error)}</span>
      {retry && (
        <button type="button" class="link" onClick={retry}>
          Try again
        </button>
      )}
    </div>
  );
}

export function Card({
  title,
  children,
  actions,
  class: cls,
  id,
}: {
  title?: ComponentChildren;
  children: ComponentChildren;
  actions?: ComponentChildren;
  class?: string;
  id?: string;
}) {
  return (
    <section class={`card ${cls ?? ''}`} id={id}>
      {(title || actions) && (
        <header class="card-head">
          {title && <h2>{title}</h2>}
          {actions && <div class="card-actions">{actions}</div>}
        </header>
      )}
      {children}
    </section>
  );
}

export function Badge({
  tone,
  children,
}: {
  tone: 'ok' | 'warn' | 'bad' | 'muted' | 'info';
  children: ComponentChildren;
}) {
  return <span class={`badge ${tone}`}>{children}</span>;
}

/** A line chart of the last values, drawn as SVG; the last value is shown beside it. */
export function Sparkline({
  values,
  label,
  unit = '',
  color = 'var(--accent)',
  testId,
}: {
  values: number[];
  label: string;
  unit?: string;
  color?: string;
  testId?: string;
}) {
  const w = 240;
  const h = 56;
  const last = values.length ? (values[values.length - 1] as number) : 0;
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? w / (values.length - 1) : w;
  const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 6)).toFixed(1)}`);
  return (
    <div class="metric" data-testid={testId}>
      <div class="metric-head">
        <span class="metric-label">{label}</span>
        <span class="metric-value" data-value={last}>
          {fmtNum(last)}
          {unit && <small>{unit}</small>}
        </span>
      </div>
      <svg
        viewBox={`0 0 ${w} ${h}`}
        preserveAspectRatio="none"
        class="spark"
        role="img"
        aria-label={`${label} chart`}
      >
        {values.length > 1 && (
          <>
            <polyline
              points={`0,${h} ${pts.join(' ')} ${w},${h}`}
              fill={color}
              fill-opacity="0.12"
              stroke="none"
            />
            <polyline
              points={pts.join(' ')}
              fill="none"
              stroke={color}
              stroke-width="2"
              vector-effect="non-scaling-stroke"
            />
          </>
        )}
      </svg>
      <div class="spark-foot">
        <span>last {values.length}s</span>
        <span>max {fmtNum(max)}</span>
      </div>
    </div>
  );
}

/** Horizontal bars for counts per key. */
export function Bars({ rows }: { rows: { key: string; value: number; tone?: string }[] }) {
  const max = Math.max(1, ...rows.map((r) => r.value));
  return (
    <div class="bars">
      {rows.map((r) => (
        <div class="bar-row" key={r.key} data-key={r.key}>
          <span class="bar-key">{r.key}</span>
          <span class="bar-track">
            <span class={`bar-fill ${r.tone ?? ''}`} style={{ width: `${(r.value / max) * 100}%` }} />
          </span>
          <span class="bar-value">{fmtNum(r.value)}</span>
        </div>
      ))}
    </div>
  );
}

export function fmtNum(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return Number.isInteger(n) ? String(n) : n.toFixed(n < 10 ? 2 : 1);
}

export function fmtBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(0)} MiB`;
  return `${(n / 1024).toFixed(0)} KiB`;
}

export function fmtDuration(s: number): string {
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function fmtTime(iso: string | null | undefined): string {
  if (!iso) return '–';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '–';
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export function fmtMoney(amount: number | null | undefined, currency: string | null | undefined): string {
  if (amount === null || amount === undefined) return '–';
  try {
    return new Intl.NumberFormat(undefined, { style: 'currency', currency: currency || 'CNY' }).format(
      amount,
    );
  } catch {
    return `${amount.toFixed(2)} ${currency ?? ''}`;
  }
}

export type Async<T> =
  | { state: 'loading'; data?: T }
  | { state: 'ok'; data: T }
  | { state: 'error'; error: unknown; data?: T };

/**
 * Runs `load` on mount and whenever `deps` change; `reload()` runs it again keeping the data shown
 * meanwhile. Results of superseded runs are dropped.
 */
export function useAsync<T>(
  load: (signal: AbortSignal) => Promise<T>,
  deps: unknown[],
): [Async<T>, () => void] {
  const [s, set] = useState<Async<T>>({ state: 'loading' });
  const run = useRef(0);
  const ctl = useRef<AbortController | undefined>(undefined);
  const go = useCallback(() => {
    const id = ++run.current;
    ctl.current?.abort();
    const c = new AbortController();
    ctl.current = c;
    set((prev) => ({ state: 'loading', data: prev.data }));
    load(c.signal).then(
      (data) => {
        if (id === run.current) set({ state: 'ok', data });
      },
      (error: unknown) => {
        if (id === run.current && (error as Error)?.name !== 'AbortError')
          set((prev) => ({ state: 'error', error, data: prev.data }));
      },
    );
  }, deps);
  useEffect(() => {
    go();
    return () => ctl.current?.abort();
  }, [go]);
  return [s, go];
}

/** Calls `fn` at most once per `ms`, the last call winning (for reloads triggered by live pushes). */
export function useDebounced(fn: () => void, ms: number): () => void {
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const latest = useRef(fn);
  latest.current = fn;
  useEffect(() => () => clearTimeout(timer.current), []);
  return useCallback(() => {
    if (timer.current !== undefined) return;
    timer.current = setTimeout(() => {
      timer.current = undefined;
      latest.current();
    }, ms);
  }, [ms]);
}

/** Renders the right state of an Async value; `children` gets the data. */
export function AsyncView<T>({
  value,
  retry,
  children,
  what,
}: {
  value: Async<T>;
  retry?: () => void;
  children: (data: T) => ComponentChildren;
  what?: string;
}) {
  if (value.state === 'error') {
    return (
      <>
        <ErrorBox error={value.error} retry={retry} />
        {value.data !== undefined && children(value.data)}
      </>
    );
  }
  if (value.data === undefined) return <Loading what={what} />;
  return <>{children(value.data)}</>;
}

/** Tones of order states and webhook outcomes. */
export function stateTone(state: string | null | undefined): 'ok' | 'warn' | 'bad' | 'muted' | 'info' {
  switch (state) {
    case 'succeeded':
    case 'success':
    case 'delivered':
    case 'normal':
    case 'online':
    case 'ready':
      return 'ok';
    case 'paying':
    case 'retrying':
    case 'delayed':
    case 'slow':
    case 'degraded':
    case 'half_open':
    case 'refunded':
      return 'warn';
    case 'failed':
    case 'circuit_breaker':
    case 'open':
    case 'timeout':
    case 'network_error':
    case 'http_error':
    case 'bad_body':
    case 'gone':
    case 'not_ready':
      return 'bad';
    case 'created':
    case 'pending':
      return 'info';
    default:
      return 'muted';
  }
}
