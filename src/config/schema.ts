import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname as osHostname } from 'node:os';
import { createSecureContext } from 'node:tls';
import { z } from 'zod';
import { isPasswordHash } from '../inbound/passwords.js';
import { parseCidr } from '../policy/networks.js';
import { patternProblem } from '../routing/address-pattern.js';
import { graphUpstreamSchema } from '../upstreams/graph/config.js';
import { googleUpstreamSchema } from '../upstreams/google/config.js';
import { mailjetReferenceProblems, mailjetSmtpAsSmtp, mailjetSmtpUpstreamSchema, mailjetUpstreamSchema } from '../upstreams/mailjet/config.js';
import { m365ConnectorUpstreamSchema, m365SmtpUpstreamSchema } from '../upstreams/m365/config.js';
import { appReferenceProblems, microsoftSection } from '../upstreams/oauth/microsoft-config.js';
import { tagsSchema } from '../upstreams/tags.js';
import { adminSchema } from '../admin/config.js';
import { limitsSchema } from '../delivery/limits-config.js';
import { redisStateSchema } from '../state/config.js';
import { proxyProtocolSchema, rateLimitsSchema } from '../inbound/limits-config.js';
import { secret } from './secret.js';
import { byteSize, duration, intBetween, port } from './units.js';

const name = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, {
  error: 'expected a name of letters, digits, "_", "." or "-" (at most 64)',
});

const cidr = z.string().refine((v) => parseCidr(v) !== undefined, {
  error: 'expected an IPv4 or IPv6 network such as 192.168.1.0/24 or 2001:db8::/32',
});

/** An address pattern (see src/routing/address-pattern.ts): address, @domain, wildcard or /regex/. */
const addressPattern = z.string().superRefine((v, ctx) => {
  const problem = patternProblem(v);
  if (problem) ctx.addIssue({ code: 'custom', message: problem, input: v });
});
/** One pattern or a list of them; a list matches when any pattern does. */
const addressPatterns = z.union([addressPattern, z.array(addressPattern).min(1)]).transform((v) => (typeof v === 'string' ? [v] : v));
const names = z.union([name, z.array(name).min(1)]).transform((v) => (typeof v === 'string' ? [v] : v));
/** Any AUTH login, not the `name` rule: users are often called by an address (scan@contoso.com). */
const userName = z.string().min(1);
const userNames = z.union([userName, z.array(userName).min(1)]).transform((v) => (typeof v === 'string' ? [v] : v));
const cidrs = z.union([cidr, z.array(cidr).min(1)]).transform((v) => (typeof v === 'string' ? [v] : v));
const address = z.string().regex(/^[^@\s<>]+@[^@\s<>]+$/, { error: 'expected an e-mail address such as scans@contoso.com' });

/**
 * A central sender (seed 002's "sender name, sender address, reply to"): an address, or the address with the
 * display name the header From gets and the Reply-To added to messages that have none.
 */
const centralSenderFields = z.strictObject({
  address,
  /** Replaces the header From's display name; unset keeps the one the message had. */
  name: z
    .string()
    .min(1)
    .max(200)
    .regex(/^[^\x00-\x1f\x7f]*$/, { error: 'expected a display name on one line, without control characters' })
    .optional(),
  /** Added as Reply-To when the message has none, instead of the original From. */
  replyTo: address.optional(),
}, { error: 'expected an e-mail address, or { address, name, replyTo }' });
const centralSender = z.union([address, centralSenderFields]).transform((v) => (typeof v === 'string' ? { address: v } : v));
export type CentralSender = z.output<typeof centralSender>;

const testMode = z.strictObject({
  /** Every recipient is replaced by this address; the original ones are listed in a header. */
  to: address,
});

const tlsVersion = z.enum(['TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3']);

