import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import type { LookupAddress } from 'node:dns';
import { describe, it } from 'node:test';
import { AbortedByShutdown, Cancel, Sender, type SenderOptions } from '../../src/webhooks/sender.js';
import { type LookupAllFunction, SharedLookup, SsrfError } from '../../src/webhooks/ssrf.js';
import type { AttemptResult } from '../../src/webhooks/types.js';
import { Merchant, sleep, waitFor } from './helpers.js';

type Answer = (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void;

/** A fake `dns.lookup`: records each call and answers only when the test says so (or never). */
class FakeDns {
  readonly calls: { host: string; answer: Answer }[] = [];
  /** Hosts with a canned answer, given at once; every other host never answers. */
  readonly canned = new Map<string, LookupAddress[][]>();
  inFlight = 0;
  maxInFlight = 0;

  readonly lookup: LookupAllFunction = (host, options, callback) => {
    assert.deepEqual(options, { all: true, verbatim: true });
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    let answered = false;
    const answer: Answer = (err, addresses) => {
      if (answered) return;
      answered = true;
      this.inFlight--;
      callback(err, addresses);
    };
    this.calls.push({ host, answer });
    const queue = this.canned.get(host);
    const next = queue && (queue.length > 1 ? queue.shift() : queue[0]);
    if (next) setImmediate(() => answer(null, next));
  };

  hosts(): string[] {
    return this.calls.map((c) => c.host);
  }
}

function notFound(host: string): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(`getaddrinfo ENOTFOUND ${host}`);
  e.code = 'ENOTFOUND';
  return e;
}

function sender(dns: FakeDns, timeout: number, more: Partial<SenderOptions> = {}): Sender {
  return new Sender({
    timeout,
    allowPrivateNetworks: false,
    userAgent: 'test',
    connectionsPerOrigin: 2,
    lookup: dns.lookup,
    maxHostLookups: 2, // what a node runs with Node's default threadpool (UV_THREADPOOL_SIZE unset)
    ...more,
  });
}

const request = (url: string, cancel?: Cancel) => ({
  url,
  body: '{}',
  headers: {},
  requireSuccessBody: false,
  ...(cancel ? { cancel } : {}),
});

/** `p`, or a rejection once `ms` have passed (so a send stuck on DNS fails the test instead of hanging it). */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} still running after ${ms}ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

