/**
 * The spooled MIME message (parsed with mailparser) as Send API v3.1 `Messages[]`, following
 * https://dev.mailjet.com/email/guides/send-api-v31/ ("Send with attached files", "Add Email Headers",
 * "Tag Email Messages") and the message properties of https://dev.mailjet.com/email/reference/send-emails/.
 *
 * The envelope decides who receives it, never the headers: exactly this delivery's envelope recipients are put
 * into To/Cc/Bcc, each where the header names it (To, Cc), the others (Bcc, or recipients no header names) in
 * Bcc. Mailjet's To is both the visible header and the delivery list, so the visible To/Cc show only the
 * recipients of this delivery. A message no To or Cc recipient of this delivery is visible in (Bcc only) is
 * sent as one Message per recipient with that recipient in To, so no hidden recipient sees another.
 */
import { domainToASCII, domainToUnicode } from 'node:url';
import libmime from 'libmime';
import type { AddressObject, EmailAddress, ParsedMail } from 'mailparser';

export interface MjAddress {
  Email: string;
  Name?: string;
}

export interface MjAttachment {
  ContentType: string;
  Filename: string;
  Base64Content: string;
}

export interface MjInlinedAttachment extends MjAttachment {
  ContentID: string;
}

export type MjTracking = 'account_default' | 'disabled' | 'enabled';

export interface MjMessage {
  From: MjAddress;
  Sender?: MjAddress;
  To: MjAddress[];
  Cc?: MjAddress[];
  Bcc?: MjAddress[];
  ReplyTo?: MjAddress;
  Subject?: string;
  TextPart?: string;
  HTMLPart?: string;
  Attachments?: MjAttachment[];
  InlinedAttachments?: MjInlinedAttachment[];
  Headers?: Record<string, string>;
  CustomID?: string;
  EventPayload?: string;
  CustomCampaign?: string;
  TrackOpens?: MjTracking;
  TrackClicks?: MjTracking;
}

export type RecipientField = 'To' | 'Cc' | 'Bcc';

/** Where one envelope recipient sits: message index within the delivery, field, index in that field. */
export interface Placement {
  recipient: string;
  message: number;
  field: RecipientField;
  index: number;
}

export interface MappedDelivery {
  messages: MjMessage[];
  placements: Placement[];
}

export interface MapOptions {
  queueId: string;
  /** Envelope sender, used as From only when the message has no From header ('' for a bounce). */
  sender: string;
  recipients: readonly string[];
  /** The configured tag header (tags.header); its value becomes EventPayload unless X-MJ-EventPayload is set. */
  tagHeader?: string;
}

/**
 * Send API limits checked before a call (https://dev.mailjet.com/email/guides/send-api-v31/: attachments
 * "should not exceed 15 MB"; send-0015 "total number of recipients is over the limit" — 50 across To, Cc and
 * Bcc; mj-0006 for a Subject over 255 characters).
 */
export const LIMITS = { recipients: 50, attachmentBytes: 15_000_000, subjectChars: 255 } as const;

/**
 * The size of a MIME message holding LIMITS.attachmentBytes of attachments and nothing else: base64 takes 4/3 of
 * the data, plus a CRLF after every 76 characters (RFC 2045 6.8). A larger message is over that limit unless much
 * of it is text, which only parsing tells.
 */
export const ATTACHMENT_LIMIT_AS_MIME_BYTES = Math.ceil(((LIMITS.attachmentBytes * 4) / 3) * (78 / 76));

export interface LimitProblem {
  code: number;
  enhanced: string;
  reason: string;
}

