import { Agent } from 'undici';
import type { Logger } from '../logger.js';

export type AlertType =
  | 'circuit_breaker'
  | 'slow_merchant'
  | 'queue_length'
  | 'success_rate'
  | 'error_rate'
  | 'response_time';

/** `critical` for a breaker that opened (the seed's 关键告警), `normal` for everything else. */
export type AlertLevel = 'critical' | 'normal';

export interface Alert {
  type: AlertType;
  level: AlertLevel;
  /** The message as the seed writes it (Chinese, with emoji), ready for a chat. */
  text: string;
  /** The same facts as fields, for machines. */
  data: Record<string, unknown>;
  at: Date;
}

export interface AlertSink {
  readonly name: string;
  send(alert: Alert): Promise<void>;
  /** Stops background work (queued alerts fail). */
  close?(): void;
}

/** `2025-01-10 15:30:45` in the server's time zone, as in the seed's messages. */
export function formatTime(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** `5分钟`, `30秒`, `1小时`, `1.5秒`: durations as the seed's messages write them. */
export function formatDurationZh(ms: number): string {
  if (ms >= 3_600_000 && ms % 3_600_000 === 0) return `${ms / 3_600_000}小时`;
  if (ms >= 60_000 && ms % 60_000 === 0) return `${ms / 60_000}分钟`;
  if (ms >= 1000) return `${Number((ms / 1000).toFixed(3))}秒`;
  return `${ms}毫秒`;
}

export function circuitBreakerAlert(m: {
  merchantKey: string;
  notifyUrl: string;
  failures: number;
  openMs: number;
  at?: Date;
}): Alert {
  const at = m.at ?? new Date();
  const span = formatDurationZh(m.openMs);
  return {
    type: 'circuit_breaker',
    level: 'critical',
    at,
    data: {
      merchant_key: m.merchantKey,
      notify_url: m.notifyUrl,
      failure_count: m.failures,
      open_ms: m.openMs,
    },
    text: [
      '🚨 商户通知熔断器告警',
      '',
      `时间: ${formatTime(at)}`,
      `商户标识: ${m.merchantKey}`,
      `通知地址: ${m.notifyUrl}`,
      `失败次数: ${m.failures}`,
      `熔断时长: ${span}`,
      '状态: 熔断器已开启',
      '',
      `影响: 该商户的通知将被暂停${span}，避免影响其他商户的正常通知。`,
      '',
      '建议: 请检查商户服务器状态和网络连接。',
    ].join('\n'),
  };
}

export function slowMerchantAlert(m: {
  merchantKey: string;
  notifyUrl: string;
  avgMs: number;
  thresholdMs: number;
  at?: Date;
}): Alert {
  const at = m.at ?? new Date();
  return {
    type: 'slow_merchant',
    level: 'normal',
    at,
    data: {
      merchant_key: m.merchantKey,
      notify_url: m.notifyUrl,
      avg_response_time: Number((m.avgMs / 1000).toFixed(3)),
      threshold: m.thresholdMs / 1000,
    },
    text: [
      '⚠️ 慢商户告警',
      '',
      `时间: ${formatTime(at)}`,
      `商户标识: ${m.merchantKey}`,
      `通知地址: ${m.notifyUrl}`,
      `平均响应时间: ${(m.avgMs / 1000).toFixed(3)}秒`,
      `阈值: ${formatDurationZh(m.thresholdMs)}`,
      '状态: 响应过慢',
      '',
      '影响: 该商户响应时间超过阈值，可能影响通知效率。',
      '',
      '建议: 请检查商户服务器性能和网络状况。',
    ].join('\n'),
  };
}

/** The seed's system rules (告警设置): queue length, success rate, average response time, error rate. */
export function systemAlert(
  type: 'queue_length' | 'success_rate' | 'error_rate' | 'response_time',
  value: number,
  threshold: number,
  windowMs: number,
  at: Date = new Date(),
): Alert {
  const pct = (x: number) => `${(x * 100).toFixed(2)}%`;
  const lines: Record<typeof type, { title: string; value: string; limit: string; advice: string }> = {
    queue_length: {
      title: '📈 商户通知队列积压告警',
      value: `队列长度: ${value}`,
      limit: `阈值: ${threshold}`,
      advice: '建议: 请检查通知处理节点是否正常运行，或提高并发数。',
    },
    success_rate: {
      title: '📉 商户通知成功率告警',
      value: `成功率: ${pct(value)}`,
      limit: `阈值: ${pct(threshold)}`,
      advice: '建议: 请检查失败商户的状态和通知日志。',
    },
    error_rate: {
      title: '❌ 商户通知错误率告警',
      value: `错误率: ${pct(value)}`,
      limit: `阈值: ${pct(threshold)}`,
      advice: '建议: 请检查通知日志中的失败原因，必要时手动重试。',
    },
    response_time: {
      title: '🐢 商户通知响应时间告警',
      value: `平均响应时间: ${(value / 1000).toFixed(3)}秒`,
      limit: `阈值: ${formatDurationZh(threshold)}`,
      advice: '建议: 请检查商户服务器性能和网络状况。',
    },
  };
  const l = lines[type];
  return {
    type,
    level: 'normal',
    at,
    data: { value, threshold, window_ms: type === 'queue_length' ? undefined : windowMs },
    text: [
      l.title,
      '',
      `时间: ${formatTime(at)}`,
      l.value,
      l.limit,
      ...(type === 'queue_length' ? [] : [`统计窗口: ${formatDurationZh(windowMs)}`]),
      '',
      l.advice,
    ].join('\n'),
  };
}

const SINK_TIMEOUT = 10_000;

async function postJson(agent: Agent, url: string, body: unknown): Promise<void> {
  const u = new URL(url);
  const res = await agent.request({
    origin: u.origin,
    path: `${u.pathname}${u.search}`,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(SINK_TIMEOUT),
  });
  const text = await res.body.text();
  if (res.statusCode < 200 || res.statusCode >= 300) {
    throw new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
  }
}

/** Telegram refuses messages longer than this (characters). */
const TELEGRAM_MAX_TEXT = 4096;
/** Alerts waiting for one chat at most; beyond this the oldest are dropped (and logged as failed). */
const TELEGRAM_MAX_QUEUED = 200;
/** Tries of one message refused with 429 (each waits its `retry_after`); other failures are not retried. */
const TELEGRAM_TRIES = 4;

interface QueuedAlert {
  alert: Alert;
  resolve: () => void;
  reject: (err: Error) => void;
}

interface ChatQueue {
  chatId: string;
  items: QueuedAlert[];
  /** Earliest time of the next sendMessage to this chat (rate limit, or a 429's retry_after). */
  nextAt: number;
  sending: boolean;
  timer: NodeJS.Timeout | undefined;
  tries: number;
}

/** The seconds of a Bot API 429 answer (`parameters.retry_after`, or the Retry-After header). */
export function telegramRetryAfterMs(body: string, header: string | string[] | undefined): number | null {
  try {
    const j = JSON.parse(body) as { parameters?: { retry_after?: unknown } };
    const s = j.parameters?.retry_after;
    if (typeof s === 'number' && Number.isFinite(s) && s >= 0) return Math.min(s, 3600) * 1000;
  } catch {
    // not JSON
  }
  const h = Array.isArray(header) ? header[0] : header;
  if (h && /^\d+$/.test(h.trim())) return Math.min(Number(h), 3600) * 1000;
  return null;
}

/**
 * Telegram Bot API `sendMessage` to every configured chat. Normal alerts are sent silently
 * (`disable_notification`), critical ones ring. Telegram allows about one message a second per chat:
 * each chat has a queue sent at most once per `minInterval`; alerts that arrive meanwhile are joined
 * into one message (up to Telegram's 4096 characters), and a 429 answer's `retry_after` is waited out
 * before the same message is tried again (up to 4 tries). Nothing is dropped silently: an alert that
 * cannot be sent (other errors, tries exhausted, queue overflow, shutdown) fails its `send()`, which the
 * Alerter logs and counts.
 */
export class TelegramSink implements AlertSink {
  readonly name = 'telegram';
  private readonly chats: ChatQueue[];
  private closed = false;

  constructor(
    private readonly agent: Agent,
    private readonly apiBase: string,
    private readonly token: string,
    chatIds: readonly string[],
    private readonly minInterval = 1000,
  ) {
    this.chats = chatIds.map((chatId) => ({
      chatId,
      items: [],
      nextAt: 0,
      sending: false,
      timer: undefined,
      tries: 0,
    }));
  }

  send(alert: Alert): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the Telegram sink is closed'));
    const errors: string[] = [];
    return Promise.all(
      this.chats.map(
        (chat) =>
          new Promise<void>((resolve) => {
            const item: QueuedAlert = {
              alert,
              resolve,
              reject: (err) => {
                errors.push(`chat ${chat.chatId}: ${err.message}`);
                resolve();
              },
            };
            chat.items.push(item);
            while (chat.items.length > TELEGRAM_MAX_QUEUED) {
              (chat.items.shift() as QueuedAlert).reject(
                new Error(`dropped: more than ${TELEGRAM_MAX_QUEUED} alerts waiting for this chat`),
              );
            }
            this.schedule(chat);
          }),
      ),
    ).then(() => {
      if (errors.length > 0) throw new Error(errors.join('; '));
    });
  }

  /** Alerts waiting, over all chats (for tests and shutdown). */
  get queued(): number {
    return this.chats.reduce((n, c) => n + c.items.length, 0);
  }

  /** Fails every waiting alert and stops the timers. */
  close(): void {
    this.closed = true;
    for (const chat of this.chats) {
      if (chat.timer) clearTimeout(chat.timer);
      chat.timer = undefined;
      for (const item of chat.items.splice(0)) item.reject(new Error('not sent: shutting down'));
    }
  }

  private schedule(chat: ChatQueue): void {
    if (chat.sending || chat.timer || chat.items.length === 0 || this.closed) return;
    const wait = chat.nextAt - Date.now();
    if (wait > 0) {
      chat.timer = setTimeout(() => {
        chat.timer = undefined;
        this.schedule(chat);
      }, wait);
      chat.timer.unref();
      return;
    }
    void this.flush(chat);
  }

  /** The alerts of the next message: the oldest one and those after it that fit in one message. */
  private static batch(items: readonly QueuedAlert[]): { count: number; text: string; critical: boolean } {
    const first = items[0] as QueuedAlert;
    let text = first.alert.text.slice(0, TELEGRAM_MAX_TEXT);
    let count = 1;
    const sep = '\n\n— — —\n\n';
    while (count < items.length) {
      const next = (items[count] as QueuedAlert).alert.text;
      if (text.length + sep.length + next.length > TELEGRAM_MAX_TEXT) break;
      text += sep + next;
      count++;
    }
    const critical = items.slice(0, count).some((i) => i.alert.level === 'critical');
    return { count, text, critical };
  }

  private async flush(chat: ChatQueue): Promise<void> {
    chat.sending = true;
    const { count, text, critical } = TelegramSink.batch(chat.items);
    let retryIn = 0;
    try {
      const url = new URL(`${this.apiBase.replace(/\/+$/, '')}/bot${this.token}/sendMessage`);
      const res = await this.agent.request({
        origin: url.origin,
        path: `${url.pathname}${url.search}`,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          chat_id: chat.chatId,
          text,
          disable_notification: !critical,
          disable_web_page_preview: true,
        }),
        signal: AbortSignal.timeout(SINK_TIMEOUT),
      });
      const body = await res.body.text();
      if (res.statusCode >= 200 && res.statusCode < 300) {
        chat.tries = 0;
        chat.nextAt = Date.now() + this.minInterval;
        for (const item of chat.items.splice(0, count)) item.resolve();
        return;
      }
      const error = new Error(`HTTP ${res.statusCode}: ${body.slice(0, 200)}`);
      if (res.statusCode === 429) {
        retryIn = telegramRetryAfterMs(body, res.headers['retry-after']) ?? Math.max(this.minInterval, 1000);
      }
      this.failed(chat, count, error, retryIn);
    } catch (err) {
      this.failed(chat, count, err as Error, 0);
    } finally {
      chat.sending = false;
      this.schedule(chat);
    }
  }

  /**
   * A message failed: try it again after `retryIn` (a 429), or give up on its alerts (0: any other
   * failure, reported at once like the other sinks do).
   */
  private failed(chat: ChatQueue, count: number, error: Error, retryIn: number): void {
    chat.tries++;
    if (retryIn > 0 && chat.tries < TELEGRAM_TRIES) {
      chat.nextAt = Date.now() + retryIn;
      return;
    }
    chat.tries = 0;
    chat.nextAt = Date.now() + this.minInterval;
    for (const item of chat.items.splice(0, count)) item.reject(error);
  }
}

