/**
 * Herald machine agent: the SDK for payment terminals, kiosks and other machines that report
 * payment events and take commands, over socket.io-client (browsers and Node).
 *
 * ```ts
 * import { createMachineAgent } from 'herald/sdk/machine';
 * const agent = createMachineAgent({ url: 'http://pay.example:3000', appId: 'pos', deviceId: 'pos-0042', merchantId: 'm-7' });
 * agent.onCommand(async ({ command, args }) => (command === 'ping' ? { pong: args } : { ok: false }));
 * const ack = await agent.report({ orderId: 'o-1', type: 'succeeded', amount: 4 }); // { ok: true, state: 'succeeded' }
 * ```
 *
 * Reports go through a bounded outbox: `report()` resolves with the server's ack, which Herald sends
 * only after the event is stored. A report not acknowledged when the connection drops is sent again
 * after the agent reconnects (the server ignores an eventId it has already stored and answers
 * `duplicate: true`), so a report is never lost while the process lives. The agent reconnects by
 * itself with exponential back-off and jitter, and sends a heartbeat that detects dead connections
 * sooner than TCP does.
 */
import { io, type ManagerOptions, type Socket, type SocketOptions } from 'socket.io-client';
import { jsonProblem } from '../input.js';

/** The states an order can report (see the README, "Payment tracking"). */
export type PaymentEventType = 'created' | 'paying' | 'succeeded' | 'failed' | 'closed' | 'refunded';

/** What a machine reports; the agent adds appId, deviceId and merchantId. */
export interface MachinePaymentEvent {
  /** Unique per event; the agent makes one (a UUID) when absent. Keep it when you report again. */
  eventId?: string;
  orderId: string;
  type: PaymentEventType;
  /** In major units: 4.00 CNY is 4. */
  amount?: number;
  /** ISO 4217; default the server's PAYMENT_CURRENCY. */
  currency?: string;
  /** When it happened (ISO 8601 or ms since the epoch); default: when report() was called. */
  occurredAt?: string | number;
  /** Merchant server to notify of every state change of this order. */
  notifyUrl?: string;
  /** Stored with the event; `meta.reason` explains a failed or closed order. */
  meta?: Record<string, unknown>;
}

/** The server's answer to a stored report. */
export interface ReportAck {
  ok: true;
  eventId: string;
  orderId: string;
  /** The order's state after the event. */
  state: PaymentEventType;
  /** The server had this eventId already. */
  duplicate?: true;
  /** The order is already in or past the reported state: recorded, no effect. */
  stale?: true;
}

/** A command sent by `POST /devices/:deviceId/commands`. */
export interface MachineCommand {
  id: string;
  command: string;
  args: unknown;
}

/** Returns the reply the HTTP caller receives (anything JSON). */
export type CommandHandler = (command: MachineCommand) => unknown | Promise<unknown>;

export interface MachineAgentOptions {
  /** Server base URL, e.g. `http://localhost:3000`. */
  url: string;
  /** Application id (namespace). */
  appId: string;
  /** This machine. */
  deviceId: string;
  /** The merchant the machine belongs to: its app receives the machine's payment notifications. */
  merchantId: string;
  /** Optional user id of the machine's connection. */
  clientId?: string;
  /** JWT for apps mode; a function is called again before every (re)connect (token refresh). */
  token?: string | (() => string | Promise<string>);
  /** Heartbeat period; a heartbeat unanswered within it closes the connection and reconnects. 0: off. @default 25000 */
  heartbeatMs?: number;
  /** Reconnect back-off: delay = min(maxDelayMs, initialDelayMs * factor^attempt), minus up to `jitter` of it at random. @default { initialDelayMs: 500, maxDelayMs: 30000, factor: 2, jitter: 0.5 } */
  backoff?: { initialDelayMs?: number; maxDelayMs?: number; factor?: number; jitter?: number };
  /** Reports held until acknowledged; report() rejects with OutboxFullError beyond. @default 1000 */
  outboxLimit?: number;
  /** How long to wait for a report's ack before sending it again. @default 10000 */
  ackTimeoutMs?: number;
  /** Passed to socket.io-client (e.g. `transports`). @default { transports: ['websocket'] } */
  socketOptions?: Partial<ManagerOptions & SocketOptions>;
}

