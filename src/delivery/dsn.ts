import { randomBytes } from 'node:crypto';

/** One recipient the bounce reports on. */
export interface FailedRecipient {
  /** Envelope recipient address. */
  recipient: string;
  /** Enhanced status code (RFC 3463), e.g. "5.1.1". */
  status: string;
  /** Upstream reply text, e.g. "550 5.1.1 <x@y>: user unknown". */
  diagnostic: string;
  /** Upstream host name, if known. */
  remoteMta?: string;
  lastAttemptAt?: Date;
}

export interface DsnInput {
  /** Our host name, e.g. "smarthost.example". */
  reportingMta: string;
  queueId: string;
  arrivalDate: Date;
  /** Envelope sender of the original message; the DSN is addressed to it. */
  originalSender: string;
  failed: FailedRecipient[];
  /** The original message's header block, up to and excluding the blank line. */
  originalHeaders: Buffer;
  now: Date;
  /** Message-ID to use; otherwise one is generated. */
  messageId?: string;
}

const MAX_ORIGINAL_HEADERS = 64 * 1024;
// Keeps each delivery-status field's line well under RFC 5322's 998-octet limit, field name included. The
// notification's text puts three such values on one line, so it is wrapped (see wrap).
const MAX_FIELD = 900;
// The notification's lines, as RFC 5322 recommends (2.1.1); a longer word keeps a line of its own.
const TEXT_WIDTH = 78;
const CONTINUATION = '    ';
// Action is always "failed", so only the failure classes make sense (4.x.x after retries ran out).
const ENHANCED_STATUS = /^[45]\.\d{1,3}\.\d{1,3}$/;

/**
 * Builds an RFC 3464 delivery status notification: a multipart/report with a human explanation, the
 * machine-readable message/delivery-status and the original header block. Returns the whole message
 * with CRLF line endings. The caller must not bounce a bounce: an empty sender is rejected here.
 */
export function buildDsn(input: DsnInput): Buffer {
  if (input.originalSender === '') throw new Error('buildDsn: no DSN may be sent to the null sender');
  if (input.failed.length === 0) throw new Error('buildDsn: a DSN needs at least one failed recipient');

  const mta = oneLine(input.reportingMta);
  const text = explanation(mta, input.failed);
  const status = deliveryStatus(mta, input);
  const headers = originalHeaderBlock(input.originalHeaders);

  let boundary: string;
  do boundary = `=_dsn_${randomBytes(16).toString('hex')}`;
  while (text.includes(boundary) || status.includes(boundary) || headers.includes(boundary, 0, 'latin1'));

  const messageId = input.messageId ? angle(oneLine(input.messageId)) : `<${randomBytes(16).toString('hex')}@${mta}>`;
  const head = [
    `From: Mail Delivery System <MAILER-DAEMON@${mta}>`,
    `To: ${angle(oneLine(input.originalSender))}`,
    'Subject: Undelivered Mail Returned to Sender',
    `Date: ${rfc5322Date(input.now)}`,
    `Message-ID: ${messageId}`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    '',
    'This is a MIME-encapsulated message.',
    '',
    `--${boundary}`,
    'Content-Description: Notification',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 7bit',
    '',
    text,
    `--${boundary}`,
    'Content-Description: Delivery report',
    'Content-Type: message/delivery-status',
    '',
    status,
    `--${boundary}`,
    'Content-Description: Undelivered Message Headers',
    'Content-Type: text/rfc822-headers',
    // Original headers may carry raw 8-bit bytes (e.g. SMTPUTF8); they are passed through untouched.
    `Content-Transfer-Encoding: ${/[\x80-\xff]/.test(headers.toString('latin1')) ? '8bit' : '7bit'}`,
    '',
    '',
  ].join('\r\n');
  return Buffer.concat([Buffer.from(head, 'latin1'), headers, Buffer.from(`\r\n\r\n--${boundary}--\r\n`, 'latin1')]);
}

