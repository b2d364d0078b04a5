import { readFileSync } from 'node:fs';

/** The process's limit of open files (soft: what applies; hard: what it may raise the soft one to). */
export interface OpenFilesLimit {
  soft: number;
  hard: number;
}

/**
 * Below this soft limit a node warns at start: each connection is one open file, and Node, the store
 * and the HTTP keep-alive connections need a few hundred more.
 */
export const OPEN_FILES_WARN_BELOW = 65_536;
/** Files a node keeps open besides client connections (store, logs, HTTP clients, libraries). */
export const OPEN_FILES_RESERVED = 200;

/** Reads the "Max open files" line of Linux's `/proc/<pid>/limits` text; `unlimited` is Infinity. */
export function parseOpenFilesLimit(limits: string): OpenFilesLimit | undefined {
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(limits);
  if (!m) return undefined;
  const value = (v: string) => (v === 'unlimited' ? Number.POSITIVE_INFINITY : Number(v));
  const soft = value(m[1] as string);
  const hard = value(m[2] as string);
  return Number.isNaN(soft) || Number.isNaN(hard) ? undefined : { soft, hard };
}

/** This process's open-files limit; undefined where `/proc` is not there (not Linux). */
export function openFilesLimit(): OpenFilesLimit | undefined {
  try {
    return parseOpenFilesLimit(readFileSync('/proc/self/limits', 'utf8'));
  } catch {
    return undefined;
  }
}
