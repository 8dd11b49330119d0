/**
 * Config of the two Mailjet upstreams:
 *
 *   type: mailjet        Send API v3.1 (https://dev.mailjet.com/email/guides/send-api-v31/)
 *   type: mailjet-smtp   the generic smtp upstream preset for Mailjet's SMTP relay, in-v3.mailjet.com:587 with
 *                        STARTTLS, the API key as user name and the secret key as password
 *                        (https://dev.mailjet.com/smtp-relay/configuration/). It parses into a plain `smtp`
 *                        upstream config, so everything downstream treats it as one.
 */
import { z } from 'zod';
import type { SmtpUpstreamConfig } from '../../config/schema.js';
import { secret } from '../../config/secret.js';
import { byteSize, duration, httpsUrl, intBetween, port } from '../../config/units.js';

export const MAILJET_API_URL = 'https://api.mailjet.com';
export const MAILJET_SMTP_HOST = 'in-v3.mailjet.com';
/** Send API v3.1 takes at most 50 messages per call (https://dev.mailjet.com/email/reference/send-emails/). */
export const MAILJET_MAX_MESSAGES_PER_CALL = 50;

/** The API keys travel with every request. */
const baseUrl = httpsUrl('https://api.mailjet.com');

const apiKey = z.string().regex(/^\S+$/, { error: 'expected the Mailjet API key (the public one)' });
const upstreamName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, { error: 'expected the name of an smtp or mailjet-smtp upstream' });

/** Mailjet's SMTP relay; every field may be overridden (other ports: 25, 465 with tls, 2525). */
const relaySettings = {
  host: z.string().min(1).default(MAILJET_SMTP_HOST),
  port: port.optional(),
  security: z.enum(['none', 'starttls', 'tls']).default('starttls'),
  verifyCertificate: z.boolean().default(true),
  ehloName: z.string().optional(),
  maxConnections: intBetween(1, 1000).default(5),
  timeout: duration.prefault('2m'),
};

/** `type: mailjet-smtp`; config/schema.ts turns it into the equivalent `type: smtp` config with mailjetSmtpAsSmtp. */
export const mailjetSmtpUpstreamSchema = z.strictObject({
  type: z.literal('mailjet-smtp'),
  apiKey,
  secretKey: secret,
  ...relaySettings,
});

/** A mailjet-smtp config as the smtp upstream it is, keeping what schema.ts adds to every upstream (limits). */
export function mailjetSmtpAsSmtp<T extends z.output<typeof mailjetSmtpUpstreamSchema>>({ apiKey: user, secretKey: pass, ...relay }: T): Omit<T, 'type' | 'apiKey' | 'secretKey'> & SmtpUpstreamConfig {
  return { ...relay, type: 'smtp', auth: { method: 'PLAIN', user, pass } };
}

/** `type: mailjet`: the Send API v3.1. */
export const mailjetUpstreamSchema = z.strictObject({
  type: z.literal('mailjet'),
  apiKey,
  secretKey: secret,
  /** Send API host; the tests point it at a local fake. */
  baseUrl: baseUrl.default(MAILJET_API_URL),
  /** SandboxMode: Mailjet validates every message and answers as usual, but delivers nothing. */
  sandboxMode: z.boolean().default(false),
  /**
   * Where a message goes that the Send API cannot take (over Mailjet's limits, or MIME it cannot rebuild,
   * such as S/MIME): the name of an `smtp` or `mailjet-smtp` upstream, or `{}` (optionally with relay
   * settings) for Mailjet's SMTP relay with this upstream's keys. Unset: such a message is bounced.
   */
  smtpFallback: z.union([upstreamName, z.strictObject(relaySettings)]).optional(),
  /** Deliveries collected into one Send API call: flushed at maxMessages messages or after window. */
  batch: z
    .strictObject({
      maxMessages: intBetween(1, MAILJET_MAX_MESSAGES_PER_CALL).default(MAILJET_MAX_MESSAGES_PER_CALL),
      window: duration.prefault('20ms'),
      /** A call's JSON body is kept under this size; a larger message is sent alone. */
      maxBytes: byteSize.prefault('20MB'),
    })
    .prefault({}),
  /** Deliveries through this upstream at once (they share calls through the batch). */
  maxConcurrency: intBetween(1, 1000).default(16),
  /** One Send API call may take this long before its messages are deferred. */
  timeout: duration.prefault('1m'),
});

export type MailjetUpstreamConfig = z.output<typeof mailjetUpstreamSchema>;

/** The smtp config of an inline `smtpFallback: {...}`: Mailjet's relay with the API upstream's keys. */
export function inlineRelayConfig(config: MailjetUpstreamConfig): SmtpUpstreamConfig | undefined {
  const fallback = config.smtpFallback;
  if (fallback === undefined || typeof fallback === 'string') return undefined;
  return { ...fallback, type: 'smtp', auth: { method: 'PLAIN', user: config.apiKey, pass: config.secretKey } };
}

/**
 * Cross-reference check for the whole `upstreams` map: a named smtpFallback must be an smtp (or
 * mailjet-smtp, which parses into smtp) upstream. Returns one problem per bad reference.
 */
export function mailjetReferenceProblems(upstreams: Readonly<Record<string, { type: string }>>): { upstream: string; message: string; input: string }[] {
  const problems: { upstream: string; message: string; input: string }[] = [];
  for (const [name, upstream] of Object.entries(upstreams)) {
    if (upstream.type !== 'mailjet') continue;
    const fallback = (upstream as MailjetUpstreamConfig).smtpFallback;
    if (typeof fallback !== 'string') continue;
    const target = Object.hasOwn(upstreams, fallback) ? upstreams[fallback] : undefined;
    if (!target) {
      problems.push({ upstream: name, message: `names no upstream; defined: ${Object.keys(upstreams).join(', ')}`, input: fallback });
    } else if (target.type !== 'smtp') {
      problems.push({ upstream: name, message: `names a ${target.type} upstream; expected an smtp or mailjet-smtp upstream`, input: fallback });
    }
  }
  return problems;
}