function explanation(mta: string, failed: readonly FailedRecipient[]): string {
  const lines = [
    `This is the mail system at host ${mta}.`,
    '',
    "I'm sorry to have to inform you that your message could not be delivered",
    'to one or more recipients. The headers of your message are attached below.',
    '',
    'The mail system',
    '',
  ];
  for (const f of failed) {
    const via = f.remoteMta ? `host ${oneLine(f.remoteMta)} said: ` : '';
    lines.push(wrap(`${angle(oneLine(f.recipient))}: ${via}${oneLine(f.diagnostic)}`), '');
  }
  return lines.join('\r\n');
}

function deliveryStatus(mta: string, input: DsnInput): string {
  const lines = [
    `Reporting-MTA: dns; ${mta}`,
    `X-Smarthost-Queue-ID: ${oneLine(input.queueId)}`,
    `Arrival-Date: ${rfc5322Date(input.arrivalDate)}`,
  ];
  for (const f of input.failed) {
    const rcpt = oneLine(f.recipient);
    // No Original-Recipient: RFC 3464 takes it from an ORCPT parameter, which smarthost does not offer.
    lines.push('', `Final-Recipient: rfc822; ${rcpt}`, 'Action: failed');
    lines.push(`Status: ${ENHANCED_STATUS.test(f.status) ? f.status : '5.0.0'}`);
    if (f.remoteMta) lines.push(`Remote-MTA: dns; ${oneLine(f.remoteMta)}`);
    lines.push(`Diagnostic-Code: smtp; ${oneLine(f.diagnostic)}`);
    if (f.lastAttemptAt) lines.push(`Last-Attempt-Date: ${rfc5322Date(f.lastAttemptAt)}`);
  }
  return lines.join('\r\n') + '\r\n';
}

/** CRLF-normalized copy of the header block, cut to whole header fields if it exceeds 64 KiB. */
function originalHeaderBlock(raw: Buffer): Buffer {
  // latin1 maps bytes 1:1 to chars, so offsets stay byte offsets and 8-bit bytes survive.
  let s = raw.toString('latin1').replace(/\r\n|\r|\n/g, '\r\n').replace(/(\r\n)+$/, '');
  if (s.length > MAX_ORIGINAL_HEADERS) {
    let cut = s.lastIndexOf('\r\n', MAX_ORIGINAL_HEADERS - 2);
    // Back up past folded continuation lines so no header field is left half-included.
    while (cut > 0 && (s[cut + 2] === ' ' || s[cut + 2] === '\t')) cut = s.lastIndexOf('\r\n', cut - 1);
    s = cut > 0 ? s.slice(0, cut) : '';
  }
  return Buffer.from(s, 'latin1');
}

/** Folds a value into one printable-ASCII line: no CR/LF can start a new header, nothing 8-bit leaks. */
function oneLine(value: string): string {
  const flat = value
    .replace(/\s*[\r\n]+\s*/g, ' ')
    .replace(/\t/g, ' ')
    .replace(/[^\x20-\x7e]/g, '?')
    .trim();
  return flat.length > MAX_FIELD ? `${flat.slice(0, MAX_FIELD - 3)}...` : flat;
}

/**
 * Wraps a line at spaces, continuation lines indented as in Postfix's bounces; replacing each CRLF and indent
 * with a space gives the line back. A line over TEXT_WIDTH holds one word (after its indent), at most MAX_FIELD + 3
 * characters ("<recipient>:"), so none comes near 998.
 */
function wrap(line: string): string {
  const [first, ...words] = line.split(' ');
  const lines: string[] = [];
  let current = first!;
  for (const word of words) {
    if (current.length + 1 + word.length <= TEXT_WIDTH) current += ` ${word}`;
    else {
      lines.push(current);
      current = CONTINUATION + word;
    }
  }
  lines.push(current);
  return lines.join('\r\n');
}

function angle(address: string): string {
  return address.startsWith('<') && address.endsWith('>') ? address : `<${address}>`;
}

/** "Tue, 03 Jun 2025 12:00:00 +0000": toUTCString's "GMT" is an obsolete zone in RFC 5322. */
function rfc5322Date(date: Date): string {
  return date.toUTCString().replace(/GMT$/, '+0000');
}
