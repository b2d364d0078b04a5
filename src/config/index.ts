import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import YAML from 'yaml';
import { type HistoryRule, parseHistoryRules } from '../history/index.js';
import { parseDuration, parseDurationList } from './duration.js';
import { OPTIONS, type OptionKey, type OptionSpec, type OptionType } from './options.js';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/** One application in `apps` mode. */
export interface AppConfig {
  /** Namespace and appId: 1-64 chars of [A-Za-z0-9_.-]. */
  id: string;
  /** HS256 secret that signs client JWTs (at least 16 characters). */
  secret: string;
  /** API keys accepted as `Authorization: Bearer <key>` on the HTTP API for this app. */
  apiKeys: string[];
}

export interface Config {
  port: number;
  host: string;
  dataDir: string;
  logLevel: LogLevel;
  redisUrl: string | undefined;
  redisPrefix: string;
  presenceTtl: number;
  redisStallTimeout: number;
  /** Cluster: how long notifications gathered during a Redis call may wait for more, ms. */
  clusterPublishLinger: number;
  /** Cluster: what POST /notify does while Redis is unreachable (deliver locally, or refuse with 503). */
  redisDownNotify: 'local' | 'reject';
  historySize: number;
  historyTtl: number;
  historyMaxEntries: number;
  historyMaxBytes: number;
  historyMaxStreams: number;
  historyRules: HistoryRule[];
  receiptTtl: number;
  receiptMax: number;
  offlineWebhookUrl: string | undefined;
  databaseUrl: string | undefined;
  databaseSchema: string;
  shutdownTimeout: number;
  corsOrigins: string[];
  adminToken: string | undefined;
  /** GET /metrics needs `Authorization: Bearer <metricsToken>` when set. */
  metricsToken: string | undefined;
  /** MAX_CONNECTIONS: 0 derives the cap from the open-files limit (see Gateway). */
  maxConnections: number;
  /** MAX_CONNECTIONS_PER_CLIENT: 0 is no cap. */
  maxConnectionsPerClient: number;
  maxTopicsPerCall: number;
  maxTopicsPerConnection: number;
  /** CLIENT_EVENT_RATE / CLIENT_EVENT_BURST: the per-connection limit on client events (gateway/rate.ts). */
  clientEventRate: number;
  clientEventBurst: number;
  countInterval: number;
  pingInterval: number;
  pingTimeout: number;
  maxSocketBuffer: number;
  /** A young-generation collection after every this many accepted connections (0: off; see gc.ts). */
  connectGcEvery: number;
  maxClientMessageBytes: number;
  bodyLimit: number;
  batchBodyLimit: number;
  maxBatch: number;
  maxTargets: number;
  maxPayloadBytes: number;
  /** MAX_JSON_DEPTH: deepest nesting of client JSON (see input.ts; one per process). */
  maxJsonDepth: number;
  // webhooks (see OPTIONS for the meaning and defaults)
  webhookTimeout: number;
  webhookRetryDelays: readonly number[];
  /** WEBHOOK_RETRY_JITTER: retry delays are stretched by a random share of up to this fraction (0..1). */
  webhookRetryJitter: number;
  webhookConcurrency: number;
  webhookMerchantConcurrency: number;
  webhookSlowConcurrency: number;
  webhookSlowThreshold: number;
  webhookSlowLaneAfter: number;
  webhookBreakerThreshold: number;
  webhookBreakerOpen: number;
  webhookBreakerDelay: number;
  webhookMaxAge: number;
  webhookRequireSuccessBody: boolean;
  webhookAllowPrivateNetworks: boolean;
  webhookDefaultSecret: string | undefined;
  webhookLease: number;
  webhookPollInterval: number;
  webhookLogRetention: number;
  webhookIdempotencyRetention: number;
  webhookSlowMinSamples: number;
  webhookPrefetch: number;
  webhookSlowStart: number;
  webhookClaimBatch: number;
  webhookFlushBatch: number;
  webhookDispatch: boolean;
  webhookIntakeToken: string | undefined;
  webhookAlertWindow: number;
  webhookAlertInterval: number;
  webhookAlertCooldown: number;
  webhookAlertQueueLength: number;
  webhookAlertSuccessRate: number;
  webhookAlertErrorRate: number;
  webhookAlertResponseTime: number;
  webhookAlertMinSamples: number;
  telegramBotToken: string | undefined;
  telegramChatIds: string[];
  telegramMinInterval: number;
  telegramApiBase: string;
  alertWebhookUrl: string | undefined;
  // payments (see OPTIONS for the meaning and defaults)
  paymentTimeout: number;
  paymentSweepInterval: number;
  paymentRetention: number;
  paymentBatchMax: number;
  paymentQueueMax: number;
  paymentOrderCache: number;
  paymentCurrency: string;
  commandTimeout: number;
  machinePresenceInterval: number;
  /** Empty: `open` mode. Otherwise `apps` mode with exactly these apps. */
  apps: AppConfig[];
}

