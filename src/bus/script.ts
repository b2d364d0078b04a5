import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';

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