/** The server refused a report for good (`invalid_event`) or for now (`invalid_transition`, see `retryable`). */
export class ReportRejectedError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'ReportRejectedError';
  }

  /** For `invalid_transition`: whether reporting the same event later can succeed. */
  get retryable(): boolean {
    const d = this.details as { retryable?: unknown } | undefined;
    return this.code === 'invalid_transition' && d?.retryable === true;
  }
}

/** The outbox holds `outboxLimit` unacknowledged reports already; retry when some are acknowledged. */
export class OutboxFullError extends Error {
  readonly code = 'outbox_full';
  constructor(limit: number) {
    super(
      `The machine agent's outbox holds ${limit} unacknowledged reports (outboxLimit); ` +
        'the server is unreachable or slow. Retry later or raise outboxLimit.',
    );
    this.name = 'OutboxFullError';
  }
}

/** report() was pending when close() was called. */
export class AgentClosedError extends Error {
  readonly code = 'agent_closed';
  constructor() {
    super('The machine agent was closed before the server acknowledged this report.');
    this.name = 'AgentClosedError';
  }
}

export interface MachineAgentEvents {
  connect: () => void;
  disconnect: (reason: string) => void;
  /** Connection errors (e.g. `invalid_token`) and heartbeat misses; the agent keeps reconnecting. */
  error: (err: Error & { code?: string }) => void;
}

export interface MachineAgent {
  readonly connected: boolean;
  /** Reports waiting for their ack. */
  readonly pending: number;
  /** Sends a payment event; resolves with the ack once the server has stored it. */
  report(event: MachinePaymentEvent): Promise<ReportAck>;
  /** Sets the command handler (one at a time); returns a function that removes it. */
  onCommand(handler: CommandHandler): () => void;
  on<E extends keyof MachineAgentEvents>(event: E, fn: MachineAgentEvents[E]): () => void;
  /** Disconnects for good; pending reports reject with AgentClosedError. */
  close(): Promise<void>;
}

interface Entry {
  event: Record<string, unknown>;
  resolve: (ack: ReportAck) => void;
  reject: (err: Error) => void;
  /** Connection generation it was last sent on (0: not sent). */
  sentOn: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  /** Transient error answers so far: the next retry waits longer. */
  retries: number;
}

type ReportAnswer =
  | ReportAck
  | { ok: false; error?: { code?: unknown; message?: unknown; details?: unknown } };

/**
 * Why a value cannot travel as JSON over Socket.IO (a BigInt, a cycle, nesting deeper than 128 levels,
 * a non-finite number), or undefined. socket.io-client throws on such a value only after it has
 * registered the ack, so it is refused before it is sent.
 */
function encodeProblem(value: unknown): string | undefined {
  const p = jsonProblem(value, false);
  if (p) return `${p.path || 'the value'} ${p.message}`;
  try {
    JSON.stringify(value);
  } catch (err) {
    return (err as Error).message;
  }
  return undefined;
}

/** Server error codes after which the same report may succeed later: keep it and send it again. */
const TRANSIENT = new Set([
  'shutting_down',
  'store_unavailable',
  'not_ready',
  'internal_error',
  'rate_limited',
  'overloaded',
]);

