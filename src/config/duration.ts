const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;

/**
 * Parses a duration such as `250ms`, `30s`, `15m`, `1h`, `7d` (or a bare number of milliseconds)
 * into milliseconds. Returns `undefined` when the text is not a duration.
 */
export function parseDuration(input: string | number): number | undefined {
  if (typeof input === 'number') return inRange(input);
  const text = input.trim();
  if (/^\d+$/.test(text)) return inRange(Number(text));
  const m = DURATION_RE.exec(text);
  if (!m) return undefined;
  const unit = UNITS[m[2] as string];
  if (unit === undefined) return undefined;
  return inRange(Math.round(Number(m[1]) * unit));
}

/**
 * Longest duration accepted: 1000 years. Beyond it a time computed from now (a retry, an expiry) leaves
 * the range the stores hold, and `1` followed by 400 zeros would be Infinity.
 */
export const MAX_DURATION_MS = 1000 * 365 * 86_400_000;

function inRange(ms: number): number | undefined {
  return Number.isFinite(ms) && ms >= 0 && ms <= MAX_DURATION_MS ? ms : undefined;
}

/** Parses a comma separated list of durations (`15s,1m,5m`). */
export function parseDurationList(input: string | readonly (string | number)[]): number[] | undefined {
  const parts = typeof input === 'string' ? input.split(',').map((s) => s.trim()) : input;
  const out: number[] = [];
  for (const part of parts) {
    const v = parseDuration(part);
    if (v === undefined) return undefined;
    out.push(v);
  }
  return out;
}

export function formatDuration(ms: number): string {
  if (ms % 86_400_000 === 0 && ms > 0) return `${ms / 86_400_000}d`;
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0 && ms > 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
