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

/**
 * Telegram Bot API `sendMessage` to every configured chat. Normal alerts are sent silently
 * (`disable_notification`), critical ones ring.
 */
export class TelegramSink implements AlertSink {
  readonly name = 'telegram';
  constructor(
    private readonly agent: Agent,
    private readonly apiBase: string,
    private readonly token: string,
    private readonly chatIds: readonly string[],
  ) {}

  async send(alert: Alert): Promise<void> {
    const url = `${this.apiBase.replace(/\/+$/, '')}/bot${this.token}/sendMessage`;
    const errors: string[] = [];
    await Promise.all(
      this.chatIds.map(async (chatId) => {
        try {
          await postJson(this.agent, url, {
            chat_id: chatId,
            text: alert.text,
            disable_notification: alert.level !== 'critical',
            disable_web_page_preview: true,
          });
        } catch (err) {
          errors.push(`chat ${chatId}: ${(err as Error).message}`);
        }
      }),
    );
    if (errors.length > 0) throw new Error(errors.join('; '));
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
        new TelegramSink(this.agent, opts.telegramApiBase, opts.telegramBotToken, opts.telegramChatIds),
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
    await this.agent.destroy().catch(() => undefined);
  }
}