function uuid(): string {
  const c = globalThis.crypto as Crypto | undefined;
  if (c?.randomUUID) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`;
}

/** Creates and connects a machine agent. */
export function createMachineAgent(options: MachineAgentOptions): MachineAgent {
  const heartbeatMs = options.heartbeatMs ?? 25_000;
  const ackTimeoutMs = options.ackTimeoutMs ?? 10_000;
  const outboxLimit = options.outboxLimit ?? 1000;
  const initialDelay = options.backoff?.initialDelayMs ?? 500;
  const maxDelay = options.backoff?.maxDelayMs ?? 30_000;
  const factor = options.backoff?.factor ?? 2;
  const jitter = Math.min(1, Math.max(0, options.backoff?.jitter ?? 0.5));
  if (!Number.isInteger(outboxLimit) || outboxLimit < 1)
    throw new Error('outboxLimit must be an integer >= 1');

  const outbox: Entry[] = [];
  const listeners: { [E in keyof MachineAgentEvents]: Set<MachineAgentEvents[E]> } = {
    connect: new Set(),
    disconnect: new Set(),
    error: new Set(),
  };
  let commandHandler: CommandHandler | undefined;
  let generation = 0;
  let attempt = 0;
  let closed = false;
  let reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  let heartbeatTimer: ReturnType<typeof setInterval> | undefined;

  const emit = <E extends keyof MachineAgentEvents>(event: E, ...args: Parameters<MachineAgentEvents[E]>) => {
    for (const fn of listeners[event]) (fn as (...a: unknown[]) => void)(...args);
  };

  const auth = async (): Promise<Record<string, string>> => {
    const a: Record<string, string> = { deviceId: options.deviceId, merchantId: options.merchantId };
    if (options.clientId) a.clientId = options.clientId;
    const token = typeof options.token === 'function' ? await options.token() : options.token;
    if (token) a.token = token;
    return a;
  };

  const socket: Socket = io(`${options.url.replace(/\/+$/, '')}/${options.appId}`, {
    transports: ['websocket'],
    ...options.socketOptions,
    // The agent reconnects itself, also after a server-side disconnect (which Socket.IO does not retry).
    reconnection: false,
    autoConnect: false,
    forceNew: true,
    auth: (cb: (data: object) => void) => {
      auth().then(cb, (err: unknown) => {
        emit('error', err as Error);
        cb({ deviceId: options.deviceId, merchantId: options.merchantId });
      });
    },
  });

  const scheduleReconnect = () => {
    if (closed || reconnectTimer) return;
    const base = Math.min(maxDelay, initialDelay * factor ** attempt);
    const delay = base * (1 - jitter * Math.random());
    attempt++;
    reconnectTimer = setTimeout(() => {
      reconnectTimer = undefined;
      if (!closed && !socket.connected) socket.connect();
    }, delay);
  };

  const settle = (entry: Entry) => {
    const i = outbox.indexOf(entry);
    if (i >= 0) outbox.splice(i, 1);
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = undefined;
  };

  const send = (entry: Entry) => {
    if (!socket.connected || closed) return;
    const gen = generation;
    entry.sentOn = gen;
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = undefined;
    try {
      socket
        .timeout(ackTimeoutMs)
        .emit('payment:report', entry.event, (err: Error | null, ack?: ReportAnswer) => {
          if (!outbox.includes(entry)) return; // answered already (a resend's ack)
          if (err) {
            // No ack in time: send again on this connection if it is still the same, else on reconnect.
            if (gen === generation && socket.connected) send(entry);
            return;
          }
          if (typeof ack === 'object' && ack !== null && ack.ok === true) {
            settle(entry);
            entry.resolve(ack);
            return;
          }
          // A malformed answer (not an object, no error) counts as a transient server error.
          const error =
            typeof ack === 'object' && ack !== null && typeof ack.error === 'object' ? ack.error : null;
          const code = typeof error?.code === 'string' ? error.code : 'internal_error';
          if (TRANSIENT.has(code)) {
            // The server cannot store it now (e.g. it is shutting down): try again later, backing off,
            // and not before the server's retryAfterMs (rate_limited) when it says one.
            const base = Math.min(maxDelay, initialDelay * factor ** entry.retries);
            entry.retries++;
            const after = (error?.details as { retryAfterMs?: unknown } | undefined)?.retryAfterMs;
            const wait = typeof after === 'number' && Number.isFinite(after) ? Math.min(maxDelay, after) : 0;
            entry.timer = setTimeout(
              () => {
                entry.timer = undefined;
                if (gen === generation) send(entry);
              },
              Math.max(wait, base * (1 - jitter * Math.random())),
            );
            return;
          }
          settle(entry);
          const message =
            typeof error?.message === 'string' ? error.message : `The server refused the report (${code}).`;
          entry.reject(new ReportRejectedError(code, message, error?.details));
        });
    } catch (err) {
      // The event cannot be encoded (report() checks, so this is a last resort): settle it here rather
      // than let the ack timeout resend it and throw from a timer.
      settle(entry);
      entry.reject(
        new ReportRejectedError('invalid_event', `The event cannot be sent: ${(err as Error).message}`),
      );
    }
  };

  socket.on('connect', () => {
    generation++;
    attempt = 0;
    emit('connect');
    // Unacknowledged reports, in the order they were made.
    for (const entry of [...outbox]) send(entry);
  });
  socket.on('disconnect', (reason: string) => {
    emit('disconnect', reason);
    scheduleReconnect();
  });
  socket.on('connect_error', (err: Error & { data?: { code?: string; message?: string } }) => {
    const e = new Error(err.data?.message ?? err.message) as Error & { code?: string };
    if (err.data?.code) e.code = err.data.code;
    emit('error', e);
    scheduleReconnect();
  });
  socket.on('command', async (cmd: MachineCommand, ack?: (reply: unknown) => void) => {
    if (typeof ack !== 'function') return;
    if (!commandHandler) {
      ack({ ok: false, error: { code: 'unknown_command', message: 'This machine has no command handler.' } });
      return;
    }
    try {
      const reply = await commandHandler(cmd);
      const problem = encodeProblem(reply);
      if (problem !== undefined) {
        // socket.io-client marks the ack sent before it encodes: an unencodable reply would leave the
        // HTTP caller waiting for the command timeout.
        ack({
          ok: false,
          error: {
            code: 'invalid_reply',
            message: `The command handler's reply cannot be sent as JSON: ${problem}`,
          },
        });
        return;
      }
      ack(reply === undefined ? null : reply);
    } catch (err) {
      ack({ ok: false, error: { code: 'command_failed', message: (err as Error).message } });
    }
  });

  if (heartbeatMs > 0) {
    heartbeatTimer = setInterval(() => {
      if (!socket.connected) return;
      const gen = generation;
      socket.timeout(heartbeatMs).emit('machine:heartbeat', { ts: Date.now() }, (err: Error | null) => {
        if (!err || gen !== generation || !socket.connected || closed) return;
        const e = new Error(`No heartbeat answer within ${heartbeatMs} ms; reconnecting.`) as Error & {
          code?: string;
        };
        e.code = 'heartbeat_timeout';
        emit('error', e);
        socket.disconnect();
        scheduleReconnect();
      });
    }, heartbeatMs);
    (heartbeatTimer as { unref?: () => void }).unref?.();
  }

  socket.connect();

  return {
    get connected() {
      return socket.connected;
    },
    get pending() {
      return outbox.length;
    },
    report(event: MachinePaymentEvent): Promise<ReportAck> {
      if (closed) return Promise.reject(new AgentClosedError());
      if (outbox.length >= outboxLimit) return Promise.reject(new OutboxFullError(outboxLimit));
      const full: Record<string, unknown> = {
        ...event,
        eventId: event.eventId ?? uuid(),
        occurredAt: event.occurredAt ?? Date.now(),
        appId: options.appId,
        deviceId: options.deviceId,
        merchantId: options.merchantId,
      };
      const problem = encodeProblem(full);
      if (problem !== undefined) {
        return Promise.reject(
          new ReportRejectedError('invalid_event', `The event cannot be sent as JSON: ${problem}`),
        );
      }
      return new Promise<ReportAck>((resolve, reject) => {
        const entry: Entry = { event: full, resolve, reject, sentOn: 0, timer: undefined, retries: 0 };
        outbox.push(entry);
        send(entry);
      });
    },
    onCommand(handler: CommandHandler): () => void {
      commandHandler = handler;
      return () => {
        if (commandHandler === handler) commandHandler = undefined;
      };
    },
    on<E extends keyof MachineAgentEvents>(event: E, fn: MachineAgentEvents[E]): () => void {
      (listeners[event] as Set<MachineAgentEvents[E]>).add(fn);
      return () => (listeners[event] as Set<MachineAgentEvents[E]>).delete(fn);
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      if (reconnectTimer) clearTimeout(reconnectTimer);
      if (heartbeatTimer) clearInterval(heartbeatTimer);
      socket.disconnect();
      for (const entry of outbox.splice(0)) {
        if (entry.timer) clearTimeout(entry.timer);
        entry.reject(new AgentClosedError());
      }
    },
  };
}
