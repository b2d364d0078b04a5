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
  let herald: Awaited<ReturnType<typeof startHerald>>;
  try {
    herald = await startHerald({ config, logger });
  } catch (err) {
    logger.fatal({ err }, 'herald failed to start');
    process.exit(1);
  }

  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    signalled = true;
    logger.info({ signal }, 'signal received');
    const timer = setTimeout(() => {
      logger.warn({ timeoutMs: config.shutdownTimeout }, 'shutdown took too long; exiting');
      process.exit(0);
    }, config.shutdownTimeout);
    timer.unref();
    herald.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('unhandledRejection', (reason) => logger.error({ err: reason }, 'unhandled rejection'));
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception');
    process.exit(1);
  });
}

void main();