// Compile-time check that Config covers every option and nothing else.
type _Covers = Exclude<OptionKey, keyof Config> extends never ? true : never;
const _covers: _Covers = true;
void _covers;

export class ConfigError extends Error {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(`Invalid configuration: ${key}: ${message}`);
    this.name = 'ConfigError';
  }
}

export const APP_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;

function describeType(t: OptionType): string {
  switch (t.kind) {
    case 'int':
      return `an integer${t.min !== undefined ? ` >= ${t.min}` : ''}${t.max !== undefined ? ` and <= ${t.max}` : ''}`;
    case 'number':
      return `a number${t.min !== undefined ? ` >= ${t.min}` : ''}${t.max !== undefined ? ` and <= ${t.max}` : ''}`;
    case 'duration':
      return 'a duration such as 500ms, 30s, 15m, 1h';
    case 'durations':
      return `a comma separated list of durations such as 15s,1m,5m${t.presets ? `, or one of ${Object.keys(t.presets).join(', ')}` : ''}`;
    case 'bool':
      return 'true or false';
    case 'enum':
      return `one of ${t.values.join(', ')}`;
    case 'url':
      return `a URL starting with ${t.protocols.map((p) => `${p}//`).join(' or ')}`;
    case 'list':
      return t.means ?? 'a comma separated list';
    case 'json':
      return 'JSON';
    case 'string':
      return t.means ?? (t.pattern ? `a string matching ${t.pattern}` : 'a string');
  }
}

/**
 * The bad value as an error shows it. Errors reach stderr and log collectors: a secret is never shown,
 * and of a URL (which may carry a password, or a token in its path) only its scheme.
 */
function shown(spec: OptionSpec, raw: unknown): string {
  if (spec.secret) return 'a value that is not shown (it is a secret)';
  if (spec.type.kind === 'url' && typeof raw === 'string') {
    let scheme: string | undefined;
    try {
      scheme = new URL(raw.trim()).protocol;
    } catch {
      scheme = undefined;
    }
    return scheme !== undefined && /^[a-z][a-z0-9+.-]{0,31}:$/i.test(scheme)
      ? `a ${scheme} URL (the rest is not shown: it may hold credentials)`
      : 'text that is not a URL (not shown: it may hold credentials)';
  }
  return JSON.stringify(raw);
}

function parseValue(spec: OptionSpec, raw: unknown, label: string): unknown {
  const t = spec.type;
  const bad = (): never => {
    throw new ConfigError(label, `expected ${describeType(t)}, got ${shown(spec, raw)}`);
  };
  switch (t.kind) {
    case 'int': {
      const n =
        typeof raw === 'number'
          ? raw
          : typeof raw === 'string' && /^-?\d+$/.test(raw.trim())
            ? Number(raw)
            : NaN;
      if (!Number.isSafeInteger(n)) return bad();
      if ((t.min !== undefined && n < t.min) || (t.max !== undefined && n > t.max)) return bad();
      return n;
    }
    case 'number': {
      // Plain decimals only: no hex, exponents, Infinity or a percent sign (10% would not mean 0.1).
      const n =
        typeof raw === 'number'
          ? raw
          : typeof raw === 'string' && /^-?(\d+(\.\d*)?|\.\d+)$/.test(raw.trim())
            ? Number(raw)
            : NaN;
      if (!Number.isFinite(n)) return bad();
      if ((t.min !== undefined && n < t.min) || (t.max !== undefined && n > t.max)) return bad();
      return n;
    }
    case 'duration': {
      const d = typeof raw === 'string' || typeof raw === 'number' ? parseDuration(raw) : undefined;
      if (d === undefined) return bad();
      if ((t.min !== undefined && d < t.min) || (t.max !== undefined && d > t.max)) {
        throw new ConfigError(
          label,
          `duration ${JSON.stringify(raw)} is out of range [${t.min}ms, ${t.max}ms]`,
        );
      }
      return d;
    }
    case 'durations': {
      const preset = typeof raw === 'string' ? t.presets?.[raw.trim()] : undefined;
      if (preset) return [...preset];
      const list =
        typeof raw === 'string' || Array.isArray(raw)
          ? parseDurationList(raw as string | string[])
          : undefined;
      if (!list || list.length === 0) return bad();
      if (t.min !== undefined && list.some((d) => d < t.min!)) return bad();
      return list;
    }
    case 'bool': {
      if (typeof raw === 'boolean') return raw;
      if (typeof raw === 'string' && /^(true|1|yes|on)$/i.test(raw.trim())) return true;
      if (typeof raw === 'string' && /^(false|0|no|off)$/i.test(raw.trim())) return false;
      return bad();
    }
    case 'enum': {
      if (typeof raw !== 'string' || !t.values.includes(raw.trim())) return bad();
      return raw.trim();
    }
    case 'url': {
      if (typeof raw !== 'string') return bad();
      let u: URL;
      try {
        u = new URL(raw.trim());
      } catch {
        return bad();
      }
      if (!t.protocols.includes(u.protocol)) return bad();
      return raw.trim();
    }
    case 'list': {
      let list: string[];
      if (Array.isArray(raw) && raw.every((x) => typeof x === 'string'))
        list = raw.map((s: string) => s.trim());
      else if (typeof raw === 'string')
        list = raw
          .split(',')
          .map((s) => s.trim())
          .filter((s) => s.length > 0);
      else return bad();
      if (list.length < (t.min ?? 0)) return bad();
      const { item } = t;
      if (item && !list.every((s) => item.test(s))) return bad();
      return list;
    }
    case 'json': {
      if (typeof raw !== 'string') return raw;
      try {
        return JSON.parse(raw);
      } catch {
        return bad();
      }
    }
    case 'string': {
      if (typeof raw !== 'string') return bad();
      if (!t.allowEmpty && raw.length === 0) return bad();
      if (t.pattern && !t.pattern.test(raw)) return bad();
      return raw;
    }
  }
}

