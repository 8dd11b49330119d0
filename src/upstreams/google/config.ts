/**
 * `type: google`: Gmail / Google Workspace through smtp.gmail.com with SASL XOAUTH2
 * (https://developers.google.com/workspace/gmail/imap/xoauth2-protocol), the access tokens coming from a
 * service account with domain-wide delegation that impersonates the sending mailbox
 * (https://developers.google.com/identity/protocols/oauth2/service-account).
 */
import { createPrivateKey } from 'node:crypto';
import { z } from 'zod';
import { Secret, secret } from '../../config/secret.js';
import { duration, httpsUrl, intBetween, port } from '../../config/units.js';

export const GOOGLE_TOKEN_URL = 'https://oauth2.googleapis.com/token';
/** "The scope for IMAP, POP, and SMTP access is https://mail.google.com/" (XOAUTH2 protocol page). */
export const GMAIL_SCOPE = 'https://mail.google.com/';
export const GMAIL_SMTP_HOST = 'smtp.gmail.com';

const tokenUrl = httpsUrl(GOOGLE_TOKEN_URL);

const address = z.string().regex(/^[^@\s<>/?#]+@[^@\s<>/?#]+$/, { error: 'expected an e-mail address such as scans@contoso.com' });

export interface ServiceAccount {
  clientEmail: string;
  /** The key's ID (private_key_id), sent as the JWT's kid. */
  keyId?: string;
  privateKey: Secret;
}

/** The service account's JSON key file as downloaded from the Cloud console, given as a secret. */
const serviceAccount = secret.transform((json, ctx): ServiceAccount => {
  let parsed: { client_email?: unknown; private_key?: unknown; private_key_id?: unknown; type?: unknown };
  try {
    parsed = JSON.parse(json.reveal()) as typeof parsed;
  } catch {
    ctx.addIssue({ code: 'custom', message: 'expected the JSON key file of a service account' });
    return z.NEVER;
  }
  if (parsed.type !== undefined && parsed.type !== 'service_account') {
    ctx.addIssue({ code: 'custom', message: `expected a key file of type "service_account", got ${JSON.stringify(parsed.type)}` });
    return z.NEVER;
  }
  if (typeof parsed.client_email !== 'string' || typeof parsed.private_key !== 'string') {
    ctx.addIssue({ code: 'custom', message: 'the service account key file has no client_email or private_key' });
    return z.NEVER;
  }
  try {
    createPrivateKey(parsed.private_key);
  } catch {
    ctx.addIssue({ code: 'custom', message: 'the private_key of the service account key file is not a PEM private key' });
    return z.NEVER;
  }
  return {
    clientEmail: parsed.client_email,
    ...(typeof parsed.private_key_id === 'string' ? { keyId: parsed.private_key_id } : {}),
    privateKey: new Secret(parsed.private_key),
  };
});

export const googleUpstreamSchema = z.strictObject({
  type: z.literal('google'),
  /** The key file: serviceAccount: { file: /etc/smarthost/google-service-account.json } (or env, or inline). */
  serviceAccount,
  /** The mailbox to impersonate (and send as), or fromSender: the message's envelope sender. */
  mailbox: z.union([z.literal('fromSender'), address], {
    error: 'expected "fromSender" or the address of the sending mailbox, such as scans@contoso.com',
  }),
  /** With mailbox fromSender: the mailbox that sends smarthost's own bounces (null sender). */
  bounceMailbox: address.optional(),
  /** Google's token endpoint; also the JWT's aud. The tests point it at a local fake. */
  tokenUrl: tokenUrl.default(GOOGLE_TOKEN_URL),
  /** A cached token is replaced this long before it expires. */
  refreshAhead: duration.prefault('5m'),
  host: z.string().min(1).default(GMAIL_SMTP_HOST),
  port: port.optional(),
  security: z.enum(['none', 'starttls', 'tls']).default('starttls'),
  verifyCertificate: z.boolean().default(true),
  ehloName: z.string().optional(),
  /** Connections per mailbox; also the upstream's concurrent deliveries. */
  maxConnections: intBetween(1, 1000).default(5),
  /** SMTP and token requests may each take this long. */
  timeout: duration.prefault('2m'),
});

export type GoogleUpstreamConfig = z.output<typeof googleUpstreamSchema>;

/**
 * The mailbox impersonated for mail from `sender`, which Gmail counts its sending limits against: the fixed
 * one, or the sender (fromSender), a bounce going as bounceMailbox ('' without one).
 */
export function googleMailbox(config: Pick<GoogleUpstreamConfig, 'mailbox' | 'bounceMailbox'>, sender: string): string {
  if (config.mailbox !== 'fromSender') return config.mailbox;
  return sender !== '' ? sender : (config.bounceMailbox ?? '');
}
