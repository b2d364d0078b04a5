import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CountNotifier } from '../../src/router/counts.js';
import type { Frame } from '../../src/router/frame.js';
import type { Conn, TopicCount } from '../../src/router/types.js';
import { sleep, until } from '../helpers.js';

const INTERVAL = 40;

class Watcher implements Conn {
  readonly topics = new Set<string>();
  readonly watches = new Set<string>();
  readonly got: { topic: string; count: number; connections: number }[] = [];
  /** When each update was written. */
  readonly at: number[] = [];
  constructor(
    readonly id: string,
    readonly appId = 'app',
    readonly clientId = id,
    readonly deviceId: string | undefined = undefined,
  ) {}
  write(frame: Frame): boolean {
    const body = frame.packet.slice(`2/${this.appId},`.length);
    const [event, data, meta] = JSON.parse(body) as [
      string,
      Record<string, unknown>,
      Record<string, unknown>,
    ];
    assert.equal(event, 'dataUpdate');
    assert.equal(data.type, 'count');
    assert.equal(meta.topic, data.topic);
    this.at.push(performance.now());
    this.got.push({
      topic: data.topic as string,
      count: data.count as number,
      connections: data.connections as number,
    });
    return true;
  }
}

function setup(opts: { async?: boolean } = {}) {
  const values = new Map<string, TopicCount>();
  const watchers = new Map<string, Set<Conn>>();
  const errors: unknown[] = [];
  let reads = 0;
  let failNext = 0;
  const read = (topic: string) => {
    reads++;
    if (failNext > 0) {
      failNext--;
      throw new Error('source down');
    }
    return { ...(values.get(topic) ?? { count: 0, connections: 0 }) };
  };
  const notifier = new CountNotifier(
    {
      get: (_appId, topic) => (opts.async ? sleep(5).then(() => read(topic)) : read(topic)),
    },
    (_appId, topic) => watchers.get(topic) ?? new Set(),
    INTERVAL,
    (err) => errors.push(err),
  );
  return {
    notifier,
    errors,
    reads: () => reads,
    failNext: (n: number) => {
      failNext = n;
    },
    set(topic: string, count: number, connections = count) {
      values.set(topic, { count, connections });
      notifier.changed('app', topic);
    },
    watch(topic: string, w: Watcher) {
      let s = watchers.get(topic);
      if (!s) {
        s = new Set();
        watchers.set(topic, s);
      }
      s.add(w);
    },
  };
}

describe('CountNotifier', () => {
  it('merges changes of one tick into one update with the latest value', async () => {
    const t = setup();
    const w = new Watcher('w');
    t.watch('room', w);
    for (let i = 1; i <= 10; i++) t.set('room', i);
    await until(() => w.got.length >= 1, 1000, 'an update');
    await sleep(INTERVAL * 3);
    assert.deepEqual(w.got, [{ topic: 'room', count: 10, connections: 10 }]);
    assert.equal(t.reads(), 1);
    t.notifier.close();
  });

  it('sends at most one update per interval, and a trailing update with the final value', async () => {
    const t = setup();
    const w = new Watcher('w');
    t.watch('room', w);
    t.set('room', 1);
    await until(() => w.got.length === 1, 1000, 'the leading update');
    // Changes every few milliseconds for several intervals.
    const end = performance.now() + INTERVAL * 4;
    let i = 1;
    while (performance.now() < end) {
      t.set('room', ++i);
      await sleep(3);
    }
    await sleep(INTERVAL * 3);
    assert.deepEqual(w.got.at(-1), { topic: 'room', count: i, connections: i });
    assert.ok(w.got.length < i / 2, `${w.got.length} updates for ${i} changes`);
    // Never two updates within one interval (timers may fire up to 1 ms early).
    for (let k = 1; k < w.at.length; k++) {
      const gap = (w.at[k] as number) - (w.at[k - 1] as number);
      assert.ok(gap >= INTERVAL - 2, `updates ${k - 1} and ${k} only ${gap.toFixed(1)} ms apart`);
    }
    t.notifier.close();
  });

  it('every watcher of the topic gets the update; other topics are independent', async () => {
    const t = setup();
    const a = new Watcher('a');
    const b = new Watcher('b');
    const c = new Watcher('c');
    t.watch('room', a);
    t.watch('room', b);
    t.watch('hall', c);
    t.set('room', 2, 3);
    t.set('hall', 7);
    await until(() => a.got.length === 1 && b.got.length === 1 && c.got.length === 1, 1000, 'updates');
    assert.deepEqual(a.got, [{ topic: 'room', count: 2, connections: 3 }]);
    assert.deepEqual(c.got, [{ topic: 'hall', count: 7, connections: 7 }]);
    t.notifier.close();
  });

  it('does nothing for a topic nobody watches', async () => {
    const t = setup();
    t.set('lonely', 3);
    await sleep(INTERVAL * 2);
    assert.equal(t.reads(), 0);
  });

  it('with an asynchronous source (cluster), a change during a read is followed by the true value', async () => {
    const t = setup({ async: true });
    const w = new Watcher('w');
    t.watch('room', w);
    t.set('room', 1);
    await sleep(1); // the read of 1 is in flight
    t.set('room', 2);
    await until(() => w.got.at(-1)?.count === 2, 1000, 'the final value');
    await sleep(INTERVAL * 3);
    assert.deepEqual(w.got.at(-1), { topic: 'room', count: 2, connections: 2 });
    t.notifier.close();
  });

  it('a failing read is reported and retried', async () => {
    const t = setup();
    const w = new Watcher('w');
    t.watch('room', w);
    t.failNext(1);
    t.set('room', 4);
    await until(() => w.got.length === 1, 1000, 'the retried update');
    assert.equal(t.errors.length, 1);
    assert.deepEqual(w.got, [{ topic: 'room', count: 4, connections: 4 }]);
    t.notifier.close();
  });

  it('sends nothing after close()', async () => {
    const t = setup();
    const w = new Watcher('w');
    t.watch('room', w);
    t.set('room', 1);
    t.notifier.close();
    t.set('room', 2);
    await sleep(INTERVAL * 2);
    assert.deepEqual(w.got, []);
  });

  it('sendCurrent writes the current values to one watcher at once and returns them', async () => {
    const t = setup();
    const w = new Watcher('w');
    t.set('a', 1, 2);
    const counts = await t.notifier.sendCurrent(w, ['a', 'b']);
    assert.deepEqual({ ...counts }, { a: { count: 1, connections: 2 }, b: { count: 0, connections: 0 } });
    // A topic named __proto__ is a key like any other (it set the result's prototype before).
    const odd = await t.notifier.sendCurrent(new Watcher('w2'), ['__proto__']);
    assert.deepEqual(Object.keys(odd), ['__proto__']);
    assert.equal(JSON.stringify(odd), '{"__proto__":{"count":0,"connections":0}}');
    assert.deepEqual(w.got, [
      { topic: 'a', count: 1, connections: 2 },
      { topic: 'b', count: 0, connections: 0 },
    ]);
    t.notifier.close();
  });
});
