import { createHash } from 'node:crypto';
import { Command, type Redis } from 'ioredis';

/**
 * A Lua script run by its SHA1 (EVALSHA), loaded on first use and again after Redis forgot it
 * (NOSCRIPT, e.g. after a restart), so the script text is not sent and hashed on every call.
 */
export class Script {
  private readonly sha: string;

  constructor(private readonly lua: string) {
    this.sha = createHash('sha1').update(lua).digest('hex');
  }

  async run(redis: Redis, numKeys: number, ...args: (string | number)[]): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, numKeys, ...args);
    } catch (err) {
      if (!String((err as Error).message).includes('NOSCRIPT')) throw err;
      return redis.eval(this.lua, numKeys, ...args);
    }
  }

  /**
   * Runs the script with its arguments in one array, as one command written at once. Made for a caller
   * that batches by itself (the batch publisher, one call per turn with a few hundred arguments): it
   * skips what `run` goes through for every call, the spread of the arguments, ioredis's command
   * wrapper (which flattens and converts them again) and auto-pipelining (a pipeline object, its
   * promise and its result array for the one command of the turn), about a third of the node's CPU per
   * call (`bench/tools/redis-call.mts`). Not auto-pipelined, so it is written before commands of the
   * same turn that are (they leave at the end of the turn): only for calls that need no order with them.
   */
  async call(redis: Redis, numKeys: number, args: readonly string[]): Promise<unknown> {
    try {
      return await redis.sendCommand(new Command('evalsha', [this.sha, String(numKeys), ...args]));
    } catch (err) {
      if (!String((err as Error).message).includes('NOSCRIPT')) throw err;
      return redis.sendCommand(new Command('eval', [this.lua, String(numKeys), ...args]));
    }
  }
}

/**
 * Lua `now_ms()`: Redis's own clock in milliseconds. Heartbeats are stamped and judged with it, so that
 * whether a node is alive never depends on the nodes' clocks agreeing (a node whose clock is behind by
 * more than the presence TTL would otherwise be taken for dead by every other node, all the time).
 */
export const NOW_MS_LUA = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`;
