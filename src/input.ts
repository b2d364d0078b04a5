/**
 * Checks on client input that the schema validators do not make: text a store can hold (PostgreSQL
 * text and JSON refuse NUL characters and unpaired UTF-16 surrogates), JSON values JSON can carry
 * (no Infinity, a bounded depth: `JSON.stringify` throws a RangeError on some thousands of levels), and
 * times inside the store's range. Each answers where the problem is, so callers can name it.
 */

declare global {
  interface String {
    /** ES2024 (Node 20): false when the string holds an unpaired surrogate. */
    isWellFormed(): boolean;
  }
}

/** Default of MAX_JSON_DEPTH: the deepest nesting of objects and arrays accepted in client JSON. */
export const DEFAULT_MAX_JSON_DEPTH = 128;
/**
 * Bounds of MAX_JSON_DEPTH. Above: `JSON.stringify`, the Socket.IO parser and PostgreSQL's jsonb each
 * took 4,000 levels from the top of a stack here and failed at 8,000 (a stack overflow, "invalid input
 * syntax for type json"), and a request's own frames take part of that stack. Below: a service that
 * forwards a notification (OFFLINE_WEBHOOK_URL) wraps its data in an object of its own.
 */
export const MIN_JSON_DEPTH = 8;
export const MAX_JSON_DEPTH_LIMIT = 1000;

/**
 * The depth in force (MAX_JSON_DEPTH): one per process, set by startHerald from its config, read by every
 * check below that is not given its own. Several nodes in one process (tests, embedding code) share it.
 */
let maxJsonDepth = DEFAULT_MAX_JSON_DEPTH;

/** Sets MAX_JSON_DEPTH for this process; throws a RangeError outside its bounds. */
export function setMaxJsonDepth(depth: number): void {
  if (!Number.isInteger(depth) || depth < MIN_JSON_DEPTH || depth > MAX_JSON_DEPTH_LIMIT) {
    throw new RangeError(
      `MAX_JSON_DEPTH must be an integer from ${MIN_JSON_DEPTH} to ${MAX_JSON_DEPTH_LIMIT}`,
    );
  }
  maxJsonDepth = depth;
}

/** The MAX_JSON_DEPTH in force. */
export function currentMaxJsonDepth(): number {
  return maxJsonDepth;
}

/** Whether a store can hold this text: no NUL character, no unpaired surrogate. */
export function isStorableText(s: string): boolean {
  return !s.includes('\u0000') && s.isWellFormed();
}

/** Why a string cannot be stored, or undefined. */
export function textProblem(s: string): string | undefined {
  if (s.includes('\u0000')) return 'contains a NUL character (\\u0000)';
  if (!s.isWellFormed()) return 'contains an unpaired UTF-16 surrogate';
  return undefined;
}

export interface JsonProblem {
  /** JSON pointer of the offending value, relative to the checked one ('' for itself). */
  path: string;
  message: string;
}

/**
 * Walks a parsed JSON value: finds nesting deeper than `maxDepth` (MAX_JSON_DEPTH by default), numbers
 * JSON cannot carry (a literal such as 1e309 parses to Infinity, which `JSON.stringify` turns into
 * null), and, with `storable`, strings (values and keys) a store cannot hold. Undefined when the value
 * is fine.
 */
export function jsonProblem(
  value: unknown,
  storable: boolean,
  maxDepth: number = maxJsonDepth,
): JsonProblem | undefined {
  return walk(value, storable, 0, maxDepth);
}

function walk(value: unknown, storable: boolean, depth: number, maxDepth: number): JsonProblem | undefined {
  if (typeof value === 'number') {
    return Number.isFinite(value) ? undefined : { path: '', message: 'is not a finite number' };
  }
  if (typeof value === 'string') {
    const p = storable ? textProblem(value) : undefined;
    return p ? { path: '', message: p } : undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  if (depth >= maxDepth) {
    return { path: '', message: `nests objects and arrays deeper than ${maxDepth} levels` };
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const p = walk(value[i], storable, depth + 1, maxDepth);
      if (p) return { path: `/${i}${p.path}`, message: p.message };
    }
    return undefined;
  }
  for (const key in value) {
    if (storable) {
      const k = textProblem(key);
      if (k) return { path: pointer(key), message: `has a key that ${k}` };
    }
    const p = walk((value as Record<string, unknown>)[key], storable, depth + 1, maxDepth);
    if (p) return { path: `${pointer(key)}${p.path}`, message: p.message };
  }
  return undefined;
}

/** One JSON pointer step for an object key. */
function pointer(key: string): string {
  return `/${key.replaceAll('~', '~0').replaceAll('/', '~1')}`;
}

/** The earliest and latest instants the stores hold as a timestamp here: years 1 to 9999 (UTC). */
export const MIN_TIME_MS = new Date(Date.UTC(2000, 0, 1)).setUTCFullYear(1);
export const MAX_TIME_MS = Date.UTC(9999, 11, 31, 23, 59, 59, 999);

/** Whether a time (ms since the epoch) lies in years 1-9999. */
export function isStorableTime(ms: number): boolean {
  return Number.isFinite(ms) && ms >= MIN_TIME_MS && ms <= MAX_TIME_MS;
}