function parseApps(raw: unknown, label: string): AppConfig[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw new ConfigError(label, 'expected a list of { id, secret, apiKeys }');
  const seen = new Set<string>();
  // Each app's own: a client token signed with a shared secret would open every app that has it, and
  // a shared API key would act for the first app declared with it.
  const secrets = new Map<string, string>();
  const apiKeys = new Map<string, string>();
  return raw.map((entry: unknown, i: number): AppConfig => {
    const at = `${label}[${i}]`;
    if (typeof entry !== 'object' || entry === null) throw new ConfigError(at, 'expected an object');
    const e = entry as Record<string, unknown>;
    for (const k of Object.keys(e)) {
      if (!['id', 'secret', 'apiKeys'].includes(k)) throw new ConfigError(`${at}.${k}`, 'unknown key');
    }
    if (typeof e.id !== 'string' || !APP_ID_RE.test(e.id)) {
      throw new ConfigError(`${at}.id`, 'expected 1-64 characters of [A-Za-z0-9_.-]');
    }
    if (seen.has(e.id)) throw new ConfigError(`${at}.id`, `app ${e.id} is declared twice`);
    seen.add(e.id);
    if (typeof e.secret !== 'string' || e.secret.length < 16) {
      throw new ConfigError(`${at}.secret`, 'expected a string of at least 16 characters');
    }
    const keys = e.apiKeys;
    if (
      !Array.isArray(keys) ||
      keys.length === 0 ||
      !keys.every((k) => typeof k === 'string' && k.length >= 16)
    ) {
      throw new ConfigError(
        `${at}.apiKeys`,
        'expected a non-empty list of strings of at least 16 characters',
      );
    }
    const sameSecret = secrets.get(e.secret);
    if (sameSecret !== undefined) {
      throw new ConfigError(
        `${at}.secret`,
        `the same as app ${sameSecret}'s: each app needs its own (tokens of one would open the other)`,
      );
    }
    secrets.set(e.secret, e.id);
    for (const [j, k] of (keys as string[]).entries()) {
      const owner = apiKeys.get(k);
      if (owner !== undefined) {
        throw new ConfigError(
          `${at}.apiKeys[${j}]`,
          owner === e.id ? 'listed twice' : `also an API key of app ${owner}: each app needs its own`,
        );
      }
      apiKeys.set(k, e.id);
    }
    return { id: e.id, secret: e.secret, apiKeys: keys as string[] };
  });
}

const HISTORY_RULE_KEYS = ['appId', 'prefix', 'size', 'ttl'];

/**
 * What parseHistoryRules lets through but would apply other than as written: an unknown key (a typo of
 * `prefix` or `appId` made the rule match every stream of every app), an appId or prefix that is not a
 * string (ignored the same way), a ttl outside HISTORY_TTL's own range (0 turned the rule's history off).
 */