describe('webhook DNS lookup (SSRF guard)', () => {
  it('a DNS server that never answers ends the attempt at its deadline with a timeout', async () => {
    const dns = new FakeDns();
    const s = sender(dns, 300);
    try {
      const started = performance.now();
      const r = await within(s.send(request('http://hang.example.test/notify')), 300 + 2000, 'send');
      const took = performance.now() - started;
      assert.equal(r.outcome, 'timeout', r.error ?? '');
      assert.match(r.error ?? '', /no complete answer within 300ms \(DNS lookup of hang\.example\.test/);
      assert.ok(took < 300 + 2000, `took ${took}ms`);
      assert.deepEqual(dns.hosts(), ['hang.example.test']);
    } finally {
      await s.close();
    }
  });

  it('shutdown during the lookup aborts the attempt (AbortedByShutdown)', async () => {
    const dns = new FakeDns();
    const s = sender(dns, 60_000);
    try {
      const cancel = new Cancel();
      const p = s.send(request('http://hang.example.test/notify', cancel));
      p.catch(() => undefined);
      await waitFor(() => dns.calls.length === 1, 2000, 'the lookup');
      cancel.abort();
      await assert.rejects(within(p, 2000, 'send'), AbortedByShutdown);
    } finally {
      await s.close();
    }
  });

  it('20 concurrent sends to one never-answering host share one lookup', async () => {
    const dns = new FakeDns();
    const s = sender(dns, 400);
    try {
      const results = await within(
        Promise.all(Array.from({ length: 20 }, () => s.send(request('https://shared.example.test/n')))),
        400 + 2000,
        'sends',
      );
      assert.deepEqual(
        results.map((r) => r.outcome),
        Array(20).fill('timeout'),
      );
      assert.equal(dns.calls.length, 1);
    } finally {
      await s.close();
    }
  });

  it('looks up at most 2 hosts at once; the third starts when one ends', async () => {
    const dns = new FakeDns();
    const s = sender(dns, 60_000);
    try {
      const sends = ['a', 'b', 'c'].map((h) => s.send(request(`http://${h}.example.test/n`)));
      await waitFor(() => dns.calls.length === 2, 2000, 'two lookups');
      await sleep(50);
      assert.deepEqual(dns.hosts(), ['a.example.test', 'b.example.test'], 'the third host waits');
      assert.equal(dns.inFlight, 2);
      // A fourth caller for a host already being looked up joins it rather than queueing.
      const again = s.send(request('http://a.example.test/other'));
      await sleep(20);
      assert.equal(dns.calls.length, 2);

      dns.calls[0]?.answer(notFound('a.example.test'), []);
      await waitFor(() => dns.calls.length === 3, 2000, 'the third lookup');
      assert.equal(dns.calls[2]?.host, 'c.example.test');
      assert.equal(dns.maxInFlight, 2);

      const [a, a2] = await within(Promise.all([sends[0], again]), 2000, 'sends to a');
      assert.equal(a?.outcome, 'network_error');
      assert.match(a?.error ?? '', /ENOTFOUND/);
      assert.equal(a2?.outcome, 'network_error');
      dns.calls[1]?.answer(notFound('b.example.test'), []);
      dns.calls[2]?.answer(notFound('c.example.test'), []);
      const rest = await within(Promise.all(sends.slice(1)), 2000, 'sends to b and c');
      assert.deepEqual(
        rest.map((r) => r.outcome),
        ['network_error', 'network_error'],
      );
      assert.equal(dns.calls.length, 3);
    } finally {
      await s.close();
    }
  });

  it('a queued lookup whose callers all reached their deadline is dropped', async () => {
    const dns = new FakeDns();
    const s = sender(dns, 300);
    try {
      const results = await within(
        Promise.all(['a', 'b', 'c'].map((h) => s.send(request(`http://${h}.example.test/n`)))),
        300 + 2000,
        'sends',
      );
      assert.deepEqual(
        results.map((r) => r.outcome),
        ['timeout', 'timeout', 'timeout'],
      );
      // The slots free up later: nobody waits for c any more, so it is never looked up.
      dns.calls[0]?.answer(notFound('a.example.test'), []);
      dns.calls[1]?.answer(notFound('b.example.test'), []);
      await sleep(20);
      assert.deepEqual(dns.hosts(), ['a.example.test', 'b.example.test']);
    } finally {
      await s.close();
    }
  });

  it('a host that resolves to a private address is refused', async () => {
    const dns = new FakeDns();
    dns.canned.set('inside.example.test', [
      [
        { address: '203.0.113.7', family: 4 },
        { address: '10.1.2.3', family: 4 },
      ],
    ]);
    const s = sender(dns, 2000);
    try {
      const r = await within(s.send(request('http://inside.example.test/n')), 4000, 'send');
      assert.equal(r.outcome, 'refused');
      assert.match(r.error ?? '', /resolves to 10\.1\.2\.3/);
    } finally {
      await s.close();
    }
  });

  it('a host that changes to a private address by connection time is refused (the lookup at connect)', async () => {
    const merchant = await Merchant.start();
    const dns = new FakeDns();
    // Public at the check before the request, loopback (where the merchant listens) when connecting.
    dns.canned.set('rebind.example.test', [
      [{ address: '203.0.113.7', family: 4 }],
      [{ address: '127.0.0.1', family: 4 }],
    ]);
    const s = sender(dns, 2000);
    try {
      const port = new URL(merchant.url()).port;
      const r: AttemptResult = await within(
        s.send(request(`http://rebind.example.test:${port}/n`)),
        4000,
        'send',
      );
      assert.equal(r.outcome, 'refused', r.error ?? '');
      assert.match(r.error ?? '', /resolves to 127\.0\.0\.1/);
      assert.equal(dns.calls.length, 2, 'the connection looked the host up again (no cached answer)');
      assert.equal(merchant.received.length, 0);
    } finally {
      await s.close();
      await merchant.close();
    }
  });
});

describe('SharedLookup', () => {
  const both: LookupAddress[] = [
    { address: '2001:db8::1', family: 6 },
    { address: '203.0.113.7', family: 4 },
  ];

  function guarded(shared: SharedLookup, options: Parameters<SharedLookup['guardedLookup']>[1]) {
    return new Promise<{ err: Error | null; address: unknown; family: number | undefined }>((resolve) => {
      shared.guardedLookup('h.example.test', options, (err, address, family) =>
        resolve({ err, address, family }),
      );
    });
  }

  it('gives the connection the family it asks for, from one shared answer', async () => {
    const dns = new FakeDns();
    dns.canned.set('h.example.test', [both]);
    const shared = new SharedLookup(dns.lookup);
    const [v4, v6, all, first] = await Promise.all([
      guarded(shared, { family: 4 }),
      guarded(shared, { family: 6 }),
      guarded(shared, { all: true }),
      guarded(shared, {}),
    ]);
    assert.equal(dns.calls.length, 1);
    assert.deepEqual([v4.address, v4.family], ['203.0.113.7', 4]);
    assert.deepEqual([v6.address, v6.family], ['2001:db8::1', 6]);
    assert.deepEqual(all.address, both);
    assert.deepEqual([first.address, first.family], ['2001:db8::1', 6]);
    const v4Only = new FakeDns();
    v4Only.canned.set('h.example.test', [[{ address: '203.0.113.7', family: 4 }]]);
    const none = await guarded(new SharedLookup(v4Only.lookup), { family: 6 });
    assert.equal((none.err as NodeJS.ErrnoException | null)?.code, 'ENOTFOUND');
  });

  it('keeps no answer once a lookup has ended, and refuses a private one at connection time', async () => {
    const dns = new FakeDns();
    dns.canned.set('h.example.test', [
      [{ address: '203.0.113.7', family: 4 }],
      [{ address: '192.168.1.1', family: 4 }],
    ]);
    const shared = new SharedLookup(dns.lookup);
    const a = await guarded(shared, { all: true });
    assert.equal(a.err, null);
    const b = await guarded(shared, { all: true });
    assert.ok(b.err instanceof SsrfError, String(b.err));
    assert.equal(dns.calls.length, 2);
  });

  it('looks up as many hosts at once as UV_THREADPOOL_SIZE leaves beyond 4 threads, at least 2', () => {
    const max = (size: string | undefined) =>
      execFileSync(
        process.execPath,
        [
          '--import',
          'tsx',
          '--input-type=module',
          '-e',
          "const m = await import('./src/webhooks/ssrf.ts'); console.log(m.MAX_HOST_LOOKUPS)",
        ],
        { env: { ...process.env, UV_THREADPOOL_SIZE: size ?? '' }, encoding: 'utf8' },
      ).trim();
    assert.equal(max(undefined), '2', "Node's default threadpool");
    assert.equal(max('16'), '12', 'what npm start and the Dockerfile set');
    assert.equal(max('nonsense'), '2');
  });

  it('counts the hostnames being looked up and those waiting for a slot', async () => {
    const dns = new FakeDns();
    const shared = new SharedLookup(dns.lookup, 2);
    const stops = ['a', 'b', 'c'].map((h) => shared.lookup(`${h}.example.test`, () => undefined));
    assert.deepEqual(shared.counts, { running: 2, queued: 1 });
    dns.calls[0]?.answer(null, [{ address: '203.0.113.7', family: 4 }]);
    await waitFor(() => dns.calls.length === 3, 2000, 'the third lookup');
    assert.deepEqual(shared.counts, { running: 2, queued: 0 });
    for (const stop of stops) stop();
  });
});