const listenerTls = z
  .strictObject({
    cert: z.string().min(1),
    key: z.string().min(1),
    /** Old printers often speak only TLS 1.0/1.1; lower this per listener, not globally. */
    minVersion: tlsVersion.default('TLSv1.2'),
    /** Implicit TLS from the first byte (port 465 style) instead of STARTTLS. */
    implicit: z.boolean().default(false),
  })
  .superRefine((tls, ctx) => {
    // The listener reads these files when it starts (and on reload); a file it cannot use must stop
    // check-config with its key path, not the start with a bare ENOENT or OpenSSL message.
    const problem = (key: 'cert' | 'key', message: string) => ctx.addIssue({ code: 'custom', path: [key], message });
    const cert = readTlsFile(tls.cert, 'certificate file', (m) => problem('cert', m));
    const key = readTlsFile(tls.key, 'key file', (m) => problem('key', m));
    const certError = cert && secureContextError({ cert });
    const keyError = key && secureContextError({ key });
    if (certError) problem('cert', `${tls.cert} is not a usable certificate: ${certError}`);
    if (keyError) problem('key', `${tls.key} is not a usable private key: ${keyError}`);
    const pairError = key && cert && !keyError && !certError && secureContextError({ key, cert });
    if (pairError) problem('key', `${tls.key} is not the key of the certificate ${tls.cert}: ${pairError}`);
  });

function readTlsFile(file: string, what: string, problem: (message: string) => void): Buffer | undefined {
  try {
    return readFileSync(file);
  } catch (err) {
    problem(`cannot read ${what} ${file}: ${(err as Error).message}`);
    return undefined;
  }
}

