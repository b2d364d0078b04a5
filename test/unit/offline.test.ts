/**
 * The offline fallback (OFFLINE_WEBHOOK_URL): every offline user of a notification is forwarded on its
 * own, so one forward the webhook engine cannot store does not cost the others theirs; forwards the store
 * cannot take now, and notifications whose users' presence cannot be read, are tried again, in order,
 * until they succeed or their retry time is over; a forward the engine refuses is not. Fakes for
 * presence and the webhook engine.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import pino from 'pino';
import type { Presence } from '../../src/bus/types.js';
import { HeraldError } from '../../src/errors.js';
import {
  OfflineForwarder,
  type OfflineForwarderOptions,
  type OfflineSink,
} from '../../src/router/offline.js';
import type { Notification } from '../../src/router/types.js';
import { sleep, until } from '../helpers.js';

const note = (users: string[], id = 'n1'): Notification => ({
  v: 1,
  id,
  appId: 'app',
  ts: 1,
  data: '{"x":1}',
  users,
});

/** Presence with these users online; `down()` makes it fail until `up()`. */
function presence(online: string[]) {
  let failing = false;
  const p = {
    online: async () => {
      if (failing) throw new Error('redis away');
      return new Set(online);
    },
  } as unknown as Presence;
  return {
    p,
    down: () => {
      failing = true;
    },
    up: () => {
      failing = false;
    },
  };
}

/** A webhook engine that stores forwards, fails while `down`, and refuses the users in `refuse`. */
function sink(refuse: string[] = []) {
  const stored: string[] = [];
  let down = false;
  let calls = 0;
  const s: OfflineSink = {
    enqueue: async (input) => {
      calls++;
      const p = input.payload as { userId: string; id: string };
      if (refuse.includes(p.userId)) throw new HeraldError('payload_too_large');
      if (down) throw new HeraldError('store_unavailable');
      stored.push(`${p.id}:${p.userId}`);
      return { id: `w-${p.userId}`, duplicate: false };
    },
  };
  return {
    s,
    stored,
    calls: () => calls,
    setDown: (v: boolean) => {
      down = v;
    },
  };
}

const made: OfflineForwarder[] = [];
function forwarder(
  opts: Partial<OfflineForwarderOptions> & Pick<OfflineForwarderOptions, 'presence' | 'sink'>,
) {
  const results: Record<string, number> = {};
  const f = new OfflineForwarder({
    url: 'https://push.example/hook',
    logger: pino({ level: 'silent' }),
    onResult: (result, users) => {
      results[result] = (results[result] ?? 0) + users;
    },
    initialDelayMs: 20,
    maxDelayMs: 80,
    ...opts,
  });
  made.push(f);
  return { f, results };
}

describe('offline fallback', () => {
  afterEach(() => {
    for (const f of made.splice(0)) f.stop();
  });

  it('forwards each offline user; one refused forward does not cost the others theirs', async () => {
    const k = sink(['bad']);
    const { f, results } = forwarder({ presence: presence(['on']).p, sink: k.s });
    f.forward(note(['a', 'bad', 'on', 'b']));
    await until(() => (results.forwarded ?? 0) + (results.failed ?? 0) === 3, 2000, 'three outcomes');
    assert.deepEqual(k.stored, ['n1:a', 'n1:b'], 'the users after the refused one are forwarded too');
    assert.deepEqual(results, { forwarded: 2, failed: 1 });
    await sleep(100);
    assert.equal(k.calls(), 3, 'a refused forward is not tried again');
    assert.equal(f.pending, 0);
  });

  it('keeps forwards the store cannot take and stores them once it is back', async () => {
    const k = sink();
    const { f, results } = forwarder({ presence: presence([]).p, sink: k.s });
    k.setDown(true);
    f.forward(note(['a', 'b'], 'n1'));
    f.forward(note(['c'], 'n2'));
    await until(() => f.pending === 3, 2000, 'three waiting');
    const tried = k.calls();
    await sleep(150);
    // While the store fails, each round tries the first waiting forward only.
    assert.ok(k.calls() - tried <= 4, `a failing store is not hammered (${k.calls() - tried} calls)`);
    assert.deepEqual(results, {});
    k.setDown(false);
    await until(() => f.pending === 0 && k.stored.length === 3, 2000, 'stored once back');
    // Each notification's users in order (notifications forwarded at once may interleave, as their
    // webhooks are delivered concurrently anyway).
    assert.deepEqual([...k.stored].sort(), ['n1:a', 'n1:b', 'n2:c']);
    assert.ok(k.stored.indexOf('n1:a') < k.stored.indexOf('n1:b'));
    assert.deepEqual(results, { forwarded: 3 });
  });

  it('looks at presence again when it could not be read, and forwards the users offline then', async () => {
    const k = sink();
    const pr = presence(['b']);
    const { f, results } = forwarder({ presence: pr.p, sink: k.s });
    pr.down();
    f.forward(note(['a', 'b', 'c']));
    await until(() => f.pending === 1, 2000, 'waiting for presence');
    await sleep(60);
    assert.equal(k.calls(), 0);
    pr.up();
    await until(() => k.stored.length === 2, 2000, 'forwarded once presence is back');
    assert.deepEqual(k.stored, ['n1:a', 'n1:c']);
    assert.deepEqual(results, { forwarded: 2 });
  });

  it('gives up after the retry time, when the queue is full, and on stop, counting each', async () => {
    const k = sink();
    k.setDown(true);
    const pr = presence([]);
    const { f, results } = forwarder({ presence: pr.p, sink: k.s, retryForMs: 100, maxPending: 2 });
    f.forward(note(['a'], 'n1'));
    await until(() => f.pending === 1, 2000, 'one waiting');
    f.forward(note(['b', 'c'], 'n2'));
    f.forward(note(['d'], 'n3'));
    assert.equal(f.pending, 2, 'bounded');
    assert.deepEqual(results, { unknown: 1 }, 'the one that did not fit is counted');
    await until(() => f.pending === 0, 3000, 'given up after the retry time');
    assert.deepEqual(results, { unknown: 1, failed: 3 });

    const g = forwarder({ presence: pr.p, sink: k.s });
    g.f.forward(note(['x', 'y'], 'n4'));
    await until(() => g.f.pending === 2, 2000, 'two waiting');
    g.f.stop();
    assert.deepEqual(g.results, { failed: 2 });
    g.f.forward(note(['z'], 'n5'));
    assert.equal(g.f.pending, 0, 'nothing taken after stop');
  });
});