function checkHistoryRules(raw: unknown): void {
  let list = raw;
  if (typeof raw === 'string') {
    try {
      list = JSON.parse(raw);
    } catch {
      return; // parseHistoryRules reports it
    }
  }
  if (!Array.isArray(list)) return;
  const { min, max } = OPTIONS.historyTtl.type;
  list.forEach((rule: unknown, i) => {
    const at = `HISTORY_RULES[${i}]`;
    if (typeof rule !== 'object' || rule === null || Array.isArray(rule)) {
      throw new ConfigError(at, 'expected an object { appId?, prefix?, size, ttl }');
    }
    const r = rule as Record<string, unknown>;
    for (const k of Object.keys(r)) {
      if (!HISTORY_RULE_KEYS.includes(k)) {
        throw new ConfigError(`${at}.${k}`, `unknown key (expected ${HISTORY_RULE_KEYS.join(', ')})`);
      }
    }
    for (const k of ['appId', 'prefix'] as const) {
      if (k in r && typeof r[k] !== 'string') throw new ConfigError(`${at}.${k}`, 'expected a string');
    }
    const ttl = typeof r.ttl === 'string' || typeof r.ttl === 'number' ? parseDuration(r.ttl) : undefined;
    if (ttl !== undefined && (ttl < min || ttl > max)) {
      throw new ConfigError(
        `${at}.ttl`,
        `duration ${JSON.stringify(r.ttl)} is out of range [${min}ms, ${max}ms]`,
      );
    }
  });
}

/**
 * Where and why a config file does not parse, without quoting it: the file holds secrets and this
 * message goes to stderr and log collectors, but JSON.parse quotes short texts ("..." is not valid
 * JSON) and YAML appends the offending line.
 */
function syntaxError(err: unknown, text: string, json: boolean): string {
  const message = String((err as Error)?.message ?? err);
  if (json) {
    const at = /at position (\d+)/.exec(message);
    if (!at) return 'not valid JSON';
    const pos = Math.min(Number(at[1]), text.length);
    const before = text.slice(0, pos).split('\n');
    const why = message
      .slice(0, at.index)
      .trim()
      .replace(/ in JSON$/, '');
    return `${why} (not valid JSON) at line ${before.length}, column ${(before.at(-1)?.length ?? 0) + 1}`;
  }
  // YAML: "<why> at line L, column C:" and then the file's line; a few reasons end with text of the file.
  return `${(message.split('\n')[0] ?? '').replace(/:\s*$/, '').replace(/\): .*$/, ')')} (not valid YAML)`;
}

function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError('HERALD_CONFIG', `cannot read ${path}: ${(err as Error).message}`);
  }
  // A byte order mark (some Windows editors save JSON with one) is not part of the settings.
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const json = extname(path) === '.json';
  let parsed: unknown;
  try {
    // No YAML warnings either: they print the offending line of the file.
    parsed = json ? JSON.parse(text) : YAML.parse(text, { logLevel: 'error' });
  } catch (err) {
    throw new ConfigError('HERALD_CONFIG', `cannot parse ${path}: ${syntaxError(err, text, json)}`);
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new ConfigError('HERALD_CONFIG', `${path} must hold an object of settings`);
  }
  return parsed as Record<string, unknown>;
}

/**
 * Builds the configuration from defaults, then the config file (`HERALD_CONFIG`), then environment
 * variables, then `overrides` (used by tests and embedding code). Throws ConfigError naming the bad key.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Config> = {}): Config {
  const out: Record<string, unknown> = {};
  const file = env.HERALD_CONFIG ? readConfigFile(env.HERALD_CONFIG) : {};
  const known = new Set<string>([...Object.keys(OPTIONS), 'apps']);
  for (const key of Object.keys(file)) {
    if (!known.has(key)) throw new ConfigError(key, `unknown key in ${env.HERALD_CONFIG}`);
  }
  for (const [key, spec] of Object.entries(OPTIONS) as [OptionKey, OptionSpec][]) {
    let value = spec.default;
    if (file[key] !== undefined && file[key] !== null) value = parseValue(spec, file[key], key);
    const fromEnv = env[spec.env];
    if (fromEnv !== undefined && fromEnv !== '') value = parseValue(spec, fromEnv, spec.env);
    out[key] = value;
  }
  let apps = parseApps(file.apps, 'apps');
  if (env.HERALD_APPS) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(env.HERALD_APPS);
    } catch {
      throw new ConfigError('HERALD_APPS', 'expected JSON: [{"id":..,"secret":..,"apiKeys":[..]}]');
    }
    apps = parseApps(parsed, 'HERALD_APPS');
  }
  out.apps = apps;
  checkHistoryRules(out.historyRules);
  try {
    out.historyRules = parseHistoryRules(out.historyRules, (v) =>
      typeof v === 'string' || typeof v === 'number' ? parseDuration(v) : undefined,
    );
  } catch (err) {
    throw new ConfigError('HISTORY_RULES', (err as Error).message);
  }
  const config = { ...(out as unknown as Config), ...overrides };
  if (overrides.apps) config.apps = parseApps(overrides.apps, 'apps');
  return config;
}
