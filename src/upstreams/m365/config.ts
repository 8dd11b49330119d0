import { domainToASCII } from 'node:url';
import { z } from 'zod';
import { secret } from '../../config/secret.js';
import { duration, intBetween, port } from '../../config/units.js';

const appName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, { error: 'expected the name of an app registration under microsoft.apps' });
const mailboxAddress = z.string().regex(/^[^@\s<>]+@[^@\s<>]+$/, { error: 'expected "fromSender" or the address of the sending mailbox, such as scans@contoso.com' });
const ASCII_DOMAIN = /^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$/;
/** A domain as it goes on the wire: lower-case A-labels, so an IDN may be written either way (bücher.de, xn--bcher-kva.de). */
const domainName = z.string().transform((d, ctx) => {
  const ascii = domainToASCII(d);
  if (ASCII_DOMAIN.test(ascii)) return ascii;
  ctx.addIssue({ code: 'custom', message: 'expected a domain name such as contoso.com (or bücher.de)' });
  return z.NEVER;
});

/** `upstreams.<name>` with `type: m365-smtp`: Exchange Online SMTP AUTH client submission. */
export const m365SmtpUpstreamSchema = z
  .strictObject({
    type: z.literal('m365-smtp'),
    /** The app registration under microsoft.apps whose token (SMTP.SendAsApp) logs in with XOAUTH2. */
    app: appName.optional(),
    /** The mailbox that logs in, or fromSender: the (rewritten) envelope sender of each message. */
    mailbox: z.union([z.literal('fromSender'), mailboxAddress], { error: 'expected "fromSender" or the address of the sending mailbox, such as scans@contoso.com' }),
    /**
     * Basic auth (user + password) instead of an app. Microsoft disables Basic auth for SMTP AUTH client
     * submission by default at the end of December 2026; a warning is logged at start-up.
     */
    legacyBasicAuth: z.strictObject({ user: z.string().min(1), pass: secret }).optional(),
    host: z.string().min(1).default('smtp.office365.com'),
    port: port.default(587),
    /** Token scope; other clouds have their own (e.g. https://outlook.office365.us/.default for GCC High). */
    scope: z.string().min(1).default('https://outlook.office365.com/.default'),
    /** Exchange Online accepts at most 3 concurrent SMTP AUTH connections per mailbox. */
    maxConnectionsPerMailbox: intBetween(1, 100).default(3),
    /** Deliveries through this upstream at once, across mailboxes. */
    maxConnections: intBetween(1, 1000).default(10),
    /** Off only for a test server with a self-signed certificate. */
    verifyCertificate: z.boolean().default(true),
    ehloName: z.string().min(1).optional(),
    timeout: duration.prefault('2m'),
  })
  .superRefine((c, ctx) => {
    if ((c.app === undefined) === (c.legacyBasicAuth === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: [c.app === undefined ? 'app' : 'legacyBasicAuth'],
        message: c.app === undefined ? 'expected app (the name of an app registration under microsoft.apps), or legacyBasicAuth' : 'expected either app or legacyBasicAuth, not both',
      });
    }
    if (c.legacyBasicAuth && c.mailbox === 'fromSender') {
      ctx.addIssue({ code: 'custom', path: ['mailbox'], message: 'with legacyBasicAuth the mailbox is legacyBasicAuth.user: set mailbox to that address' });
    }
  });

/** `upstreams.<name>` with `type: m365-connector`: port 25 into the tenant's MX (connector relay or Direct Send). */
export const m365ConnectorUpstreamSchema = z
  .strictObject({
    type: z.literal('m365-connector'),
    /** connector: a partner inbound connector (static IP or certificate) accepts the mail for any recipient.
     *  directSend: no connector; only recipients in acceptedDomains (the tenant's own) can be reached. */
    mode: z.enum(['connector', 'directSend'], { error: 'expected "connector" or "directSend"' }).default('connector'),
    /** The tenant's domain: its MX host is derived (contoso.com -> contoso-com.mail.protection.outlook.com). */
    domain: domainName.optional(),
    /** The MX host, when it is not the one derived from domain. */
    host: z.string().min(1).optional(),
    port: port.default(25),
    /** The tenant's accepted domains; required for directSend, where only these recipients are delivered. */
    acceptedDomains: z.array(domainName).min(1).optional(),
    /** STARTTLS is required unless this is false. */
    requireTls: z.boolean().default(true),
    /** A client certificate for a certificate-based connector (its subject or SAN names the connector's TlsSenderCertificateName). */
    clientCertificate: z.strictObject({ cert: z.string().min(1), key: z.string().min(1) }).optional(),
    /** Off only for a test server with a self-signed certificate. */
    verifyCertificate: z.boolean().default(true),
    /** The name in EHLO; certificate-based connectors usually expect the certificate's name here. */
    ehloName: z.string().min(1).optional(),
    maxConnections: intBetween(1, 1000).default(5),
    timeout: duration.prefault('2m'),
  })
  .superRefine((c, ctx) => {
    if (c.domain === undefined && c.host === undefined) {
      ctx.addIssue({ code: 'custom', path: ['domain'], message: 'expected domain (the tenant\'s domain, e.g. contoso.com) or host (its MX host)' });
    }
    if (c.mode === 'directSend' && c.acceptedDomains === undefined) {
      ctx.addIssue({ code: 'custom', path: ['acceptedDomains'], message: 'directSend needs the tenant\'s accepted domains: only recipients there can be reached' });
    }
  });

export type M365SmtpUpstreamConfig = z.output<typeof m365SmtpUpstreamSchema>;
export type M365ConnectorUpstreamConfig = z.output<typeof m365ConnectorUpstreamSchema>;

/**
 * The mailbox that logs in for mail from `sender`, which Exchange counts its sending limits against:
 * legacyBasicAuth's user or the fixed mailbox, whoever the sender; with fromSender the sender ('' for a bounce).
 */
export function m365SmtpMailbox(config: { mailbox: string; legacyBasicAuth?: { user: string } | undefined }, sender: string): string {
  return config.legacyBasicAuth?.user ?? (config.mailbox === 'fromSender' ? sender : config.mailbox);
}
