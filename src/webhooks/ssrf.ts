import { ADDRCONFIG, lookup as dnsLookup, type LookupAddress, type LookupOptions, V4MAPPED } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import { networkInterfaces } from 'node:os';

/**
 * Addresses a notify URL may not reach unless WEBHOOK_ALLOW_PRIVATE_NETWORKS=true: loopback,
 * private (RFC 1918), shared (CGNAT), link-local, unique-local, unspecified, multicast and reserved.
 */
const BLOCKED = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  BLOCKED.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 128],
  ['::1', 128],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const) {
  BLOCKED.addSubnet(net, prefix, 'ipv6');
}

/** True when `address` (IPv4 or IPv6 text) is one a webhook must not reach. */
export function isBlockedAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return BLOCKED.check(address, 'ipv4');
  if (family === 6) {
    const lower = address.toLowerCase();
    // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible addresses: judge the embedded IPv4 address.
    const mapped = /^(?:::ffff:|::)(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
    if (mapped?.[1]) return BLOCKED.check(mapped[1], 'ipv4');
    const hexMapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(lower);
    if (hexMapped?.[1] && hexMapped[2]) {
      const hi = Number.parseInt(hexMapped[1], 16);
      const lo = Number.parseInt(hexMapped[2], 16);
      return BLOCKED.check(`${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`, 'ipv4');
    }
    return BLOCKED.check(address, 'ipv6');
  }
  return true;
}

export class SsrfError extends Error {
  readonly code = 'ERR_WEBHOOK_SSRF';
  constructor(message: string) {
    super(message);
    this.name = 'SsrfError';
  }
}

/** Strips the brackets of an IPv6 URL host. */
function bareHost(hostname: string): string {
  return hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
}

/** The addresses of a host, or the lookup's error. */
type AddressesCallback = (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void;

/**
 * The `dns.lookup` the shared lookup calls, always with `{ all: true, verbatim: true }`. A seam for tests
 * (a DNS server that never answers); the default is `dns.lookup`.
 */
export type LookupAllFunction = (
  hostname: string,
  options: { all: true; verbatim: true },
  callback: AddressesCallback,
) => void;

/** libuv's threadpool size: `UV_THREADPOOL_SIZE` (npm start and the Dockerfile set 16), else 4. */
const THREADPOOL_SIZE = Math.min(
  1024,
  Math.max(1, Number.parseInt(process.env.UV_THREADPOOL_SIZE ?? '', 10) || 4),
);

/**
 * Hostnames looked up at once. Each `dns.lookup` holds one of libuv's threadpool threads until getaddrinfo
 * answers or gives up, which can take minutes for a host whose DNS server never answers; 4 threads are
 * left for the node (fs, zlib, crypto), at least 2 lookups run. With the default 16 threads, 12 hosts
 * whose DNS hangs are needed before other merchants' lookups wait; with Node's 4, only 2.
 */
export const MAX_HOST_LOOKUPS = Math.max(2, THREADPOOL_SIZE - 4);

interface HostLookup {
  host: string;
  waiters: Set<AddressesCallback>;
  started: boolean;
}

/**
 * The one way webhooks look up a host: concurrent callers for one hostname share one in-flight
 * `dns.lookup` (so a host whose DNS server never answers holds at most one thread), at most
 * MAX_HOST_LOOKUPS hostnames are looked up at once and the others wait their turn in order. Nothing is
 * kept after a lookup ends: the next caller gets a fresh answer (the connection-time check against DNS
 * rebinding relies on it). A caller may stop waiting (its deadline); the lookup goes on for the others,
 * and a queued lookup that nobody waits for any more is dropped.
 */
export class SharedLookup {
  private readonly hosts = new Map<string, HostLookup>();
  /** Lookups waiting for a slot, in order (a Set: O(1) removal of one nobody waits for). */
  private readonly queue = new Set<HostLookup>();
  private running = 0;

  /** Hostnames being looked up, and waiting for a slot (herald_webhook_dns_lookups). */
  get counts(): { running: number; queued: number } {
    return { running: this.running, queued: this.queue.size };
  }

  constructor(
    private readonly lookupAll: LookupAllFunction = dnsLookup as unknown as LookupAllFunction,
    private readonly max = MAX_HOST_LOOKUPS,
  ) {}

  /** Calls `callback` once with every address of `hostname`; the returned function stops waiting. */
  lookup(hostname: string, callback: AddressesCallback): () => void {
    let entry = this.hosts.get(hostname);
    const created = !entry;
    if (!entry) {
      entry = { host: hostname, waiters: new Set(), started: false };
      this.hosts.set(hostname, entry);
      this.queue.add(entry);
    }
    // A fresh function per caller: the same callback twice still means two waiters.
    const waiter: AddressesCallback = (err, addresses) => callback(err, addresses);
    entry.waiters.add(waiter);
    if (created) this.pump();
    const e = entry;
    return () => {
      if (!e.waiters.delete(waiter) || e.started || e.waiters.size > 0) return;
      this.queue.delete(e);
      if (this.hosts.get(e.host) === e) this.hosts.delete(e.host);
    };
  }

  private pump(): void {
    while (this.running < this.max) {
      const next = this.queue.values().next();
      if (next.done) return;
      this.start(next.value);
    }
  }

  private start(entry: HostLookup): void {
    this.queue.delete(entry);
    entry.started = true;
    this.running++;
    let done = false;
    const finish: AddressesCallback = (err, addresses) => {
      if (done) return;
      done = true;
      this.running--;
      if (this.hosts.get(entry.host) === entry) this.hosts.delete(entry.host);
      const waiters = [...entry.waiters];
      entry.waiters.clear();
      this.pump();
      for (const w of waiters) {
        try {
          w(err, addresses);
        } catch (thrown) {
          // One waiter's bug must not keep the answer from the others; it still surfaces as uncaught.
          process.nextTick(() => {
            throw thrown;
          });
        }
      }
    };
    try {
      this.lookupAll(entry.host, { all: true, verbatim: true }, (err, addresses) =>
        finish(err, err ? [] : addresses),
      );
    } catch (err) {
      finish(err as NodeJS.ErrnoException, []);
    }
  }

  /**
   * Resolves the host of `url` (every address) and calls back with SsrfError when any of them is blocked,
   * or with the lookup's error (at once for an IP address). Returns a function that stops waiting.
   */
  checkUrl(url: URL, callback: (err: Error | null) => void): () => void {
    const host = bareHost(url.hostname);
    if (isIP(host)) {
      callback(
        isBlockedAddress(host)
          ? new SsrfError(`notify URL host ${host} is a private or local address`)
          : null,
      );
      return () => undefined;
    }
    return this.lookup(host, (err, addresses) => {
      if (err) {
        callback(err);
        return;
      }
      const bad = addresses.find((a) => isBlockedAddress(a.address));
      callback(
        bad
          ? new SsrfError(`notify URL host ${host} resolves to ${bad.address}, a private or local address`)
          : null,
      );
    });
  }

  /** A `net.connect` lookup that refuses blocked addresses at connection time. */
  readonly guardedLookup: LookupFunction = (hostname, options, callback) => {
    this.lookup(hostname, (err, addresses) => {
      if (err) {
        callback(err, '', 0);
        return;
      }
      const list = forOptions(addresses, options);
      const bad = list.find((a) => isBlockedAddress(a.address));
      if (bad) {
        callback(new SsrfError(`${hostname} resolves to ${bad.address}, a private or local address`), '', 0);
        return;
      }
      const first = list[0];
      if (!first) {
        const e: NodeJS.ErrnoException = new Error(`getaddrinfo ENOTFOUND ${hostname}`);
        e.code = 'ENOTFOUND';
        e.syscall = 'getaddrinfo';
        callback(e, '', 0);
        return;
      }
      if (options.all) {
        (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, list);
        return;
      }
      callback(null, first.address, first.family);
    });
  };
}

/** Whether the node has an address of each family other than loopback (getaddrinfo's AI_ADDRCONFIG). */
function configuredFamilies(): { v4: boolean; v6: boolean } {
  let v4 = false;
  let v6 = false;
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.family === 'IPv4' && a.address !== '127.0.0.1') v4 = true;
      if (a.family === 'IPv6' && a.address !== '::1') v6 = true;
    }
  }
  return { v4, v6 };
}