function secureContextError(options: { key?: Buffer; cert?: Buffer }): string | undefined {
  try {
    createSecureContext(options);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

const listener = z.strictObject({
  name,
  role: z.enum(['relay', 'submission'], { error: 'expected "relay" or "submission"' }),
  host: z.string().min(1).default('127.0.0.1'),
  port,
  /** Relay role: clients in these networks send without AUTH. Ignored by submission listeners. */
  networks: z.array(cidr).default([]),
  tls: listenerTls.optional(),
  /** Offer AUTH without TLS. Only for legacy devices on a trusted LAN: passwords cross the wire in clear. */
  allowInsecureAuth: z.boolean().default(false),
  maxMessageSize: byteSize.prefault(26_214_400),
  maxRecipients: intBetween(1, 100_000).default(100),
  maxClients: intBetween(1, 100_000).default(200),
  maxConnectionsPerIp: intBetween(1, 100_000).default(20),
  /** Messages and recipients per minute per client address and per user (450 4.7.1); none unless set. */
  rateLimits: rateLimitsSchema.optional(),
  /** Accept the PROXY protocol (v1) from these load balancers, so the real client address is used throughout. */
  proxyProtocol: proxyProtocolSchema.optional(),
  /** Failed AUTH attempts per client address within authFailureWindow before AUTH is refused. */
  maxAuthFailures: intBetween(1, 1000).default(5),
  authFailureWindow: duration.prefault('10m'),
  /** Upstream for mail from this listener that no route rule claims (beats routing.default). */
  upstream: name.optional(),
  /** Idle time allowed between commands and between data chunks. */
  socketTimeout: duration.prefault('5m'),
});

const user = z
  .strictObject({
    name: userName,
    /** Senders this user may use in MAIL FROM (and after rewriting); unset means any. */
    allowedSenders: addressPatterns.optional(),
    /** The user's own upstream: beats the route rules (user settings beat admin settings). */
    upstream: name.optional(),
    /** One central sender for everything this user sends (envelope and header From). */
    sender: centralSender.optional(),
    passwordHash: z.string().refine(isPasswordHash, {
      error: 'expected a hash printed by "smarthost hash-password" ($scrypt$ln=...)',
    }),
  });

const outboxUpstream = z.strictObject({
  type: z.literal('outbox'),
  dir: z.string().min(1),
  maxConcurrency: intBetween(1, 1000).default(4),
});

const smtpUpstream = z.strictObject({
  type: z.literal('smtp'),
  host: z.string().min(1),
  port: port.optional(),
  security: z.enum(['none', 'starttls', 'tls']).default('starttls'),
  auth: z
    .strictObject({
      method: z.enum(['PLAIN', 'LOGIN', 'CRAM-MD5']).default('PLAIN'),
      user: z.string().min(1),
      pass: secret,
    })
    .optional(),
  /** Off only for a known upstream with a self-signed certificate. */
  verifyCertificate: z.boolean().default(true),
  /** Name sent in EHLO; defaults to the relay's hostname. */
  ehloName: z.string().optional(),
  maxConnections: intBetween(1, 1000).default(5),
  timeout: duration.prefault('2m'),
});

const upstream = z.discriminatedUnion(
  'type',
  // Every upstream may carry send limits (src/delivery/limits-config.ts); the Microsoft ones have presets.
  [
    outboxUpstream.extend({ limits: limitsSchema.optional() }),
    smtpUpstream.extend({ limits: limitsSchema.optional() }),
    graphUpstreamSchema.extend({ limits: limitsSchema.optional() }),
    m365SmtpUpstreamSchema.extend({ limits: limitsSchema.optional() }),
    m365ConnectorUpstreamSchema.extend({ limits: limitsSchema.optional() }),
    mailjetUpstreamSchema.extend({ limits: limitsSchema.optional() }),
    mailjetSmtpUpstreamSchema.extend({ limits: limitsSchema.optional() }).transform(mailjetSmtpAsSmtp), // turns into an smtp upstream
    googleUpstreamSchema.extend({ limits: limitsSchema.optional() }),
  ],
  { error: 'expected "type" to be one of: outbox, smtp, graph, m365-smtp, m365-connector, mailjet, mailjet-smtp, google' },
);

const route = z.strictObject({
  name,
  /** Every criterion given must match (and); within a list, any entry may (or). An empty match catches all. */
  match: z
    .strictObject({
      sender: addressPatterns.optional(),
      headerFrom: addressPatterns.optional(),
      recipient: addressPatterns.optional(),
      user: userNames.optional(),
      network: cidrs.optional(),
      listener: names.optional(),
    })
    .prefault({}),
  upstream: name,
  /**
   * Tried in turn within the same attempt when the upstream is down, over a send limit or answers with a
   * temporary failure; a permanent (5xx) answer never fails over.
   */
  fallbacks: z.array(name).default([]),
  /** Force one central sender (envelope and header From) for everything this route carries. */
  sender: centralSender.optional(),
  testMode: testMode.optional(),
});

const rewriteRule = z.strictObject({
  /** The sender to rewrite; wildcards and regular expressions capture for $1..$9 in `to`. */
  match: addressPattern,
  to: z.string().min(3),
  /** Which sender is rewritten: the envelope (MAIL FROM), the header From, or both. */
  apply: z.enum(['both', 'envelope', 'header']).default('both'),
  /** Display name of the new header From: keep the original's, derive it from the original address, or set one. */
  displayName: z.union([z.enum(['keep', 'derive']), z.strictObject({ set: z.string() })]).default('keep'),
  /** Add Reply-To with the original From when the message has none, so answers still reach the device's owner. */
  replyToOriginal: z.boolean().default(true),
});

const senderRestriction = z.strictObject({
  /** Clients from these networks ... */
  network: cidrs,
  /** ... may only use these senders. */
  allowedSenders: addressPatterns,
});

const retry = z.strictObject({
  /** Postfix's minimal_backoff_time. */
  initialDelay: duration.prefault('5m'),
  /** Postfix's maximal_backoff_time. */
  maxDelay: duration.prefault('4000s'),
  /** Postfix's maximal_queue_lifetime: after this, pending recipients bounce. */
  lifetime: duration.prefault('5d'),
  /** Postfix's bounce_queue_lifetime: an undeliverable bounce is dropped after this. */
  bounceLifetime: duration.prefault('5d'),
});

export const configSchema = z
  .strictObject({
    /** Name used in the greeting, Received headers and bounces. */
    hostname: z.string().min(1).default(osHostname()),
    log: z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info') }).prefault({}),
    spool: z.strictObject({ dir: z.string().min(1) }),
    listeners: z.array(listener).min(1, { error: 'expected at least one listener' }),
    users: z.array(user).default([]),
    upstreams: z.record(name, upstream).refine((u) => Object.keys(u).length > 0, { error: 'expected at least one upstream' }),
    /** Entra ID app registrations for the Microsoft 365 upstreams (m365-smtp, graph). */
    microsoft: microsoftSection.prefault({}),
    /** A message tag header, carried to upstreams with a field for it and a bounded metric label (src/upstreams/tags.ts). */
    tags: tagsSchema.optional(),
    /** The admin HTTP listener: /metrics, /healthz, /readyz and the API behind the queue CLI (src/admin/config.ts). */
    admin: adminSchema.prefault({}),
    routing: z
      .strictObject({
        /** Ordered rules; the first that matches a recipient picks its upstream. */
        routes: z.array(route).default([]),
        /** The upstream for everything no rule matches. */
        default: name,
        /** Global test mode: every recipient of every route without its own is replaced by this address. */
        testMode: testMode.optional(),
      }),
    /** Sender alias rules, first match wins (like Postfix's sender_canonical_maps). */
    rewrite: z.array(rewriteRule).default([]),
    senderRestrictions: z.array(senderRestriction).default([]),
    /**
     * Small runtime state (suppression list, limit counters), kept with lowdb in dir. With redis, send-limit
     * counters, upstream down marks and inbound rate counters are shared by every instance on that Redis.
     */
    state: z.strictObject({ dir: z.string().min(1).default('./data/state'), redis: redisStateSchema.optional() }).prefault({}),
    suppression: z
      .strictObject({
        /** refuse: 550 5.7.1 at RCPT TO; drop: accept and silently never deliver. */
        action: z.enum(['refuse', 'drop']).default('refuse'),
        /** Add recipients that bounce with a permanent mailbox error (5.1.x) to the list. */
        addHardBounces: z.boolean().default(false),
      })
      .prefault({}),
    delivery: z
      .strictObject({
        retry: retry.prefault({}),
        /** Messages delivered at the same time, across all upstreams. */
        maxConcurrency: intBetween(1, 10_000).default(50),
        /** SIGTERM waits this long for SMTP sessions and deliveries in flight. */
        shutdownTimeout: duration.prefault('30s'),
      })
      .prefault({}),
  })
  .superRefine((config, ctx) => {
    for (const problem of appReferenceProblems(config)) ctx.addIssue({ code: 'custom', ...problem });
    for (const p of mailjetReferenceProblems(config.upstreams)) {
      ctx.addIssue({ code: 'custom', path: ['upstreams', p.upstream, 'smtpFallback'], message: p.message, input: p.input });
    }
    // Object.hasOwn, not `in`: "constructor" or "toString" must not pass as upstream names.
    if (!Object.hasOwn(config.upstreams, config.routing.default)) {
      const defined = Object.keys(config.upstreams);
      ctx.addIssue({
        code: 'custom',
        path: ['routing', 'default'],
        message: `names no upstream; ${defined.length > 0 ? `defined: ${defined.join(', ')}` : 'none is defined'}`,
        input: config.routing.default,
      });
    }
    const seen = new Map<string, number>();
    config.listeners.forEach((l, i) => {
      if (l.upstream !== undefined) checkUpstream(l.upstream, ['listeners', i, 'upstream']);
      const prev = seen.get(l.name);
      if (prev !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['listeners', i, 'name'], message: `duplicates listeners[${prev}].name`, input: l.name });
      }
      seen.set(l.name, i);
      const taken = config.listeners.slice(0, i).findIndex((other) => other.port === l.port && hostsOverlap(other.host, l.host));
      if (taken !== -1) addressTaken(['listeners', i, 'port'], l, `listeners[${taken}]`, config.listeners[taken]!);
    });
    if (config.admin.enabled && config.admin.port !== 0) {
      const taken = config.listeners.findIndex((l) => l.port === config.admin.port && hostsOverlap(l.host, config.admin.host));
      if (taken !== -1) addressTaken(['admin', 'port'], config.admin, `listeners[${taken}]`, config.listeners[taken]!);
    }
    const users = new Set<string>();
    config.users.forEach((u, i) => {
      if (users.has(u.name)) ctx.addIssue({ code: 'custom', path: ['users', i, 'name'], message: 'duplicate user name', input: u.name });
      users.add(u.name);
      if (u.upstream !== undefined) checkUpstream(u.upstream, ['users', i, 'upstream']);
    });
    const routes = new Set<string>();
    config.routing.routes.forEach((r, i) => {
      if (routes.has(r.name)) ctx.addIssue({ code: 'custom', path: ['routing', 'routes', i, 'name'], message: 'duplicate route name', input: r.name });
      routes.add(r.name);
      checkUpstream(r.upstream, ['routing', 'routes', i, 'upstream']);
      r.fallbacks.forEach((f, j) => checkUpstream(f, ['routing', 'routes', i, 'fallbacks', j]));
      const listenerNames = new Set(config.listeners.map((l) => l.name));
      r.match.listener?.forEach((l, j) => {
        if (!listenerNames.has(l)) ctx.addIssue({ code: 'custom', path: ['routing', 'routes', i, 'match', 'listener', j], message: 'names no listener', input: l });
      });
      r.match.user?.forEach((u, j) => {
        if (!users.has(u)) ctx.addIssue({ code: 'custom', path: ['routing', 'routes', i, 'match', 'user', j], message: 'names no user', input: u });
      });
    });

    function addressTaken(path: (string | number)[], socket: Binding, otherKey: string, other: Binding): void {
      ctx.addIssue({
        code: 'custom',
        path,
        message: `${hostPort(socket)} is already taken by ${otherKey}.host/.port (${hostPort(other)}): both cannot listen there (EADDRINUSE)`,
      });
    }

    function checkUpstream(upstream: string, path: (string | number)[]): void {
      if (!Object.hasOwn(config.upstreams, upstream)) {
        ctx.addIssue({ code: 'custom', path, message: `names no upstream; defined: ${Object.keys(config.upstreams).join(', ')}`, input: upstream });
      }
    }
  });

