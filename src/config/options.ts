import { DEFAULT_MAX_JSON_DEPTH, MAX_JSON_DEPTH_LIMIT, MIN_JSON_DEPTH } from '../input.js';

/**
 * The one table of Herald's settings. Each option has a config-file key, an environment variable,
 * a type, a default and a line of documentation. `scripts/config-table.ts` renders it into the README.
 * Add new settings here; nothing else reads `process.env`.
 */
export type OptionType =
  | { kind: 'int'; min?: number; max?: number }
  | { kind: 'number'; min?: number; max?: number }
  | {
      kind: 'string';
      pattern?: RegExp;
      allowEmpty?: boolean;
      /** What the pattern asks, in words, for errors. */
      means?: string;
    }
  | { kind: 'bool' }
  | { kind: 'duration'; min?: number; max?: number }
  | { kind: 'durations'; min?: number; presets?: Readonly<Record<string, readonly number[]>> }
  | { kind: 'enum'; values: readonly string[] }
  | { kind: 'url'; protocols: readonly string[] }
  | {
      kind: 'list';
      /** Fewest entries (an empty value, or only commas, is refused below it). */
      min?: number;
      /** What each entry must match, and how an error names it. */
      item?: RegExp;
      means?: string;
    }
  | { kind: 'json' };

export interface OptionSpec {
  env: string;
  type: OptionType;
  /** Default value, already in its parsed form. `undefined` means "not set". */
  default: unknown;
  doc: string;
  /** A credential: a configuration error names the setting but never prints its value. */
  secret?: true;
}

/**
 * A bearer token as clients can send it: `Authorization: Bearer <token>` carries no whitespace, so a
 * token with some (the trailing newline of a secret file) would never match and lock everyone out.
 */
const TOKEN = {
  kind: 'string',
  pattern: /^[^\s\p{Cc}]+$/u,
  means: 'a token without whitespace or control characters',
} as const;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
/** Retry schedules selectable by name in WEBHOOK_RETRY_DELAYS. */
export const RETRY_PRESETS = {
  /** The seed's rule: 3 retries with increasing delay. */
  default: [15 * SECOND, MINUTE, 5 * MINUTE],
  /** WeChat Pay's result-notification schedule: 15 retries over about 24 hours. */
  wechat: [
    15 * SECOND,
    15 * SECOND,
    30 * SECOND,
    3 * MINUTE,
    10 * MINUTE,
    20 * MINUTE,
    30 * MINUTE,
    30 * MINUTE,
    30 * MINUTE,
    60 * MINUTE,
    3 * HOUR,
    3 * HOUR,
    3 * HOUR,
    6 * HOUR,
    6 * HOUR,
  ],
} as const satisfies Record<string, readonly number[]>;

