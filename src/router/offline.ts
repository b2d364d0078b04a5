import type { Presence } from '../bus/types.js';
import type { Logger } from '../logger.js';
import type { MerchantNotifyInput } from '../webhooks/index.js';
import type { Notification } from './types.js';

/** The part of the webhook engine the offline fallback uses. */
export interface OfflineSink {
  enqueue(
    input: MerchantNotifyInput,
    options?: { wrapDepth?: number },
  ): Promise<{ id: string; duplicate: boolean }>;
}

/**
 * Offline fallback: a notification addressed to users, some of whom have no connected device anywhere,
 * is forwarded for each of them to OFFLINE_WEBHOOK_URL through the webhook engine (durable, retried,
 * signed), so the application can send its own mobile push. Payload:
 * `{ type: 'offline_notification', appId, userId, id, ts, data }`.
 */
export function offlineForwarder(deps: {
  url: string;
  presence: Presence;
  sink: OfflineSink;
  logger: Logger;
  onForwarded?: (n: number) => void;
}): (n: Notification) => void {
  return (n) => {
    const users = n.users;
    if (!users || users.length === 0) return;
    deps.presence
      .online(n.appId, users)
      .then(async (online) => {
        let forwarded = 0;
        for (const userId of users) {
          if (online.has(userId)) continue;
          await deps.sink.enqueue(
            {
              orderNo: n.id,
              notifyUrl: deps.url,
              merchantId: `offline:${n.appId}`,
              eventType: 'offline_notification',
              idempotencyKey: `offline:${n.id}:${userId}`,
              payload: {
                type: 'offline_notification',
                appId: n.appId,
                userId,
                id: n.id,
                ts: n.ts,
                data: JSON.parse(n.data),
              },
            },
            // `data` was accepted at MAX_JSON_DEPTH; the payload wraps it once more.
            { wrapDepth: 1 },
          );
          forwarded++;
        }
        if (forwarded) deps.onForwarded?.(forwarded);
      })
      .catch((err: unknown) => {
        deps.logger.warn(
          { err: (err as Error).message, id: n.id, appId: n.appId },
          'offline fallback failed',
        );
      });
  };
}