/** The first Send API limit this delivery is over, or undefined. */
export function limitProblem(parsed: ParsedMail, recipients: readonly string[]): LimitProblem | undefined {
  if (recipients.length > LIMITS.recipients) {
    return { code: 550, enhanced: '5.5.3', reason: `${recipients.length} recipients, Mailjet's Send API takes at most ${LIMITS.recipients} per message` };
  }
  const bytes = parsed.attachments.reduce((sum, a) => sum + a.size, 0);
  if (bytes > LIMITS.attachmentBytes) {
    return { code: 552, enhanced: '5.3.4', reason: `${bytes} bytes of attachments, Mailjet's Send API takes at most ${LIMITS.attachmentBytes}` };
  }
  const subject = parsed.subject ?? '';
  if (subject.length > LIMITS.subjectChars) {
    return { code: 550, enhanced: '5.6.0', reason: `a subject of ${subject.length} characters, Mailjet's Send API takes at most ${LIMITS.subjectChars}` };
  }
  return undefined;
}

const RAW_ONLY_TYPES = /^(multipart\/(signed|encrypted)|application\/(x-)?pkcs7-mime)\b/i;

/** Why the Send API would damage this message (it rebuilds the MIME), or undefined. */
export function rawMimeReason(parsed: ParsedMail): string | undefined {
  const type = parsed.headers.get('content-type') as { value?: string } | undefined;
  return type?.value && RAW_ONLY_TYPES.test(type.value) ? `a ${type.value} message, whose signature or encryption the Send API would break` : undefined;
}

/**
 * Headers the Send API refuses in `Headers` ("List of forbidden headers", send-0011) or that have a message
 * property of their own, plus the top-level MIME structure, which Mailjet rebuilds. Lower-case.
 */
const NOT_CUSTOM_HEADERS = new Set([
  'from', 'sender', 'subject', 'to', 'cc', 'bcc', 'return-path', 'delivered-to', 'dkim-signature', 'domainkey-status',
  'received-spf', 'authentication-results', 'received', 'x-mailjet-prio', 'x-mailjet-debug', 'user-agent', 'x-mailer',
  'x-mj-customid', 'x-mj-eventpayload', 'x-mj-vars', 'x-mj-templateerrordeliver', 'x-mj-templateerrorreporting',
  'x-mj-templatelanguage', 'x-mailjet-trackopen', 'x-mailjet-trackclick', 'x-mj-templateid', 'x-mj-workflowid',
  'x-feedback-id', 'x-mailjet-segmentation', 'list-id', 'x-mj-mid', 'x-mj-errormessage', 'date', 'x-csa-complaints',
  'message-id', 'x-mailjet-campaign', 'x-mj-statisticscontactslistid',
  // have a property: ReplyTo
  'reply-to',
  // MIME structure of the top-level part
  'mime-version', 'content-type', 'content-transfer-encoding', 'content-disposition', 'content-id', 'content-description',
]);

/** Mailjet's SMTP headers (https://dev.mailjet.com/smtp-relay/custom-headers/) that have a Send API property. */
const PROPERTY_HEADERS: Readonly<Record<string, { property: 'CustomID' | 'EventPayload' | 'CustomCampaign' | 'TrackOpens' | 'TrackClicks'; parse(value: string): string | undefined }>> = {
  'x-mj-customid': { property: 'CustomID', parse: (v) => v },
  'x-mj-eventpayload': { property: 'EventPayload', parse: (v) => v },
  'x-mailjet-campaign': { property: 'CustomCampaign', parse: (v) => v },
  'x-mailjet-trackopen': { property: 'TrackOpens', parse: tracking },
  'x-mailjet-trackclick': { property: 'TrackClicks', parse: tracking },
};

/** Headers per message the Send API takes (mj-0008: "Max Allowed item limit is 50"). */
const MAX_CUSTOM_HEADERS = 50;

