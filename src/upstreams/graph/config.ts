import { z } from 'zod';
import { duration, httpsUrl, intBetween } from '../../config/units.js';

/** Where Microsoft Graph v1.0 lives in the global cloud; national clouds and the tests' fake set their own. */
export const DEFAULT_GRAPH_BASE_URL = 'https://graph.microsoft.com/v1.0';

/** The bearer token travels with every request. */
const graphBaseUrl = httpsUrl('https://graph.microsoft.com/v1.0');

const MAILBOX_ERROR = 'expected "fromSender" or the address of the sending mailbox, such as scans@contoso.com';
const mailbox = z.union([z.literal('fromSender'), z.string().regex(/^[^@\s<>/?#]+@[^@\s<>/?#]+$/, { error: MAILBOX_ERROR })], { error: MAILBOX_ERROR });

/** `upstreams.<name>` with `type: graph`: Microsoft Graph sendMail for one app registration. */
export const graphUpstreamSchema = z.strictObject({
  type: z.literal('graph'),
  /** The app registration under microsoft.apps whose client-credentials token is used. */
  app: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, { error: 'expected the name of an app registration under microsoft.apps' }),
  /** The mailbox Graph sends as (POST /users/{mailbox}/sendMail), or fromSender: the message's envelope sender. */
  mailbox,
  /** Keep a copy in the mailbox's Sent Items. false needs Mail.ReadWrite (see README, Microsoft Graph). */
  saveToSentItems: z.boolean().default(true),
  /** HTTP requests in flight per mailbox; Exchange Online allows 4 concurrent requests per app and mailbox. */
  maxConcurrentPerMailbox: intBetween(1, 100).default(4),
  /** Deliveries through this upstream at once (across mailboxes). */
  maxConcurrency: intBetween(1, 1000).default(16),
  /**
   * Graph endpoint, e.g. https://graph.microsoft.us/v1.0 for US Government L4. Default: the app registration's
   * graphBaseUrl (microsoft.apps.<app>.graphBaseUrl), itself https://graph.microsoft.com/v1.0 by default.
   */
  graphBaseUrl: graphBaseUrl.optional(),
  /** One HTTP request (a chunk, a draft, a send) may take this long before the delivery is deferred. */
  timeout: duration.prefault('2m'),
});

export type GraphUpstreamConfig = z.output<typeof graphUpstreamSchema>;

/** The mailbox Graph sends `sender`'s mail from, and Exchange counts it against: the fixed one, or the sender ('' for a bounce). */
export function graphMailbox(config: Pick<GraphUpstreamConfig, 'mailbox'>, sender: string): string {
  return config.mailbox === 'fromSender' ? sender : config.mailbox;
}
