import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** V8's `gc` function (the `--expose-gc` one): `gc()` is a full collection, `gc({ type: 'minor' })` a scavenge. */
export type GcFunction = (options?: { type?: 'major' | 'minor'; execution?: 'sync' | 'async' }) => void;

let cached: GcFunction | null | undefined;

/**
 * V8's `gc` function, without starting Node with `--expose-gc`: the flag is turned on for a fresh
 * context, which then exposes the function (the `expose-gc` package does the same). `undefined` where
 * V8 refuses (then callers simply do without).
 */
export function exposedGc(): GcFunction | undefined {
  if (cached === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      const fn = runInNewContext('gc') as unknown;
      cached = typeof fn === 'function' ? (fn as GcFunction) : null;
    } catch {
      cached = null;
    }
  }
  return cached ?? undefined;
}

/**
 * Paces young-generation collections to the connections a node accepts. A connection keeps ~10 KB of
 * objects for as long as it lives; with the 64 MiB semi-space Herald runs with (README, "Node.js
 * flags"), a connect ramp (clients coming back after a restart or a network cut, thousands per second)
 * fills the young generation with tens of thousands of connections before a scavenge, and that scavenge
 * then copies all of them: pauses of 20-55 ms, each one a stall of every socket and request on the node.
 * Asking for a scavenge after every `every` new connections keeps each one to a few hundred
 * connections' worth of copying (the same total work: a connection is copied once and promoted at the
 * next scavenge either way), while the large semi-space still serves the short-lived garbage of
 * notifications and payments between ramps. A trickle of connections costs one scavenge per `every`.
 */
export class ConnectGcPacer {
  private count = 0;
  /** Scavenges asked for so far. */
  runs = 0;

  constructor(
    private readonly every: number,
    /** The collector to call; `null`: none (V8 gave no gc function). */
    private readonly gc: GcFunction | null = every > 0 ? (exposedGc() ?? null) : null,
  ) {}

  /** A connection was accepted; returns whether a scavenge was asked for now. */
  connected(): boolean {
    if (this.every <= 0 || this.gc === null) return false;
    if (++this.count < this.every) return false;
    this.count = 0;
    this.runs++;
    this.gc({ type: 'minor' });
    return true;
  }
}
