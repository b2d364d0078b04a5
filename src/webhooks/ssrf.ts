import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';

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

/**
 * Resolves the host of `url` (every address) and throws SsrfError when any of them is blocked. Used
 * before each request; the connection itself also goes through `guardedLookup`, so a DNS answer that
 * changes between the check and the connection (rebinding) is refused too.
 */
export async function assertPublicUrl(url: URL): Promise<void> {
  const host = bareHost(url.hostname);
  if (isIP(host)) {
    if (isBlockedAddress(host)) throw new SsrfError(`notify URL host ${host} is a private or local address`);
    return;
  }
  const addresses = await new Promise<LookupAddress[]>((resolve, reject) => {
    dnsLookup(host, { all: true, verbatim: true }, (err, addrs) => (err ? reject(err) : resolve(addrs)));
  });
  const bad = addresses.find((a) => isBlockedAddress(a.address));
  if (bad)
    throw new SsrfError(`notify URL host ${host} resolves to ${bad.address}, a private or local address`);
}

/** A `net.connect` lookup that refuses blocked addresses at connection time. */
export const guardedLookup: LookupFunction = (hostname, options, callback) => {
  dnsLookup(hostname, { ...options, all: true, verbatim: true }, (err, addresses) => {
    if (err) {
      callback(err, '', 0);
      return;
    }
    const list = addresses as LookupAddress[];
    const bad = list.find((a) => isBlockedAddress(a.address));
    if (bad) {
      callback(new SsrfError(`${hostname} resolves to ${bad.address}, a private or local address`), '', 0);
      return;
    }
    if (options.all) {
      (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, list);
      return;
    }
    const first = list[0];
    if (!first) {
      callback(new Error(`${hostname} has no address`), '', 0);
      return;
    }
    callback(null, first.address, first.family);
  });
};

/** Literal private hosts refused at intake (names are checked at delivery time). */
export function literalHostBlocked(url: URL): boolean {
  const host = bareHost(url.hostname);
  return isIP(host) !== 0 && isBlockedAddress(host);
}