export const OPTIONS = {
  port: {
    env: 'PORT',
    type: { kind: 'int', min: 0, max: 65535 },
    default: 3000,
    doc: 'TCP port to listen on.',
  },
  host: { env: 'HOST', type: { kind: 'string' }, default: '0.0.0.0', doc: 'Address to bind.' },
  dataDir: {
    env: 'DATA_DIR',
    // Node's recursive mkdir never returns for a path under /proc (the node would hang at start-up).
    type: {
      kind: 'string',
      pattern: /^(?!\/(proc|sys)(\/|$))./,
      means: 'a folder path outside /proc and /sys',
    },
    default: './data',
    doc: 'Folder of the embedded store (used when DATABASE_URL is not set).',
  },
  logLevel: {
    env: 'LOG_LEVEL',
    type: { kind: 'enum', values: LOG_LEVELS },
    default: 'info',
    doc: `Log level: ${LOG_LEVELS.join(', ')}.`,
  },
  redisUrl: {
    env: 'REDIS_URL',
    type: { kind: 'url', protocols: ['redis:', 'rediss:'] },
    default: undefined,
    doc: 'Redis for cluster mode (fan-out, presence, history). Unset: in-memory, single node.',
  },
  redisPrefix: {
    env: 'REDIS_PREFIX',
    type: { kind: 'string', pattern: /^[A-Za-z0-9_.:-]{1,64}$/ },
    default: 'herald:',
    doc: 'Prefix of every Redis key and channel.',
  },
  presenceTtl: {
    env: 'PRESENCE_TTL',
    type: { kind: 'duration', min: 2000, max: 300_000 },
    default: 10_000,
    doc: 'Cluster mode: a node silent for this long is dead and its subscribers leave the counts.',
  },
  redisStallTimeout: {
    env: 'REDIS_STALL_TIMEOUT',
    type: { kind: 'duration', min: 500, max: 60_000 },
    default: 2000,
    doc: 'Cluster mode: a Redis that owes a reply this long counts as down (checked four times per period, so within 1.25 times it; its connection is dropped; notifications go to local sockets only until it answers). Raise it for a Redis whose failover pauses writes longer.',
  },
  clusterPublishLinger: {
    env: 'CLUSTER_PUBLISH_LINGER',
    type: { kind: 'duration', min: 0, max: 100 },
    default: 1,
    doc: 'Cluster mode: how long notifications published while this node waits for a Redis call may wait for more before they leave together in the next call (counted from the first; a lone notification never waits). Longer: fewer calls and cluster messages under load, less CPU on every node and Redis; 0: no wait beyond the call in flight.',
  },
  redisDownNotify: {
    env: 'REDIS_DOWN_NOTIFY',
    type: { kind: 'enum', values: ['local', 'reject'] },
    default: 'local',
    doc: "Cluster mode, what POST /notify and /notify/batch do while this node cannot reach Redis: `local` delivers to this node's sockets only (other nodes' clients miss the notification, with no gap to recover); `reject` delivers nowhere and answers 503 `cluster_unavailable`, for producers that retry. Payment notifications always wait for Redis (the outbox publishes them again).",
  },
  historySize: {
    env: 'HISTORY_SIZE',
    type: { kind: 'int', min: 0, max: 100_000 },
    default: 300,
    doc: 'Notifications kept per stream (topic, user, device) for recovery after a reconnect; 0 turns history off.',
  },
  historyTtl: {
    env: 'HISTORY_TTL',
    type: { kind: 'duration', min: 1000, max: 86_400_000 },
    default: 300_000,
    doc: 'How long a notification stays in its stream history.',
  },
  historyMaxEntries: {
    env: 'HISTORY_MAX_ENTRIES',
    type: { kind: 'int', min: 1000, max: 100_000_000 },
    default: 200_000,
    doc: 'Single node: history entries kept in memory over all streams; past it the oldest go first (their streams then answer `recovered: false` for them). Redis keeps history in a cluster.',
  },
  historyMaxBytes: {
    env: 'HISTORY_MAX_BYTES',
    type: { kind: 'int', min: 1 << 20, max: 2 ** 40 },
    default: 256 * 1024 * 1024,
    doc: 'Single node: bytes of history entries (id, time, data) kept in memory over all streams; past it the oldest go first, as for HISTORY_MAX_ENTRIES. Bounds the memory of large notifications (200,000 of 64 KB would be 12.8 GB).',
  },
  historyMaxStreams: {
    env: 'HISTORY_MAX_STREAMS',
    type: { kind: 'int', min: 1000, max: 100_000_000 },
    default: 200_000,
    doc: 'Single node: streams whose offset and epoch are kept in memory (an idle one is kept 1 h); past it the oldest-created are forgotten at the next sweep (every 30 s).',
  },
  historyRules: {
    env: 'HISTORY_RULES',
    type: { kind: 'json' },
    default: [],
    doc: 'Per app / stream prefix history, JSON list of `{ appId?, prefix?, size, ttl }` (ttl 1s to 1d, as HISTORY_TTL); the first match wins (e.g. `[{"prefix":"t:chat:","size":1000,"ttl":"10m"}]`).',
  },
  receiptTtl: {
    env: 'RECEIPT_TTL',
    type: { kind: 'duration', min: 1000, max: 7 * 86_400_000 },
    default: 3_600_000,
    doc: 'How long delivery receipts of notifications sent with `ack: true` can be read at GET /notify/:id.',
  },
  receiptMax: {
    env: 'RECEIPT_MAX',
    type: { kind: 'int', min: 1000, max: 100_000_000 },
    default: 200_000,
    doc: 'Single node: notifications whose receipts are kept in memory; past it the oldest are forgotten before RECEIPT_TTL (GET /notify/:id answers 404 for them).',
  },
  offlineWebhookUrl: {
    env: 'OFFLINE_WEBHOOK_URL',
    type: { kind: 'url', protocols: ['http:', 'https:'] },
    default: undefined,
    doc: 'Notifications for a user with no connected device are forwarded here (through the webhook engine) for mobile push.',
  },
  databaseUrl: {
    env: 'DATABASE_URL',
    type: { kind: 'url', protocols: ['postgres:', 'postgresql:'] },
    default: undefined,
    doc: 'PostgreSQL for durable state. Unset: the embedded PostgreSQL (PGlite) under DATA_DIR.',
  },
  databaseSchema: {
    env: 'DATABASE_SCHEMA',
    type: { kind: 'string', pattern: /^[a-z_][a-z0-9_]{0,62}$/ },
    default: 'herald',
    doc: 'PostgreSQL schema holding Herald tables.',
  },
  shutdownTimeout: {
    env: 'SHUTDOWN_TIMEOUT',
    type: { kind: 'duration', min: 0, max: 600_000 },
    default: 10_000,
    doc:
      'How long a graceful stop (SIGTERM, SIGINT) may take; past it the process logs the step still pending and ' +
      "exits with code 124 (0: at once, without draining). Keep it below the orchestrator's grace period " +
      '(terminationGracePeriodSeconds, docker stop -t).',
  },
  corsOrigins: {
    env: 'CORS_ORIGINS',
    type: {
      kind: 'list',
      min: 1,
      // What a browser sends in Origin: scheme, host and port, no path ("example.com" would match nothing).
      item: /^(\*|https?:\/\/[^/\s?#]+)$/,
      means:
        'a comma separated list of origins such as https://app.example.com (scheme and host, no path), or *',
    },
    default: ['*'],
    doc: 'Origins allowed for browsers (HTTP API and Socket.IO), comma separated; `*` allows any.',
  },
  adminToken: {
    env: 'ADMIN_TOKEN',
    type: TOKEN,
    secret: true,
    default: undefined,
    doc: 'Bearer token required by /admin and /console when set (no whitespace or control characters).',
  },
  metricsToken: {
    env: 'METRICS_TOKEN',
    type: TOKEN,
    secret: true,
    default: undefined,
    doc: 'Bearer token required by GET /metrics when set (no whitespace or control characters); unset: /metrics is open.',
  },

  // realtime gateway
  maxTopicsPerCall: {
    env: 'MAX_TOPICS_PER_CALL',
    type: { kind: 'int', min: 1, max: 10_000 },
    default: 100,
    doc: 'Topics in one subscribe/unsubscribe/subscribeCount call.',
  },
  maxConnections: {
    env: 'MAX_CONNECTIONS',
    type: { kind: 'int', min: 0, max: 100_000_000 },
    default: 0,
    doc:
      'Client connections (Socket.IO, console included) this node holds at most. One more is refused at its handshake ' +
      '(HTTP 403 `too_many_connections`; Socket.IO clients retry with back-off, through a load balancer maybe on ' +
      'another node) and the node goes on serving its connections, its HTTP API and probes. 0: the open-files ' +
      'limit less 200 where Linux tells it (each connection is an open file: past the limit the node could accept ' +
      'nothing, probes included), otherwise no cap.',
  },
  maxConnectionsPerClient: {
    env: 'MAX_CONNECTIONS_PER_CLIENT',
    type: { kind: 'int', min: 0, max: 100_000_000 },
    default: 100,
    doc:
      'Connections one client id of an app may hold on this node at once (its devices, tabs, apps). One more is ' +
      'refused with connect_error `too_many_connections`: a client that leaks connections cannot take a node ' +
      'for itself. Anonymous clients are each their own id. 0: no cap.',
  },
  maxTopicsPerConnection: {
    env: 'MAX_TOPICS_PER_CONNECTION',
    type: { kind: 'int', min: 1, max: 1_000_000 },
    default: 1000,
    doc: 'Subscriptions (topics plus count watches) one connection may hold.',
  },
  clientEventRate: {
    env: 'CLIENT_EVENT_RATE',
    type: { kind: 'int', min: 0, max: 1_000_000 },
    default: 200,
    doc:
      'Events per second one connection may send on average (subscribe, recover, receipt, payment:report, ...). ' +
      'An event over the limit is not handled and is answered `rate_limited` with `retryAfterMs`; 0: no limit.',
  },
  clientEventBurst: {
    env: 'CLIENT_EVENT_BURST',
    type: { kind: 'int', min: 1, max: 1_000_000 },
    default: 2000,
    doc:
      'Events one connection may send at once above CLIENT_EVENT_RATE (a machine replaying its outbox after a ' +
      'reconnect). A connection with more than this many events refused within one second is closed.',
  },
  countInterval: {
    env: 'COUNT_INTERVAL',
    type: { kind: 'duration', min: 0, max: 60_000 },
    default: 100,
    doc: 'Count updates for one topic are coalesced to at most one per this interval per watcher. 0: each change is sent as soon as it is read (changes that come while a count is being read still go as one update); watchers of a busy topic then get an update per join or leave.',
  },
  pingInterval: {
    env: 'PING_INTERVAL',
    type: { kind: 'duration', min: 1000, max: 600_000 },
    default: 25_000,
    doc: 'Socket.IO heartbeat interval.',
  },
  pingTimeout: {
    env: 'PING_TIMEOUT',
    type: { kind: 'duration', min: 1000, max: 600_000 },
    default: 20_000,
    doc: 'Socket.IO heartbeat timeout.',
  },
  maxSocketBuffer: {
    env: 'MAX_SOCKET_BUFFER',
    type: { kind: 'int', min: 1024, max: 1 << 30 },
    default: 4 * 1024 * 1024,
    doc: 'Bytes queued for one slow client before it is disconnected (it reconnects and re-subscribes).',
  },
  connectGcEvery: {
    env: 'CONNECT_GC_EVERY',
    type: { kind: 'int', min: 0, max: 1_000_000 },
    default: 256,
    doc: 'A young-generation collection after every this many accepted connections, so that a connect ramp makes many short GC pauses instead of a few of 20-55 ms; 0 turns it off.',
  },
  maxClientMessageBytes: {
    env: 'MAX_CLIENT_MESSAGE_BYTES',
    type: { kind: 'int', min: 1024, max: 64 * 1024 * 1024 },
    default: 64 * 1024,
    doc: 'Largest message a client may send over the socket.',
  },

  // HTTP API
  bodyLimit: {
    env: 'BODY_LIMIT',
    type: { kind: 'int', min: 1024, max: 64 * 1024 * 1024 },
    default: 64 * 1024,
    doc: 'Largest body accepted by POST /notify (413 above).',
  },
  batchBodyLimit: {
    env: 'BATCH_BODY_LIMIT',
    type: { kind: 'int', min: 1024, max: 256 * 1024 * 1024 },
    default: 8 * 1024 * 1024,
    doc: 'Largest body accepted by POST /notify/batch.',
  },
  maxBatch: {
    env: 'MAX_BATCH',
    type: { kind: 'int', min: 1, max: 100_000 },
    default: 1000,
    doc: 'Notifications in one POST /notify/batch.',
  },
  maxTargets: {
    env: 'MAX_TARGETS',
    type: { kind: 'int', min: 1, max: 1_000_000 },
    default: 1000,
    doc: 'Entries in each of users, devices and eventTopics of one notification.',
  },
  maxPayloadBytes: {
    env: 'MAX_PAYLOAD_BYTES',
    type: { kind: 'int', min: 16, max: 64 * 1024 * 1024 },
    default: 64 * 1024,
    doc: 'Largest `data` of one notification, as JSON.',
  },
  maxJsonDepth: {
    env: 'MAX_JSON_DEPTH',
    type: { kind: 'int', min: MIN_JSON_DEPTH, max: MAX_JSON_DEPTH_LIMIT },
    default: DEFAULT_MAX_JSON_DEPTH,
    doc:
      'Deepest nesting of objects and arrays accepted in client JSON: notification `data`, payment event `meta`, ' +
      'command args and replies, webhook payloads and admin bodies (400 `validation_failed` deeper). Nodes started in one process share the last one set.',
  },

  // webhooks
  webhookTimeout: {
    env: 'WEBHOOK_TIMEOUT',
    type: { kind: 'duration', min: 100, max: 120_000 },
    default: 5 * SECOND,
    doc: 'Time one webhook request to a merchant may take (headers and body); then it counts as failed.',
  },
  webhookRetryDelays: {
    env: 'WEBHOOK_RETRY_DELAYS',
    type: { kind: 'durations', min: 1, presets: RETRY_PRESETS },
    default: RETRY_PRESETS.default,
    doc:
      'Delays before each retry of a failed webhook (3 retries: 15s,1m,5m), or the preset `wechat` ' +
      '(15s,15s,30s,3m,10m,20m,30m,30m,30m,60m,3h,3h,3h,6h,6h). A longer Retry-After wins (up to 1h).',
  },
  webhookRetryJitter: {
    env: 'WEBHOOK_RETRY_JITTER',
    type: { kind: 'number', min: 0, max: 1 },
    default: 0.1,
    doc:
      'Each retry delay is made longer by a random share of up to this fraction of it (0.1: up to 10% longer, ' +
      'never shorter), so webhooks that failed at the same moment (a merchant that was down) do not all come due ' +
      'at the same moment when it recovers. 0 keeps the exact delays; a longer Retry-After still wins.',
  },
  webhookConcurrency: {
    env: 'WEBHOOK_CONCURRENCY',
    type: { kind: 'int', min: 1, max: 10_000 },
    default: 100,
    doc: 'Webhook requests in flight at once on this node, plus as many again for slow merchants (slow lane).',
  },
  webhookMerchantConcurrency: {
    env: 'WEBHOOK_MERCHANT_CONCURRENCY',
    type: { kind: 'int', min: 1, max: 10_000 },
    default: 10,
    doc:
      'Webhook requests in flight at once to one merchant, across the cluster (one node sends to a merchant at a ' +
      'time; at most WEBHOOK_PREFETCH times this many are claimed).',
  },
  webhookSlowConcurrency: {
    env: 'WEBHOOK_SLOW_CONCURRENCY',
    type: { kind: 'int', min: 1, max: 10_000 },
    default: 2,
    doc: 'Webhook requests in flight at once to one merchant marked slow, across the cluster.',
  },
  webhookSlowThreshold: {
    env: 'WEBHOOK_SLOW_THRESHOLD',
    type: { kind: 'duration', min: 1, max: 600_000 },
    default: 3 * SECOND,
    doc: 'A merchant whose average response time over its last 100 requests is above this is marked slow.',
  },
  webhookSlowLaneAfter: {
    env: 'WEBHOOK_SLOW_LANE_AFTER',
    type: { kind: 'duration', min: 1, max: 600_000 },
    default: 500,
    doc:
      'A request still running after this long (or after WEBHOOK_SLOW_THRESHOLD, if shorter) leaves its normal ' +
      'slot for the slow lane, so merchants not yet known to be slow hold up the others this long at most.',
  },
  webhookBreakerThreshold: {
    env: 'WEBHOOK_BREAKER_THRESHOLD',
    type: { kind: 'int', min: 1, max: 1000 },
    default: 5,
    doc: "Consecutive failed requests that open a merchant's circuit breaker.",
  },
  webhookBreakerOpen: {
    env: 'WEBHOOK_BREAKER_OPEN',
    type: { kind: 'duration', min: 1, max: 86_400_000 },
    default: 5 * MINUTE,
    doc: 'How long an open breaker holds back a merchant before one trial request decides.',
  },
  webhookBreakerDelay: {
    env: 'WEBHOOK_BREAKER_DELAY',
    type: { kind: 'duration', min: 1, max: 86_400_000 },
    default: MINUTE,
    doc: 'Due webhooks of a merchant whose breaker is open wait this long (delay queue), without being sent.',
  },
  webhookMaxAge: {
    env: 'WEBHOOK_MAX_AGE',
    type: { kind: 'duration', min: 0, max: 365 * 86_400_000 },
    default: 48 * HOUR,
    doc:
      'A webhook not delivered within this time of its creation (or of an admin retry) ends `failed` ("max age ' +
      'reached"), also while its merchant\'s breaker stays open; 0 turns it off. Longer than the sum of ' +
      'WEBHOOK_RETRY_DELAYS (the `wechat` schedule spans 24 h 4 min), or the last retries are never made.',
  },
  webhookRequireSuccessBody: {
    env: 'WEBHOOK_REQUIRE_SUCCESS_BODY',
    type: { kind: 'bool' },
    default: false,
    doc: 'A webhook succeeds only when the 2xx body is `success` (any case, spaces ignored); per merchant too.',
  },
  webhookAllowPrivateNetworks: {
    env: 'WEBHOOK_ALLOW_PRIVATE_NETWORKS',
    type: { kind: 'bool' },
    default: false,
    doc: 'Allow notify URLs on loopback, private, link-local and unique-local addresses (SSRF guard off).',
  },
  webhookDefaultSecret: {
    env: 'WEBHOOK_DEFAULT_SECRET',
    type: { kind: 'string', pattern: /^whsec_[A-Za-z0-9+/]{32,88}={0,2}$/ },
    secret: true,
    default: undefined,
    doc: 'Signing secret (`whsec_` + base64 of 24-64 bytes) of merchants without their own. Unset: generated once and kept in the store.',
  },
  webhookLease: {
    env: 'WEBHOOK_LEASE',
    type: { kind: 'duration', min: 1000, max: 3_600_000 },
    default: MINUTE,
    doc: 'A claimed webhook whose node dies becomes due again after this long (must exceed WEBHOOK_TIMEOUT).',
  },
  webhookPollInterval: {
    env: 'WEBHOOK_POLL_INTERVAL',
    type: { kind: 'duration', min: 5, max: 60_000 },
    default: 500,
    doc: 'How often the dispatcher looks for due webhooks when it was not woken by new work.',
  },
  webhookLogRetention: {
    env: 'WEBHOOK_LOG_RETENTION',
    type: { kind: 'duration', min: 60_000, max: 3650 * 86_400_000 },
    default: 30 * 24 * HOUR,
    doc: 'Attempt logs and finished webhooks older than this are deleted automatically.',
  },
  webhookIdempotencyRetention: {
    env: 'WEBHOOK_IDEMPOTENCY_RETENTION',
    type: { kind: 'duration', min: 60_000, max: 36_500 * 86_400_000 },
    default: 365 * 24 * HOUR,
    doc:
      'Finished webhooks past WEBHOOK_LOG_RETENTION lose their payload and attempt log but keep their idempotency ' +
      'key (a re-sent notification is still a duplicate) until this age; then the row is deleted.',
  },
  webhookSlowMinSamples: {
    env: 'WEBHOOK_SLOW_MIN_SAMPLES',
    type: { kind: 'int', min: 1, max: 100 },
    default: 5,
    doc: 'Responses a merchant needs in its window (the last 100) before it can be marked slow.',
  },
  webhookPrefetch: {
    env: 'WEBHOOK_PREFETCH',
    type: { kind: 'int', min: 1, max: 1000 },
    default: 50,
    doc:
      'A merchant may have this many times WEBHOOK_MERCHANT_CONCURRENCY webhooks claimed (buffered on the node that ' +
      'sends to it), so requests start from the buffer instead of waiting for a claim. Higher: fewer claims.',
  },
  webhookClaimBatch: {
    env: 'WEBHOOK_CLAIM_BATCH',
    type: { kind: 'int', min: 1, max: 10_000 },
    default: 500,
    doc: 'Due webhooks claimed by one statement at most.',
  },
  webhookFlushBatch: {
    env: 'WEBHOOK_FLUSH_BATCH',
    type: { kind: 'int', min: 1, max: 10_000 },
    default: 500,
    doc: 'Webhook results (status, attempt log, merchant state) written by one statement at most.',
  },
  webhookSlowStart: {
    env: 'WEBHOOK_SLOW_START',
    type: { kind: 'duration', min: 0, max: 300_000 },
    default: 3000,
    doc:
      'After the dispatcher starts, its concurrency limits (global and per merchant) grow from a tenth to the full ' +
      'value over this long, as load balancers slow-start a new instance: a node restarted with a backlog warms up ' +
      '(compiles its hot code) without stalling its event loop, and merchants are not hit at full rate at once. 0 turns it off.',
  },
  webhookDispatch: {
    env: 'WEBHOOK_DISPATCH',
    type: { kind: 'bool' },
    default: true,
    doc: 'Run the webhook dispatcher on this node (intake and admin API work either way).',
  },
  webhookIntakeToken: {
    env: 'WEBHOOK_INTAKE_TOKEN',
    type: TOKEN,
    secret: true,
    default: undefined,
    doc: 'Bearer token required by POST /merchant-notify when set (no whitespace or control characters).',
  },
  webhookAlertWindow: {
    env: 'WEBHOOK_ALERT_WINDOW',
    type: { kind: 'duration', min: 1000, max: 86_400_000 },
    default: 5 * MINUTE,
    doc: 'Sliding window of the success-rate, error-rate and response-time alerts.',
  },
  webhookAlertInterval: {
    env: 'WEBHOOK_ALERT_INTERVAL',
    type: { kind: 'duration', min: 50, max: 3_600_000 },
    default: 30 * SECOND,
    doc: 'How often the queue-length and sliding-window alert rules are checked.',
  },
  webhookAlertCooldown: {
    env: 'WEBHOOK_ALERT_COOLDOWN',
    type: { kind: 'duration', min: 0, max: 7 * 86_400_000 },
    default: HOUR,
    doc: 'The same alert (slow merchant, queue length, rates) is not repeated within this period, cluster-wide.',
  },
  webhookAlertQueueLength: {
    env: 'WEBHOOK_ALERT_QUEUE_LENGTH',
    type: { kind: 'int', min: 1, max: 1_000_000_000 },
    default: 1000,
    doc: 'Alert when more webhooks than this wait to be delivered.',
  },
  webhookAlertSuccessRate: {
    env: 'WEBHOOK_ALERT_SUCCESS_RATE',
    type: { kind: 'int', min: 0, max: 100 },
    default: 95,
    doc: 'Alert when fewer than this percentage of attempts in the window succeed.',
  },
  webhookAlertErrorRate: {
    env: 'WEBHOOK_ALERT_ERROR_RATE',
    type: { kind: 'int', min: 0, max: 100 },
    default: 5,
    doc: 'Alert when more than this percentage of webhooks finished in the window ended `failed`.',
  },
  webhookAlertResponseTime: {
    env: 'WEBHOOK_ALERT_RESPONSE_TIME',
    type: { kind: 'duration', min: 1, max: 600_000 },
    default: 10 * SECOND,
    doc: 'Alert when the average merchant response time in the window is above this.',
  },
  webhookAlertMinSamples: {
    env: 'WEBHOOK_ALERT_MIN_SAMPLES',
    type: { kind: 'int', min: 1, max: 1_000_000 },
    default: 20,
    doc: 'Attempts the window must hold before the rate and response-time alerts are evaluated.',
  },
  telegramBotToken: {
    env: 'TELEGRAM_BOT_TOKEN',
    type: { kind: 'string' },
    secret: true,
    default: undefined,
    doc: 'Telegram bot token for alerts (with TELEGRAM_CHAT_IDS).',
  },
  telegramChatIds: {
    env: 'TELEGRAM_CHAT_IDS',
    type: { kind: 'list' },
    default: [],
    doc: 'Telegram chat ids that receive alerts, comma separated.',
  },
  telegramMinInterval: {
    env: 'TELEGRAM_MIN_INTERVAL',
    type: { kind: 'duration', min: 0, max: 600_000 },
    default: SECOND,
    doc:
      'Least time between two alert messages to one Telegram chat (Telegram allows about one a second); alerts ' +
      'that come faster wait and are sent together in one message. A 429 `retry_after` from the API is honoured.',
  },
  telegramApiBase: {
    env: 'TELEGRAM_API_BASE',
    type: { kind: 'url', protocols: ['http:', 'https:'] },
    default: 'https://api.telegram.org',
    doc: 'Base URL of the Telegram Bot API.',
  },
  alertWebhookUrl: {
    env: 'ALERT_WEBHOOK_URL',
    type: { kind: 'url', protocols: ['http:', 'https:'] },
    default: undefined,
    doc: 'URL that receives every alert as a JSON POST.',
  },

  // payments
  paymentTimeout: {
    env: 'PAYMENT_TIMEOUT',
    type: { kind: 'duration', min: 1000, max: 30 * 86_400_000 },
    default: 15 * 60_000,
    doc: 'Orders still `created` or `paying` this long after their first event move to `closed` (reason `timeout`).',
  },
  paymentSweepInterval: {
    env: 'PAYMENT_SWEEP_INTERVAL',
    type: { kind: 'duration', min: 50, max: 600_000 },
    default: 5000,
    doc: 'How often each node looks for timed-out orders, undelivered merchant and app notifications (outbox) and dead machines, and folds the stats counters.',
  },
  paymentRetention: {
    env: 'PAYMENT_RETENTION',
    type: { kind: 'duration', min: 60_000, max: 36_500 * 86_400_000 },
    default: 90 * 24 * HOUR,
    doc:
      'Finished orders (no longer `created` or `paying`) not changed for this long are deleted with their events, ' +
      'and machines offline this long are forgotten; the stats counters keep counting the orders. A very long value (e.g. 36500d) keeps them.',
  },
  paymentBatchMax: {
    env: 'PAYMENT_BATCH_MAX',
    type: { kind: 'int', min: 1, max: 10_000 },
    default: 256,
    doc: 'Payment events stored in one transaction when many arrive at once (group commit).',
  },
  paymentQueueMax: {
    env: 'PAYMENT_QUEUE_MAX',
    type: { kind: 'int', min: 1, max: 10_000_000 },
    default: 50_000,
    doc: 'Payment events a node lets wait for the store (a slow or stalled store); past it new events are refused with 503 `overloaded` (machines retry them), so memory stays bounded.',
  },
  paymentOrderCache: {
    env: 'PAYMENT_ORDER_CACHE',
    type: { kind: 'int', min: 0, max: 10_000_000 },
    default: 100_000,
    doc: 'Open orders (`created`, `paying`) each node keeps in memory after storing them, so that their next event is stored without reading the order first (checked by the write, never trusted blindly); 0 reads every order.',
  },
  paymentCurrency: {
    env: 'PAYMENT_CURRENCY',
    type: {
      kind: 'string',
      // The codes Node.js's ICU knows: a common slip such as RMB (not an ISO 4217 code) would otherwise
      // be the currency of every event that gives none, with the wrong decimals and spoken name.
      pattern: new RegExp(`^(?:${Intl.supportedValuesOf('currency').join('|')})$`),
      means: 'an ISO 4217 currency code (CNY, HKD, USD, JPY, ...; RMB is not one)',
    },
    default: 'CNY',
    doc: 'ISO 4217 currency of payment events that give an amount without a currency.',
  },
  commandTimeout: {
    env: 'COMMAND_TIMEOUT',
    type: { kind: 'duration', min: 100, max: 120_000 },
    default: 10_000,
    doc: 'How long POST /devices/:deviceId/commands waits for the answer when the call gives no timeoutMs.',
  },
  machinePresenceInterval: {
    env: 'MACHINE_PRESENCE_INTERVAL',
    type: { kind: 'duration', min: 100, max: 3_600_000 },
    default: 30_000,
    doc: 'How often a node confirms its connected machines in the store; one unconfirmed for 3 intervals is offline.',
  },
} as const satisfies Record<string, OptionSpec>;

export type OptionKey = keyof typeof OPTIONS;
