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
  /**
   * Users of a notification whose forward was stored (`forwarded`), could not be stored (`failed`: the
   * webhook engine refused it or its store is down), or were not looked at because presence could not
   * be read (`unknown`: Redis away in a cluster).
   */
  onResult?: (result: 'forwarded' | 'failed' | 'unknown', users: number) => void;
}): (n: Notification) => void {
  return (n) => {
    const users = n.users;
    if (!users || users.length === 0) return;
    deps.presence.online(n.appId, users).then(
      async (online) => {
        let forwarded = 0;
        let failed = 0;
        let firstError: unknown;
        // Each offline user on its own: one failed enqueue does not cost the others their forward.
        for (const userId of users) {
          if (online.has(userId)) continue;
          try {
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
          } catch (err) {
            failed++;
            firstError ??= err;
          }
        }
        if (forwarded) deps.onResult?.('forwarded', forwarded);
        if (failed) {
          deps.onResult?.('failed', failed);
          deps.logger.warn(
            { err: (firstError as Error).message, id: n.id, appId: n.appId, failed, forwarded },
            'offline fallback: forwards not stored',
          );
        }
      },
      (err: unknown) => {
        deps.onResult?.('unknown', users.length);
        deps.logger.warn(
          { err: (err as Error).message, id: n.id, appId: n.appId, users: users.length },
          'offline fallback: presence unavailable, nothing forwarded',
        );
      },
    );
  };
}
