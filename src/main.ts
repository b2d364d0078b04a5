#!/usr/bin/env node
import { ConfigError, loadConfig } from './config/index.js';
import { createLogger } from './logger.js';
import { startHerald } from './server.js';

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`herald: ${err.message}\n`);
      process.exit(78); // EX_CONFIG
    }
    throw err;
  }
  const logger = createLogger(config.logLevel);
  let herald: Awaited<ReturnType<typeof startHerald>> | undefined;
  let signalled = false;
  const shutdown = (h: NonNullable<typeof herald>) => {
    h.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  // Installed before start-up: the node answers /healthz before startHerald resolves, and a SIGTERM in
  // that window (a fast rollout, a test) must still drain and exit 0, not kill the process outright.
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    signalled = true;
    logger.info(
      { signal },
      herald ? 'signal received' : 'signal received during start-up; stopping once started',
    );
    const timer = setTimeout(() => {
      logger.warn({ timeoutMs: config.shutdownTimeout }, 'shutdown took too long; exiting');
      process.exit(0);
    }, config.shutdownTimeout);
    timer.unref();
    if (herald) shutdown(herald);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    herald = await startHerald({ config, logger, compactHeapAfterStart: true });
  } catch (err) {
    logger.fatal({ err }, 'herald failed to start');
    process.exit(1);
  }
  if (signalled) shutdown(herald);
  process.on('unhandledRejection', (reason) => logger.error({ err: reason }, 'unhandled rejection'));
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception');
    process.exit(1);
  });
}

void main();
