/**
 * A listener's inbound rate limits and PROXY protocol settings:
 *
 *   listeners:
 *     - name: relay
 *       rateLimits:
 *         perClient: { messagesPerMinute: 60, recipientsPerMinute: 300 }
 *         perUser:   { messagesPerMinute: 120, recipientsPerMinute: 1000 }
 *         exempt: [10.1.0.0/16]
 *       proxyProtocol: { from: [10.0.0.5] }
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { intBetween } from '../config/units.js';
import { parseCidr } from '../policy/networks.js';

const perMinute = intBetween(1, 1_000_000);

const rates = z.strictObject({
  /** MAIL FROM commands accepted per sliding minute; more get 450 4.7.1. */
  messagesPerMinute: perMinute.optional(),
  /** RCPT TO commands accepted per sliding minute; more get 450 4.7.1. */
  recipientsPerMinute: perMinute.optional(),
});

const cidr = z.string().refine((v) => parseCidr(v) !== undefined, {
  error: 'expected an IPv4 or IPv6 network such as 192.168.1.0/24 or 2001:db8::/32',
});

export const rateLimitsSchema = z.strictObject({
  /** Counted per client address (the PROXY protocol's address behind a load balancer). */
  perClient: rates.optional(),
  /** Counted per authenticated user, whichever address the user connects from. */
  perUser: rates.optional(),
  /** Clients in these networks are counted by none of this listener's limits, maxConnectionsPerIp included. */
  exempt: z.array(cidr).default([]),
});

/**
 * smtp-server compares the peer with each entry as an exact, normalised address (no networks), and treats "*"
 * as every peer: only plain IP addresses are taken, so a typo cannot trust the whole Internet.
 */
const balancer = z.string().refine((v) => isIP(v) !== 0, {
  error: 'expected the IP address of a load balancer such as 10.0.0.5 (single addresses, not networks)',
});

export const proxyProtocolSchema = z.strictObject({
  /** Peers that must open every connection with a PROXY protocol v1 header; everyone else speaks SMTP directly. */
  from: z.array(balancer).min(1, { error: 'expected at least one load balancer address' }),
});

export type RateLimitsConfig = z.output<typeof rateLimitsSchema>;
