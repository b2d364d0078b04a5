import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  call,
  closeAll,
  collectErrors,
  connect,
  next,
  sleep,
  startTestHerald,
  type TestHerald,
  until,
} from '../helpers.js';

interface Answer {
  ok: boolean;
  error?: { code: string; message: string; details?: { retryAfterMs?: number } };
}

async function metric(herald: TestHerald, name: string): Promise<number> {
  const text = await (await fetch(`${herald.url()}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

describe('client events over CLIENT_EVENT_RATE', () => {
  let herald: TestHerald;
  before(async () => {
    // 20 events per second on average, 10 at once; a connection is closed after 10 more refusals.
    herald = await startTestHerald({ clientEventRate: 20, clientEventBurst: 10 });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('answers rate_limited with retryAfterMs past the burst, and serves the connection again after the wait', async () => {
    const c = await connect(herald, 'shop', { clientId: 'eager' });
    try {
      // With the time each answer came back: a wait counts from the moment its event was handled.
      const at: number[] = [];
      const answers = await Promise.all(
        Array.from({ length: 14 }, (_, i) =>
          call<Answer>(c, 'subscribe', `t${i}`).then((a) => {
            at[i] = performance.now();
            return a;
          }),
        ),
      );
      const ok = answers.filter((a) => a.ok).length;
      const limited = answers.flatMap((a, i) => (a.error?.code === 'rate_limited' ? [i] : []));
      // The burst passes (one or two more may have come back while the events were being sent).
      assert.ok(ok >= 10 && ok <= 12, `ok ${ok}`);
      assert.equal(ok + limited.length, 14);
      // Each refused event is told a slot of its own, one interval (50 ms) after the one before: the slots
      // (when its answer came back plus its wait) are ~50 ms apart, whatever the time between the events'
      // arrivals (on a busy machine 30 ms and more, which the waits alone would show as closer slots).
      const waits = limited.map((i) => answers[i]?.error?.details?.retryAfterMs as number);
      const slots = limited.map((i, k) => (at[i] as number) + (waits[k] as number));
      waits.forEach((wait, k) => {
        assert.ok(typeof wait === 'number' && wait > 0 && wait <= 50 * (k + 1), `retryAfterMs ${waits}`);
        if (k > 0)
          assert.ok(
            (slots[k] as number) - (slots[k - 1] as number) >= 25,
            `retryAfterMs ${waits}, slots ${slots}`,
          );
        assert.match(answers[limited[k] as number]?.error?.message ?? '', /CLIENT_EVENT_RATE/);
      });
      // A refused subscribe did nothing; each sent again after its own wait works the first time.
      const again = await Promise.all(
        limited.map(async (i, k) => {
          await sleep((waits[k] as number) + 5);
          return call<Answer>(c, 'subscribe', `t${i}`);
        }),
      );
      assert.deepEqual(
        again.map((a) => a.ok),
        limited.map(() => true),
        `after ${waits} ms: ${JSON.stringify(again)}`,
      );
      assert.ok((await metric(herald, 'herald_client_events_refused_total')) >= 3);
      assert.ok(c.connected, 'a short burst does not close the connection');
    } finally {
      closeAll(c);
    }
  });

  it('does not slow down other connections, and tells a client without acks once a second', async () => {
    const flooder = await connect(herald, 'shop', { clientId: 'no-acks' });
    const other = await connect(herald, 'shop', { clientId: 'calm' });
    try {
      const errors = collectErrors(flooder);
      // 16 events without acks: 10 pass, 6 are refused, one `error` event tells it.
      for (let i = 0; i < 16; i++) flooder.emit('subscribe', `n${i}`);
      await until(() => errors.length > 0, 3000, 'an error event');
      await sleep(100);
      assert.equal(errors.length, 1);
      assert.equal(errors[0]?.code, 'rate_limited');
      assert.equal(errors[0]?.event, 'subscribe');
      // The other connection of the same client app is not limited by its neighbour.
      const answer = await call<Answer>(other, 'subscribe', 'calm-topic');
      assert.equal(answer.ok, true);
    } finally {
      closeAll(flooder, other);
    }
  });

  it('closes a connection that keeps flooding past the burst of refusals', async () => {
    const before = await metric(herald, 'herald_flooding_clients_closed_total');
    const c = await connect(herald, 'shop', { clientId: 'flooder' });
    try {
      const gone = next(c, 'disconnect', 5000);
      // 10 pass, then refusals: the 11th refusal (past the burst of 10) closes the connection.
      for (let i = 0; i < 40; i++) c.emit('subscribeCount', `f${i}`);
      const [reason] = await gone;
      assert.equal(reason, 'io server disconnect');
      assert.equal(await metric(herald, 'herald_flooding_clients_closed_total'), before + 1);
    } finally {
      closeAll(c);
    }
  });
});

describe('CLIENT_EVENT_RATE=0', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({ clientEventRate: 0, clientEventBurst: 1 });
  });
  after(async () => {
    await herald.cleanup();
  });

  it('does not limit client events', async () => {
    const c = await connect(herald, 'shop', { clientId: 'unlimited' });
    try {
      const answers = await Promise.all(
        Array.from({ length: 50 }, (_, i) => call<Answer>(c, 'subscribe', `u${i}`)),
      );
      assert.equal(answers.filter((a) => a.ok).length, 50);
    } finally {
      closeAll(c);
    }
  });
});
