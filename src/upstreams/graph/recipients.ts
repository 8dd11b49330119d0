/**
 * Graph has no envelope: it delivers to the recipients it reads from the message itself, the To, Cc and Bcc
 * headers of a MIME message ("provide the applicable Internet message headers (To, CC, BCC, Subject)",
 * https://learn.microsoft.com/graph/api/user-post-messages) or the toRecipients, ccRecipients and bccRecipients
 * of a draft. So the headers are made to name exactly the envelope recipients of this delivery:
 *
 * - a To or Cc entry that is an envelope recipient of this delivery stays where it is, display name and all;
 * - a To or Cc entry that is not (routed to another upstream, or never an envelope recipient at all, as a
 *   list address the client expanded itself) is dropped, or Graph would deliver a second copy, or a first one
 *   to someone the client never asked to receive it;
 * - every remaining envelope recipient (Bcc-only, alias expansions, the test-mode address) goes into Bcc,
 *   which Exchange does not show to the other recipients; a Bcc header the message already had is replaced.
 *
 * The price: recipients of a Graph delivery see a To/Cc list shortened to the addressees this same delivery
 * carries, so Reply-All misses those routed elsewhere. Keeping them would mean delivering to them twice.
 * Only the header block changes; the body bytes stay exactly as they were spooled.
 */
import { domainToASCII } from 'node:url';
import { fieldValue, formatField, formatMailbox, parseMailboxes, splitHeaderFields, type HeaderField, type Mailbox } from '../../rewrite/header-block.js';

export interface RecipientPlan {
  to: Mailbox[];
  cc: Mailbox[];
  bcc: Mailbox[];
}

/** Comparison form of an address: domain in lower-case ASCII (punycode), local part lower-cased as Exchange does. */
export function addressKey(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return address.toLowerCase();
  const domain = address.slice(at + 1);
  return `${address.slice(0, at).toLowerCase()}@${(domainToASCII(domain) || domain).toLowerCase()}`;
}

/**
 * Splits the envelope recipients into To, Cc and Bcc. Each envelope recipient appears exactly once; nothing
 * else appears. Header entries keep their display name; the address is written as the envelope has it.
 */
export function planRecipients(header: { to: readonly Mailbox[]; cc: readonly Mailbox[] }, envelope: readonly string[]): RecipientPlan {
  const pending = new Map<string, string>();
  for (const r of envelope) if (!pending.has(addressKey(r))) pending.set(addressKey(r), r);
  const keep = (entries: readonly Mailbox[]): Mailbox[] => {
    const kept: Mailbox[] = [];
    for (const e of entries) {
      const address = pending.get(addressKey(e.address));
      if (address === undefined) continue;
      pending.delete(addressKey(e.address));
      kept.push({ name: e.name, address });
    }
    return kept;
  };
  const to = keep(header.to);
  const cc = keep(header.cc);
  return { to, cc, bcc: [...pending.values()].map((address) => ({ name: '', address })) };
}

export interface ExactHeaders {
  /** The header block to send (CRLF line endings, without the empty line that ends it). */
  block: Buffer;
  plan: RecipientPlan;
}

/**
 * Rewrites a message's header block so To, Cc and Bcc name exactly `envelope`. A To or Cc field whose every
 * entry is kept stays byte for byte; one that lost entries is written anew (groups flattened, names encoded as
 * RFC 2047 needs), or removed when nothing is left.
 */
export function exactRecipientHeaders(block: Buffer, envelope: readonly string[]): ExactHeaders {
  const fields = splitHeaderFields(block);
  const mailboxes = (name: string) => fields.filter((f) => f.name === name).flatMap((f) => parseMailboxes(fieldValue(f)));
  const headerTo = mailboxes('to');
  const headerCc = mailboxes('cc');
  const plan = planRecipients({ to: headerTo, cc: headerCc }, envelope);
  const replacement = (name: 'To' | 'Cc', parsed: Mailbox[], kept: Mailbox[]): Buffer | undefined => {
    if (kept.length === parsed.length) return undefined;
    return kept.length > 0 ? formatField(name, kept.map(formatMailbox).join(', ')) : Buffer.alloc(0);
  };
  const newTo = replacement('To', headerTo, plan.to);
  const newCc = replacement('Cc', headerCc, plan.cc);
  const out: Buffer[] = [];
  const written = new Set<string>();
  const put = (field: HeaderField, substitute: Buffer | undefined) => {
    if (substitute === undefined) return out.push(field.raw);
    // Several To (or Cc) fields become one, in the place of the first.
    if (!written.has(field.name)) out.push(substitute);
    written.add(field.name);
  };
  for (const field of fields) {
    if (field.name === 'bcc') continue;
    if (field.name === 'to') put(field, newTo);
    else if (field.name === 'cc') put(field, newCc);
    else out.push(field.raw);
  }
  if (plan.bcc.length > 0) out.push(formatField('Bcc', plan.bcc.map(formatMailbox).join(', ')));
  return { block: Buffer.concat(out), plan };
}

/** Splits a message into its header block (without the blank line) and the body (after it), sharing memory. */
export function splitMessage(message: Buffer): { header: Buffer; body: Buffer } {
  if (message.subarray(0, 2).toString('latin1') === '\r\n') return { header: Buffer.alloc(0), body: message.subarray(2) };
  const end = message.indexOf('\r\n\r\n');
  if (end < 0) return { header: message.subarray(0, message.length), body: Buffer.alloc(0) };
  return { header: message.subarray(0, end + 2), body: message.subarray(end + 4) };
}
