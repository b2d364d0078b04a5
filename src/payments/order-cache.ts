import { LRUCache } from 'lru-cache';
import { TIMEOUT_STATES } from './state-machine.js';
import type { Order } from './types.js';

/**
 * The open orders (`created`, `paying`) this node stored last, so that the next event of an order
 * skips reading it from the store: a terminal sends `created`, `paying` and its outcome one after the
 * other, and on one node each of them used to cost a round trip to read the order the previous one had
 * just written.
 *
 * Never trusted blindly: a batch decided on cached orders checks, in its one write statement, that each
 * of them still has the version it had here (changed orders by the version their update expects,
 * the others by a check of their own), and a batch that assumed an order is new inserts it only if it
 * does not exist. When another node or the timeout sweep changed an order meanwhile, the write aborts
 * and the batch runs again from the store. Bounded: past `max` orders the least recently used go first
 * (an LRU list: a Map's first key costs a skip over every key deleted before it, see MemoryReceipts).
 */
export class OrderCache {
  private readonly orders: LRUCache<string, Order> | undefined;
  hits = 0;
  misses = 0;

  constructor(readonly max: number) {
    this.orders = max > 0 ? new LRUCache<string, Order>({ max }) : undefined;
  }

  get size(): number {
    return this.orders?.size ?? 0;
  }

  /** A copy of the cached order (the batch mutates it; the cache keeps what was committed). */
  get(key: string): Order | undefined {
    const o = this.orders?.get(key);
    if (!o) return undefined;
    return { ...o, createdAt: o.createdAt, updatedAt: o.updatedAt };
  }

  /** Keeps an order as committed: open orders are kept (as the newest), the others forgotten. */
  set(key: string, order: Order): void {
    if (!this.orders) return;
    if (!TIMEOUT_STATES.includes(order.state)) {
      this.orders.delete(key);
      return;
    }
    this.orders.set(key, order);
  }

  delete(key: string): void {
    this.orders?.delete(key);
  }

  clear(): void {
    this.orders?.clear();
  }
}
