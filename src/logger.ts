import pino, { type Logger } from 'pino';
import type { LogLevel } from './config/index.js';

export type { Logger } from 'pino';

/** JSON logs on stdout. Secrets never reach a log line: tokens and keys are redacted by path. */
export function createLogger(level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'herald', pid: process.pid },
      redact: {
        paths: [
          'req.headers.authorization',
          'headers.authorization',
          'token',
          'secret',
          'apiKey',
          '*.token',
          '*.secret',
        ],
        censor: '[redacted]',
      },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}
