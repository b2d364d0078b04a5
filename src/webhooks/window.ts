/** Counts of one second. */
interface Bucket {
  second: number;
  attempts: number;
  successes: number;
  durationSum: number;
  delivered: number;
  failed: number;
}

export interface WindowSnapshot {
  attempts: number;
  successes: number;
  /** Average attempt duration in ms (0 without attempts). */
  avgMs: number;
  /** Webhooks finished as delivered / failed in the window. */
  delivered: number;
  failed: number;
}

/** A sliding window of attempt outcomes in one-second buckets, for the rate and response-time alerts. */
export class SlidingWindow {
  private readonly buckets: Bucket[];

  constructor(
    windowMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.buckets = Array.from({ length: Math.max(1, Math.ceil(windowMs / 1000)) }, () => ({
      second: -1,
      attempts: 0,
      successes: 0,
      durationSum: 0,
      delivered: 0,
      failed: 0,
    }));
  }

  private bucket(): Bucket {
    const second = Math.floor(this.now() / 1000);
    const b = this.buckets[second % this.buckets.length] as Bucket;
    if (b.second !== second) {
      b.second = second;
      b.attempts = 0;
      b.successes = 0;
      b.durationSum = 0;
      b.delivered = 0;
      b.failed = 0;
    }
    return b;
  }

  attempt(success: boolean, durationMs: number): void {
    const b = this.bucket();
    b.attempts++;
    if (success) b.successes++;
    b.durationSum += durationMs;
  }

  finished(status: 'delivered' | 'failed', count = 1): void {
    const b = this.bucket();
    if (status === 'delivered') b.delivered += count;
    else b.failed += count;
  }

  snapshot(): WindowSnapshot {
    const oldest = Math.floor(this.now() / 1000) - this.buckets.length + 1;
    let attempts = 0;
    let successes = 0;
    let durationSum = 0;
    let delivered = 0;
    let failed = 0;
    for (const b of this.buckets) {
      if (b.second < oldest) continue;
      attempts += b.attempts;
      successes += b.successes;
      durationSum += b.durationSum;
      delivered += b.delivered;
      failed += b.failed;
    }
    return { attempts, successes, avgMs: attempts > 0 ? durationSum / attempts : 0, delivered, failed };
  }
}
