import type { TopicChange } from '../router/index.js';
import type { Notification, TopicCount } from '../router/types.js';
import type { Bus, LocalDeliver, Presence } from './types.js';

/** The single-node bus: a notification goes straight to this node's router. */
export class MemoryBus implements Bus {
  readonly kind = 'memory' as const;

  constructor(private readonly deliver: LocalDeliver) {}

  async publish(n: Notification): Promise<number> {
    return this.deliver(n);
  }

  publishNow(n: Notification): number {
    return this.deliver(n);
  }

  healthy(): boolean {
    return true;
  }

  reachable(): boolean {
    return true;
  }

  async close(): Promise<void> {}
}

/** Single-node presence: the router's own tallies are the whole truth. */
export class MemoryPresence implements Presence {
  constructor(
    private readonly localCount: (appId: string, topic: string) => TopicCount,
    private readonly onChange: (appId: string, topic: string) => void,
    private readonly hasUser: (appId: string, clientId: string) => boolean,
  ) {}

  async online(appId: string, users: readonly string[]): Promise<Set<string>> {
    return new Set(users.filter((u) => this.hasUser(appId, u)));
  }

  local(change: TopicChange): void {
    this.onChange(change.appId, change.topic);
  }

  get(appId: string, topic: string): TopicCount {
    return this.localCount(appId, topic);
  }

  healthy(): boolean {
    return true;
  }

  async close(): Promise<void> {}
}
