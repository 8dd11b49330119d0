import { BlockList, isIP } from 'node:net';

/** Parses "192.0.2.0/24", "2001:db8::/32" or a bare address; undefined when malformed. */
export function parseCidr(text: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const [address = '', prefixText, extra] = text.trim().split('/');
  if (extra !== undefined) return undefined;
  const version = isIP(address);
  if (version === 0) return undefined;
  const max = version === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!/^\d{1,3}$/.test(prefixText ?? String(max)) || prefix > max) return undefined;
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

/** Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d; allow-lists are written in IPv4 form. */
export function normalizeIp(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped ? mapped[1]! : address;
}

/** A set of CIDR networks, answering whether a client address falls in any of them. */
export class NetworkList {
  readonly #list = new BlockList();
  readonly cidrs: readonly string[];

  constructor(cidrs: readonly string[]) {
    this.cidrs = cidrs;
    for (const cidr of cidrs) {
      const parsed = parseCidr(cidr);
      if (!parsed) throw new Error(`invalid network ${JSON.stringify(cidr)}`);
      this.#list.addSubnet(parsed.address, parsed.prefix, parsed.family);
    }
  }

  contains(address: string): boolean {
    const ip = normalizeIp(address);
    const version = isIP(ip);
    if (version === 0) return false;
    return this.#list.check(ip, version === 4 ? 'ipv4' : 'ipv6');
  }
}