export function mapDelivery(parsed: ParsedMail, options: MapOptions): MappedDelivery {
  const base = baseMessage(parsed, options);
  const to = addressMap(parsed.to);
  const cc = addressMap(parsed.cc);
  const visibleTo: MjAddress[] = [];
  const visibleCc: MjAddress[] = [];
  const hidden: MjAddress[] = [];
  for (const recipient of options.recipients) {
    const key = normalize(recipient);
    const named = to.get(key) ?? cc.get(key);
    const entry: MjAddress = { Email: recipient, ...(named?.name ? { Name: named.name } : {}) };
    if (to.has(key)) visibleTo.push(entry);
    else if (cc.has(key)) visibleCc.push(entry);
    else hidden.push(entry);
  }
  // Mailjet needs a To; Cc-only mail shows its Cc recipients in To.
  if (visibleTo.length === 0) visibleTo.push(...visibleCc.splice(0));
  if (visibleTo.length === 0) {
    const messages = hidden.map((r): MjMessage => ({ ...base, To: [r] }));
    return { messages, placements: hidden.map((r, i) => ({ recipient: r.Email, message: i, field: 'To', index: 0 })) };
  }
  const message: MjMessage = { ...base, To: visibleTo, ...(visibleCc.length ? { Cc: visibleCc } : {}), ...(hidden.length ? { Bcc: hidden } : {}) };
  const placements: Placement[] = [
    ...visibleTo.map((r, index) => ({ recipient: r.Email, message: 0, field: 'To' as const, index })),
    ...visibleCc.map((r, index) => ({ recipient: r.Email, message: 0, field: 'Cc' as const, index })),
    ...hidden.map((r, index) => ({ recipient: r.Email, message: 0, field: 'Bcc' as const, index })),
  ];
  return { messages: [message], placements };
}

/** Everything but the recipients. */
function baseMessage(parsed: ParsedMail, options: MapOptions): Omit<MjMessage, 'To'> {
  const from = firstAddress(parsed.from) ?? (options.sender ? { Email: options.sender } : undefined);
  // Without any From (a bounce of a message without one), Mailjet refuses the empty address and it bounces.
  const message: Omit<MjMessage, 'To'> = { From: from ?? { Email: '' } };
  const sender = firstAddress(parsed.headers.get('sender') as AddressObject | undefined);
  // Sender needs a permission on the API key (send-0006): only sent when it says something From does not.
  if (sender && sender.Email.toLowerCase() !== message.From.Email.toLowerCase()) message.Sender = sender;
  const replyTo = firstAddress(parsed.replyTo);
  if (replyTo) message.ReplyTo = replyTo;
  if (parsed.subject !== undefined) message.Subject = parsed.subject;
  if (typeof parsed.text === 'string' && parsed.text !== '') message.TextPart = parsed.text;
  if (typeof parsed.html === 'string' && parsed.html !== '') message.HTMLPart = parsed.html;
  // send-0003: at least a TextPart or HTMLPart; an attachment-only scan gets an empty-looking text part.
  if (message.TextPart === undefined && message.HTMLPart === undefined) message.TextPart = ' ';
  Object.assign(message, files(parsed));
  const headers = customHeaders(parsed.headerLines, message);
  if (Object.keys(headers).length > 0) message.Headers = headers;
  // CustomID: X-MJ-CustomID, else the queue ID, so Mailjet's events lead back to the queue and the logs.
  message.CustomID ??= options.queueId;
  if (options.tagHeader && message.EventPayload === undefined) {
    const tag = readHeader(parsed.headerLines, options.tagHeader);
    if (tag !== undefined && tag !== '') message.EventPayload = libmime.decodeWords(tag);
  }
  return message;
}

/** Parts with a Content-ID inside multipart/related (or inline) are InlinedAttachments, the rest Attachments. */
function files(parsed: ParsedMail): Pick<MjMessage, 'Attachments' | 'InlinedAttachments'> {
  const attachments: MjAttachment[] = [];
  const inlined: MjInlinedAttachment[] = [];
  parsed.attachments.forEach((a, i) => {
    const file = {
      ContentType: a.contentType,
      // mj-0012: a Filename may not be empty.
      Filename: a.filename || `${a.related ? 'inline' : 'attachment'}-${i + 1}.${libmime.detectExtension(a.contentType)}`,
      Base64Content: a.content.toString('base64'),
    };
    if (a.cid && (a.related || a.contentDisposition === 'inline')) inlined.push({ ...file, ContentID: a.cid });
    else attachments.push(file);
  });
  return { ...(attachments.length ? { Attachments: attachments } : {}), ...(inlined.length ? { InlinedAttachments: inlined } : {}) };
}

