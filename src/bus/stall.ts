import type { Redis } from 'ioredis';

/**
 * Drops a Redis connection once it has owed a reply for `stallMs`, as ioredis's `socketTimeout` does
 * (the stream is destroyed with an error, the commands in flight fail, ioredis reconnects), without its
 * cost: `socketTimeout` arms a timer and adds a `data` listener to the socket for each write when none
 * is armed, then clears them at the next data, a few µs of a busy cluster node for every script call.
 *
 * Instead a check runs every `stallMs / 4` (at least 50 ms) and looks at the oldest unanswered command
 * (the front of ioredis's command queue). The same command at the front for `stallMs` between two checks
 * means Redis has not answered anything in that time. It was at the front for up to one period before it
 * was first seen, so a stall is noticed between `stallMs` and `stallMs` plus a period after the command
 * was owed, never sooner. Returns a function that stops the checks.
 */
export function watchStalls(redis: Redis, stallMs: number): () => void {
  let front: unknown;
  let since = 0;
  const timer = setInterval(
    () => {
      const oldest = redis.status === 'ready' ? redis.commandQueue.peekFront() : undefined;
      if (oldest === undefined) {
        front = undefined;
        return;
      }
      const now = Date.now();
      if (oldest !== front) {
        front = oldest;
        since = now;
        return;
      }
      if (now - since < stallMs) return;
      front = undefined;
      redis.stream.destroy(new Error(`Redis has not answered for ${now - since} ms: connection dropped`));
    },
    Math.max(50, Math.floor(stallMs / 4)),
  );
  timer.unref();
  return () => clearInterval(timer);
}
