#!/usr/bin/env node
import { ConfigError, loadConfig } from './config/index.js';
import { EXIT, Lifecycle } from './lifecycle.js';
import { createLogger } from './logger.js';
import { startHerald } from './server.js';

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`herald: ${err.message}\n`);
      process.exit(EXIT.config);
    }
    throw err;
  }
  const logger = createLogger(config.logLevel);
  const lifecycle = new Lifecycle({
    logger,
    shutdownTimeout: config.shutdownTimeout,
    exit: (code) => process.exit(code),
  });
  // Installed before start-up: the node answers /healthz before startHerald resolves, and a SIGTERM in
  // that window (a fast rollout, a test) must still drain and exit 0, not kill the process outright. A
  // failure during start-up is logged as JSON and follows the same policy as later ones.
  process.on('SIGTERM', (signal) => lifecycle.signal(signal));
  process.on('SIGINT', (signal) => lifecycle.signal(signal));
  process.on('unhandledRejection', (reason) => lifecycle.unhandledRejection(reason));
  process.on('uncaughtException', (err) => lifecycle.uncaughtException(err));
  let herald: Awaited<ReturnType<typeof startHerald>>;
  try {
    herald = await startHerald({ config, logger, compactHeapAfterStart: true });
  } catch (err) {
    // A setting that is only judged with others while starting (WEBHOOK_LEASE against WEBHOOK_TIMEOUT)
    // is a setting error like any other: on stderr and exit 78, not a failure to retry (exit 1).
    if (err instanceof ConfigError) {
      process.stderr.write(`herald: ${err.message}\n`);
      process.exit(EXIT.config);
    }
    logger.fatal({ err }, 'herald failed to start');
    process.exit(EXIT.failed);
  }
  lifecycle.started(herald);
}

void main();
