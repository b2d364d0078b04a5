/**
 * The process's answer to signals and failures (src/lifecycle.ts, wired to `process` by main.ts): an
 * orchestrator reads a stop that did not finish in time, or was cut short, from a non-zero exit code, and
 * the log says what was still pending.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EXIT, Lifecycle, type Stoppable } from '../../src/lifecycle.js';
import { createLogger } from '../../src/logger.js';
import type { ShutdownPending } from '../../src/server.js';

type Line = { level: number; msg: string; pending?: { step: string; next?: string[] }; err?: unknown };

const PENDING: ShutdownPending = {
  step: 'webhooks',
  stepMs: 1234,
  next: ['history', 'bus', 'store'],
  connections: 0,
  webhooksInFlight: 3,
};

function setup(shutdownTimeout = 50) {
  const lines: Line[] = [];
  const logger = createLogger('info', { write: (s: string) => lines.push(JSON.parse(s) as Line) });
  const exits: number[] = [];
  let exited: (code: number) => void = () => undefined;
  const exit = new Promise<number>((r) => {
    exited = r;
  });
  const lifecycle = new Lifecycle({
    logger,
    shutdownTimeout,
    exit: (code) => {
      exits.push(code);
      exited(code);
    },
  });
  return { lines, exits, exit, lifecycle };
}

/** A node whose stop() settles as told (or never); counts its calls. */
function node(stop: () => Promise<void>): Stoppable & { stops: number } {
  const n = {
    stops: 0,
    stop: () => {
      n.stops++;
      return stop();
    },
    shutdownPending: () => (n.stops > 0 ? PENDING : undefined),
  };
  return n;
}

const never = () => new Promise<void>(() => undefined);
const tick = (ms = 10) => new Promise((r) => setTimeout(r, ms));

describe('process lifecycle: signals, shutdown timeout, failures', () => {
  it('a stop that finishes in time exits 0, once', async () => {
    const { lifecycle, exits, exit } = setup(1000);
    lifecycle.started(node(async () => undefined));
    lifecycle.signal('SIGTERM');
    assert.equal(await exit, EXIT.clean);
    await tick(20);
    assert.deepEqual(exits, [0]);
  });

  it('SHUTDOWN_TIMEOUT expiring first exits 124 and logs the step still running and those after it', async () => {
    const { lifecycle, exits, exit, lines } = setup(50);
    const n = node(never);
    lifecycle.started(n);
    const t0 = Date.now();
    lifecycle.signal('SIGTERM');
    assert.equal(await exit, EXIT.shutdownTimeout);
    assert.equal(EXIT.shutdownTimeout, 124);
    assert.ok(Date.now() - t0 >= 45);
    assert.equal(n.stops, 1);
    const line = lines.find((l) => /SHUTDOWN_TIMEOUT/.test(l.msg));
    assert.ok(line, JSON.stringify(lines));
    assert.equal(line.level, 50, 'logged as an error');
    assert.deepEqual(line.pending, PENDING);
    assert.match(line.msg, /124/);
    assert.deepEqual(exits, [124]);
  });

  it('SHUTDOWN_TIMEOUT=0 exits at once, and says so with 124: the drain did not run', async () => {
    const { lifecycle, exit } = setup(0);
    lifecycle.started(node(never));
    lifecycle.signal('SIGTERM');
    assert.equal(await exit, EXIT.shutdownTimeout);
  });

  it('a stop that fails exits 1 with the error', async () => {
    const { lifecycle, exit, lines } = setup(1000);
    lifecycle.started(node(() => Promise.reject(new Error('store close hung up'))));
    lifecycle.signal('SIGINT');
    assert.equal(await exit, EXIT.failed);
    assert.ok(lines.some((l) => /shutdown failed/.test(l.msg)));
  });

  it('a second signal during the drain exits 1 at once, saying what was pending', async () => {
    const { lifecycle, exits, lines } = setup(5000);
    const n = node(never);
    lifecycle.started(n);
    lifecycle.signal('SIGTERM');
    await tick();
    assert.deepEqual(exits, []);
    lifecycle.signal('SIGINT');
    assert.deepEqual(exits, [EXIT.failed]);
    assert.equal(n.stops, 1);
    const line = lines.find((l) => /second signal/.test(l.msg));
    assert.deepEqual(line?.pending, PENDING);
  });

  it('a signal during start-up stops the node once started, within the same timeout', async () => {
    const { lifecycle, exits, exit, lines } = setup(5000);
    lifecycle.signal('SIGTERM');
    await tick();
    assert.deepEqual(exits, []);
    const n = node(async () => undefined);
    lifecycle.started(n);
    assert.equal(await exit, EXIT.clean);
    assert.equal(n.stops, 1);
    assert.ok(lines.some((l) => /during start-up/.test(l.msg)));
  });

  it('a start-up longer than the timeout after a signal exits 124 (pending: start-up)', async () => {
    const { lifecycle, exit, lines } = setup(30);
    lifecycle.signal('SIGTERM');
    assert.equal(await exit, EXIT.shutdownTimeout);
    assert.deepEqual(lines.find((l) => /SHUTDOWN_TIMEOUT/.test(l.msg))?.pending, { step: 'start-up' });
  });

  it('an uncaught exception is logged (fatal) and exits 1; an unhandled rejection is logged and the node keeps running', async () => {
    const { lifecycle, exits, lines } = setup(1000);
    lifecycle.started(node(async () => undefined));
    lifecycle.unhandledRejection(new Error('lost catch'));
    await tick();
    assert.deepEqual(exits, []);
    const rejection = lines.find((l) => /unhandled rejection/.test(l.msg));
    assert.equal(rejection?.level, 50);
    assert.match(JSON.stringify(rejection?.err), /lost catch/);
    lifecycle.uncaughtException(new Error('boom'));
    assert.deepEqual(exits, [EXIT.failed]);
    const fatal = lines.find((l) => /uncaught exception/.test(l.msg));
    assert.equal(fatal?.level, 60);
    assert.match(JSON.stringify(fatal?.err), /boom/);
  });
});