/** A JSON POST of `{ type, level, time, text, data }` to any URL (chat bridges, on-call tools). */
export class WebhookSink implements AlertSink {
  readonly name = 'webhook';
  constructor(
    private readonly agent: Agent,
    private readonly url: string,
  ) {}

  async send(alert: Alert): Promise<void> {
    await postJson(this.agent, this.url, {
      type: alert.type,
      level: alert.level,
      time: alert.at.toISOString(),
      text: alert.text,
      data: alert.data,
    });
  }
}

/**
 * Sends alerts to every sink in the background. A failing or slow sink is logged and counted and never
 * reaches the caller, so alerting can never disturb delivery.
 */
export class Alerter {
  private readonly agent = new Agent({
    connections: 4,
    headersTimeout: SINK_TIMEOUT,
    bodyTimeout: SINK_TIMEOUT,
  });
  readonly sinks: AlertSink[];
  private readonly pending = new Set<Promise<void>>();

  constructor(
    opts: {
      telegramBotToken: string | undefined;
      telegramChatIds: readonly string[];
      telegramApiBase: string;
      /** Least time between two messages to one chat (default 1 s). */
      telegramMinInterval?: number;
      alertWebhookUrl: string | undefined;
    },
    private readonly logger: Logger,
    private readonly onResult: (alert: Alert, sink: string, ok: boolean) => void = () => undefined,
    /** Keeps every alert in the history; a failure is logged and never reaches the caller. */
    private readonly record: (alert: Alert) => Promise<void> = async () => undefined,
  ) {
    this.sinks = [];
    if (opts.telegramBotToken && opts.telegramChatIds.length > 0) {
      this.sinks.push(
        new TelegramSink(
          this.agent,
          opts.telegramApiBase,
          opts.telegramBotToken,
          opts.telegramChatIds,
          opts.telegramMinInterval,
        ),
      );
    } else if (opts.telegramBotToken || opts.telegramChatIds.length > 0) {
      logger.warn(
        'Telegram alerts need both TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_IDS; Telegram alerts are off',
      );
    }
    if (opts.alertWebhookUrl) this.sinks.push(new WebhookSink(this.agent, opts.alertWebhookUrl));
  }

  /** Queues `alert` for every sink; returns at once. */
  emit(alert: Alert): void {
    this.logger.warn({ alert: alert.type, level: alert.level, data: alert.data }, 'webhook alert');
    const kept = this.record(alert).catch((err: unknown) =>
      this.logger.warn({ err, alert: alert.type }, 'alert history write failed'),
    );
    this.pending.add(kept);
    void kept.finally(() => this.pending.delete(kept));
    for (const sink of this.sinks) {
      const p = sink.send(alert).then(
        () => this.onResult(alert, sink.name, true),
        (err: unknown) => {
          this.onResult(alert, sink.name, false);
          this.logger.warn({ err, sink: sink.name, alert: alert.type }, 'alert sink failed');
        },
      );
      this.pending.add(p);
      void p.finally(() => this.pending.delete(p));
    }
  }

  /** Resolves when every alert sent so far has been handed over or has failed. */
  async settled(): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
  }

  async close(): Promise<void> {
    await Promise.race([this.settled(), new Promise((r) => setTimeout(r, 2000).unref())]);
    for (const sink of this.sinks) sink.close?.();
    await this.agent.destroy().catch(() => undefined);
  }
}