/**
 * The shared `{ all: true }` answer as `dns.lookup(host, options)` would have given it: only the asked
 * family (`4`/`'IPv4'`, `6`/`'IPv6'`; with V4MAPPED, IPv4 addresses as IPv4-mapped IPv6 when there is no
 * IPv6 one) and, with ADDRCONFIG (what `net.connect` passes), only families the node has an address of.
 */
function forOptions(addresses: LookupAddress[], options: LookupOptions): LookupAddress[] {
  const f = options.family;
  const family = f === 4 || f === 'IPv4' ? 4 : f === 6 || f === 'IPv6' ? 6 : 0;
  const hints = options.hints ?? 0;
  if (family === 4) return addresses.filter((a) => a.family === 4);
  if (family === 6) {
    const v6 = addresses.filter((a) => a.family === 6);
    if (v6.length > 0 || (hints & V4MAPPED) === 0) return v6;
    return addresses
      .filter((a) => a.family === 4)
      .map((a) => ({ address: `::ffff:${a.address}`, family: 6 }));
  }
  if ((hints & ADDRCONFIG) !== 0) {
    const { v4, v6 } = configuredFamilies();
    // Like glibc: with neither family configured, nothing is filtered.
    if (v4 && !v6) return addresses.filter((a) => a.family === 4);
    if (v6 && !v4) return addresses.filter((a) => a.family === 6);
  }
  return addresses;
}

/** The lookup of every sender that is not given its own (one per process, so the cap holds node-wide). */
const sharedLookup = new SharedLookup();

/** The process-wide lookup's hostnames being looked up and waiting (for metrics). */
export function dnsLookupCounts(): { running: number; queued: number } {
  return sharedLookup.counts;
}

/**
 * Resolves the host of `url` (every address) and rejects with SsrfError when any of them is blocked.
 * The check before each request (the sender uses `checkUrl`, which it can stop waiting for at its
 * deadline); the connection itself also goes through `guardedLookup`, so a DNS answer that
 * changes between the check and the connection (rebinding) is refused too.
 */
export function assertPublicUrl(url: URL, lookup: SharedLookup = sharedLookup): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    lookup.checkUrl(url, (err) => (err ? reject(err) : resolve()));
  });
}

/** A `net.connect` lookup that refuses blocked addresses at connection time (the process-wide lookup). */
export const guardedLookup: LookupFunction = sharedLookup.guardedLookup;

/** The process-wide lookup, or one of its own for a test's lookup function. */
export function sharedLookupFor(lookupAll?: LookupAllFunction, max?: number): SharedLookup {
  return lookupAll ? new SharedLookup(lookupAll, max) : sharedLookup;
}

/** Literal private hosts refused at intake (names are checked at delivery time). */
export function literalHostBlocked(url: URL): boolean {
  const host = bareHost(url.hostname);
  return isIP(host) !== 0 && isBlockedAddress(host);
}
