/**
 * The cluster's batch publisher: one script call per event-loop turn, and while a call is in flight the
 * notifications of later turns gather and leave together when it is answered, in order. A fake Redis
 * (the script's EVALSHA answered when the test says so).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import { BatchPublisher, type OutgoingNotification, type PublishOutcome } from '../../src/bus/publisher.js';

interface Call {
  args: (string | number)[];
  answer: (reply: unknown) => void;
  fail: (err: Error) => void;
}

function fakeRedis(): { redis: Redis; calls: Call[] } {
  const calls: Call[] = [];
  // The publisher sends its script call as one command (EVALSHA sha numkeys ...args).
  const redis = {
    sendCommand: (command: { name: string; args: string[] }) => {
      assert.equal(command.name, 'evalsha');
      assert.equal(command.args[1], '0');
      return new Promise((answer, fail) => calls.push({ args: command.args.slice(2), answer, fail }));
    },
  } as unknown as Redis;
  return { redis, calls };
}

const item = (i: number): OutgoingNotification => ({
  mode: 'app',
  channel: 'p:app:a',
  onlinePrefix: 'p:pm:a|__online|',
  head: `{"v":1,"t":"notify","node":"n1","n":{"id":"${i}"`,
  base: '',
  entry: '',
  triples: [],
  users: [],
});

/** The message heads a call carried, in order. */
const heads = (c: Call | undefined) =>
  (c?.args ?? []).filter((a) => String(a).startsWith('{"v":1,"t":"notify"'));
const turn = () => new Promise((r) => setImmediate(r));
const publisherOn = (redis: Redis, lingerMs = 0) =>
  new BatchPublisher({
    redis,
    nodesKey: 'p:nodes',
    nodePrefix: 'p:node:',
    nodeId: 'n1',
    presenceTtlMs: 1,
    lingerMs,
  });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ids = (c: Call | undefined) => heads(c).map((h) => JSON.parse(`${String(h)}}}`).n.id as string);

describe('BatchPublisher', () => {
  it('gathers what is published while a call is in flight into the next call, in order', async () => {
    const { redis, calls } = fakeRedis();
    const pub = publisherOn(redis);
    const results: Promise<PublishOutcome>[] = [];
    results.push(pub.publish(item(0)), pub.publish(item(1)));
    await turn();
    assert.equal(calls.length, 1, 'one call for the first turn');
    assert.equal(heads(calls[0]).length, 2);
    for (let i = 2; i < 8; i++) {
      results.push(pub.publish(item(i)));
      await turn();
    }
    assert.equal(calls.length, 1, 'nothing leaves while the first call is in flight');
    calls[0]?.answer([0, 0]);
    await turn();
    await turn();
    assert.equal(calls.length, 2, 'what gathered leaves in one call');
    assert.deepEqual(
      heads(calls[1]).map((h) => JSON.parse(`${String(h)}}}`).n.id),
      ['2', '3', '4', '5', '6', '7'],
    );
    calls[1]?.answer([1, 0, 0, 0, 0, 0]);
    const out = await Promise.all(results);
    assert.deepEqual(
      out.map((o) => o.routedNodes),
      [0, 0, 1, 0, 0, 0, 0, 0],
    );
    assert.deepEqual(pub.stats, { calls: 2, notifications: 8 });
  });

  it('a lone notification leaves at once, and a failed call does not hold back the next', async () => {
    const { redis, calls } = fakeRedis();
    const pub = publisherOn(redis);
    const first = pub.publish(item(0));
    await turn();
    assert.equal(calls.length, 1);
    const second = pub.publish(item(1));
    await turn();
    calls[0]?.fail(new Error('redis away'));
    await assert.rejects(first, /redis away/);
    await turn();
    assert.equal(calls.length, 2, 'the gathered notification is sent after the failure');
    calls[1]?.answer([0]);
    assert.equal((await second).routedNodes, 0);
  });

  it('a full batch leaves at once even while a call is in flight', async () => {
    const { redis, calls } = fakeRedis();
    const pub = publisherOn(redis);
    void pub.publish(item(-1)).catch(() => undefined);
    await turn();
    assert.equal(calls.length, 1);
    for (let i = 0; i < 256; i++) void pub.publish(item(i)).catch(() => undefined);
    assert.equal(calls.length, 2, 'the 256th notification sends the batch');
    assert.equal(heads(calls[1]).length, 256);
  });

  describe('lingering (CLUSTER_PUBLISH_LINGER)', () => {
    it('a lone notification still leaves at once', async () => {
      const { redis, calls } = fakeRedis();
      const pub = publisherOn(redis, 200);
      void pub.publish(item(0));
      await turn();
      assert.equal(calls.length, 1);
    });

    it('what gathered during a call waits for more, then leaves in one call, in order', async () => {
      const { redis, calls } = fakeRedis();
      const pub = publisherOn(redis, 60);
      const results = [pub.publish(item(0))];
      await turn();
      assert.equal(calls.length, 1);
      results.push(pub.publish(item(1)), pub.publish(item(2)));
      calls[0]?.answer([0]);
      await turn();
      await turn();
      assert.equal(calls.length, 1, 'the two gathered during the call linger');
      results.push(pub.publish(item(3)));
      await turn();
      assert.equal(calls.length, 1, 'a notification published while they linger joins them');
      await sleep(100);
      assert.equal(calls.length, 2, 'they leave once the linger is over');
      assert.deepEqual(ids(calls[1]), ['1', '2', '3']);
      calls[1]?.answer([0, 0, 0]);
      assert.equal((await Promise.all(results)).length, 4);
      assert.deepEqual(pub.stats, { calls: 2, notifications: 4 });
    });

    it('counts the linger from the first that gathered: after a slow call they leave at once', async () => {
      const { redis, calls } = fakeRedis();
      const pub = publisherOn(redis, 30);
      void pub.publish(item(0));
      await turn();
      void pub.publish(item(1));
      await sleep(50);
      calls[0]?.answer([0]);
      await turn();
      await turn();
      assert.equal(calls.length, 2);
      assert.deepEqual(ids(calls[1]), ['1']);
    });

    it('enough gathered leaves at once', async () => {
      const { redis, calls } = fakeRedis();
      const pub = publisherOn(redis, 10_000);
      void pub.publish(item(-1));
      await turn();
      for (let i = 0; i < 32; i++) void pub.publish(item(i));
      calls[0]?.answer([0]);
      await turn();
      await turn();
      assert.equal(calls.length, 2);
      assert.equal(heads(calls[1]).length, 32);
    });

    it('a batch that fills while lingering leaves at once, and the linger sends nothing after it', async () => {
      const { redis, calls } = fakeRedis();
      const pub = publisherOn(redis, 40);
      void pub.publish(item(-1));
      await turn();
      void pub.publish(item(0));
      calls[0]?.answer([0]);
      await turn();
      await turn();
      assert.equal(calls.length, 1, 'lingering');
      for (let i = 1; i < 256; i++) void pub.publish(item(i));
      assert.equal(calls.length, 2, 'the 256th sends the batch');
      assert.equal(heads(calls[1]).length, 256);
      await sleep(80);
      assert.equal(calls.length, 2, 'no empty call when the linger would have ended');
      void pub.publish(item(256));
      await turn();
      assert.equal(calls.length, 2, 'one call in flight: the next waits for it');
      calls[1]?.answer(new Array(256).fill(0));
      await sleep(80);
      assert.equal(calls.length, 3);
      assert.deepEqual(ids(calls[2]), ['256']);
    });
  });
});