/**
 * The headers Mailjet may carry as they are; those with a property of their own are set on `message` instead.
 * The first occurrence of a name wins.
 */
function customHeaders(lines: ParsedMail['headerLines'], message: Omit<MjMessage, 'To'>): Record<string, string> {
  const headers: Record<string, string> = {};
  const seen = new Set<string>();
  for (const { key, line } of lines) {
    const value = headerValue(line);
    const row = Object.hasOwn(PROPERTY_HEADERS, key) ? PROPERTY_HEADERS[key] : undefined;
    if (row) {
      // Properties are data: encoded words are decoded.
      const parsedValue = row.parse(libmime.decodeWords(value));
      if (message[row.property] === undefined && parsedValue !== undefined) (message as Record<string, unknown>)[row.property] = parsedValue;
      continue;
    }
    if (NOT_CUSTOM_HEADERS.has(key) || seen.has(key) || seen.size >= MAX_CUSTOM_HEADERS) continue;
    seen.add(key);
    headers[line.slice(0, line.indexOf(':')).trim()] = value;
  }
  return headers;
}

/** X-Mailjet-TrackOpen / X-Mailjet-TrackClick: 0 off, 1 on. */
function tracking(value: string): MjTracking | undefined {
  return value === '0' ? 'disabled' : value === '1' ? 'enabled' : undefined;
}

/** The first header of that name (case-insensitive), unfolded; undefined when there is none. */
export function readHeader(lines: ParsedMail['headerLines'], name: string): string | undefined {
  const key = name.toLowerCase();
  const line = lines.find((l) => l.key === key)?.line;
  return line === undefined ? undefined : headerValue(line);
}

/** A raw header line's value, unfolded, as written (encoded words stay encoded: custom headers pass as they are). */
function headerValue(line: string): string {
  return line
    .slice(line.indexOf(':') + 1)
    .replace(/\r?\n(?=[ \t])/g, '')
    .trim();
}

function flatten(list: EmailAddress[]): EmailAddress[] {
  return list.flatMap((a) => (a.group ? flatten(a.group) : [a]));
}

function addresses(header: AddressObject | AddressObject[] | undefined): EmailAddress[] {
  if (!header) return [];
  return flatten((Array.isArray(header) ? header : [header]).flatMap((h) => h.value)).filter((a) => a.address);
}

function addressMap(header: AddressObject | AddressObject[] | undefined): Map<string, EmailAddress> {
  const map = new Map<string, EmailAddress>();
  for (const a of addresses(header)) if (!map.has(normalize(a.address!))) map.set(normalize(a.address!), a);
  return map;
}

function firstAddress(header: AddressObject | AddressObject[] | undefined): MjAddress | undefined {
  const a = addresses(header)[0];
  if (!a?.address) return undefined;
  return { Email: asciiDomain(a.address), ...(a.name ? { Name: a.name } : {}) };
}

/** For matching header addresses to envelope recipients: Unicode domain, lower-cased. */
function normalize(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return address.toLowerCase();
  const domain = address.slice(at + 1);
  return `${address.slice(0, at)}@${domainToUnicode(domain) || domain}`.toLowerCase();
}

/** mailparser decodes punycode domains; the API gets the ASCII form every server accepts. */
function asciiDomain(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return address;
  const domain = address.slice(at + 1);
  return `${address.slice(0, at)}@${domainToASCII(domain) || domain}`;
}