interface Binding {
  host: string;
  port: number;
}

/**
 * Whether two sockets listening on these hosts (on one port) collide: the same address, or a wildcard that
 * covers the other. "::" takes every IPv4 and IPv6 address (Node binds it dual-stack), "0.0.0.0" every IPv4
 * one. A host name is compared as written: whether "localhost" is 127.0.0.1 or ::1 is left to the start.
 */
function hostsOverlap(a: string, b: string): boolean {
  const [x, y] = [canonicalHost(a), canonicalHost(b)];
  if (x === y || x === '::' || y === '::') return true;
  return (x === '0.0.0.0' && isIP(y) === 4) || (y === '0.0.0.0' && isIP(x) === 4);
}

/** One spelling per address: "0:0::0" is "::", "FE80::1" is "fe80::1". */
function canonicalHost(host: string): string {
  return isIP(host) === 6 ? new URL(`http://[${host}]/`).hostname.slice(1, -1) : host.toLowerCase();
}

function hostPort({ host, port }: Binding): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

export type Config = z.output<typeof configSchema>;
export type ListenerConfig = Config['listeners'][number];
export type UserConfig = Config['users'][number];
export type UpstreamConfig = Config['upstreams'][string];
export type SmtpUpstreamConfig = z.output<typeof smtpUpstream>;
export type OutboxUpstreamConfig = z.output<typeof outboxUpstream>;
export type RetryConfig = z.output<typeof retry>;
export type RouteConfig = z.output<typeof route>;
export type RewriteRule = z.output<typeof rewriteRule>;
export type TestModeConfig = z.output<typeof testMode>;
