import type { Logger } from './logger.js';
import type { ShutdownPending } from './server.js';

/**
 * Exit codes of the herald process (README, "Operations"), so that an orchestrator can tell a clean
 * stop from one that lost work.
 */
export const EXIT = {
  /** The graceful stop finished within SHUTDOWN_TIMEOUT. */
  clean: 0,
  /** Start-up failed, the graceful stop failed, a second signal cut the drain short, or an uncaught exception. */
  failed: 1,
  /** A setting is invalid (sysexits' EX_CONFIG); nothing was started. */
  config: 78,
  /** SHUTDOWN_TIMEOUT expired before the graceful stop finished (the code timeout(1) uses). */
  shutdownTimeout: 124,
} as const;

/** The running node, as the process sees it. */
export interface Stoppable {
  stop(): Promise<void>;
  shutdownPending(): ShutdownPending | undefined;
}

export interface LifecycleOptions {
  logger: Logger;
  /** SHUTDOWN_TIMEOUT in ms: how long a graceful stop may take from the first signal. */
  shutdownTimeout: number;
  /** `process.exit`. */
  exit: (code: number) => void;
}

/**
 * What the process does on signals and failures:
 * - SIGTERM / SIGINT: a graceful stop (also when it comes during start-up: then once started); exit 0
 *   when it finishes, 1 when it fails, 124 when SHUTDOWN_TIMEOUT expires first, with what was pending.
 * - a second SIGTERM / SIGINT while stopping: exit 1 at once, with what was pending.
 * - an uncaught exception: logged (fatal), exit 1 at once: the process state is unknown.
 * - an unhandled promise rejection: logged (error) and the node keeps serving. It is a missing `catch` on
 *   one operation, whose caller has already moved on; crashing would drop every client of the node (and
 *   of every node, which all run the same code) to report it.
 */
export class Lifecycle {
  private node: Stoppable | undefined;
  private signalled = false;
  private exited = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: LifecycleOptions) {}

  /** Start-up is done. A signal received meanwhile stops the node now. */
  started(node: Stoppable): void {
    this.node = node;
    if (this.signalled) this.stop(node);
  }

  signal(signal: NodeJS.Signals): void {
    const { logger } = this.opts;
    if (this.signalled) {
      logger.warn({ signal, pending: this.pending() }, 'second signal: exiting now (exit code 1)');
      this.exit(EXIT.failed);
      return;
    }
    this.signalled = true;
    logger.info(
      { signal },
      this.node ? 'signal received' : 'signal received during start-up; stopping once started',
    );
    // Not unref'd: a stop waiting on a promise that nothing will settle must still end here, not in an
    // exit 0 when the event loop runs out of work.
    this.timer = setTimeout(() => {
      logger.error(
        { timeoutMs: this.opts.shutdownTimeout, pending: this.pending() },
        `shutdown did not finish within SHUTDOWN_TIMEOUT; exiting with code ${EXIT.shutdownTimeout}`,
      );
      this.exit(EXIT.shutdownTimeout);
    }, this.opts.shutdownTimeout);
    if (this.node) this.stop(this.node);
  }

  uncaughtException(err: unknown): void {
    this.opts.logger.fatal({ err, pending: this.pending() }, 'uncaught exception: exiting (exit code 1)');
    this.exit(EXIT.failed);
  }

  unhandledRejection(reason: unknown): void {
    this.opts.logger.error({ err: reason }, 'unhandled rejection (the node keeps running)');
  }

  private stop(node: Stoppable): void {
    node.stop().then(
      () => this.exit(EXIT.clean),
      (err: unknown) => {
        this.opts.logger.error({ err, pending: this.pending() }, 'shutdown failed (exit code 1)');
        this.exit(EXIT.failed);
      },
    );
  }

  /** What the stop still waits for; `start-up` when the node is not started yet. */
  private pending(): ShutdownPending | { step: 'start-up' } | undefined {
    if (!this.node) return this.signalled ? { step: 'start-up' } : undefined;
    return this.node.shutdownPending();
  }

  private exit(code: number): void {
    if (this.exited) return;
    this.exited = true;
    if (this.timer) clearTimeout(this.timer);
    this.opts.exit(code);
  }
}
