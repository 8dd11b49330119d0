/**
 * What every SMTP-speaking upstream (smtp, m365-smtp, m365-connector, google) shares: sending the spooled
 * message byte for byte with an explicit envelope through a nodemailer transport, and reading its answer back as
 * one outcome per requested recipient.
 */
import type { Readable } from 'node:stream';
import { domainToASCII } from 'node:url';
import type { SendMailOptions, Transporter } from 'nodemailer';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { SmtpError, toSmtpError } from '../smtp-error.js';
import type { DeliveryRequest, RecipientOutcome } from './upstream.js';

interface RejectedError {
  recipient?: string;
}

/** What nodemailer's SMTP transports report for a message sent. */
interface SentInfo {
  accepted?: unknown[];
  rejectedErrors?: RejectedError[];
  response?: string;
}

/**
 * The envelope of the last try, as nodemailer's SMTP connection keeps it: send() records each RCPT TO reply on
 * the envelope object it is handed (rejectedErrors, once MAIL FROM was sent).
 */
interface Transaction {
  envelope?: { from: string; to: string[]; use8BitMime: boolean; rejectedErrors?: RejectedError[] };
}

/** The part of a nodemailer transport sendThroughTransport uses: the transport plugin API's send(mail, callback). */
interface MailTransport {
  send(mail: unknown, callback: (err: Error | null, info: unknown) => void): void;
}

/**
 * Where an error came from: one recipient's RCPT TO, the whole message (with some recipients refused), or
 * the session (connection, greeting, EHLO, STARTTLS, AUTH, MAIL FROM, DATA).
 */
export type ErrorOrigin = 'recipient' | 'message' | 'session';

/** Turns whatever nodemailer reported into the SmtpError smarthost acts on. */
export type ErrorMapper = (err: unknown, origin: ErrorOrigin) => SmtpError;

/** smtp's mapping: replies as the upstream gave them, except a refused session set-up, which defers. */
export const defaultErrorMapper: ErrorMapper = (err, origin) => (origin === 'session' ? deferRefusedSession(err) : toSmtpError(err));

/**
 * Bytes per read of the message on its way to an SMTP upstream, instead of 64 KiB: each chunk costs a threadpool
 * trip, a pass through nodemailer's dot-stuffing stream and a socket write, so a 1 MiB message takes 4 of each
 * instead of 16. Bench (c), five loads against four: 19.0-21.5 ms of CPU per message instead of 22.2-23.0, 53-62
 * msg/s instead of 48-54; (d)'s 100 MiB went out in 1.46-1.72 s instead of 1.99.
 * Only here: with 256 KiB chunks for every upstream, a 100 MiB scan through Graph grew the daemon by 102 MiB
 * instead of about 50 (test/integration/graph-memory.test.ts). Graph and Mailjet turn chunks into strings, and
 * V8 keeps strings over 128 KiB in its large-object space until a full collection, the likely reason.
 */
const READ_CHUNK = 256 * 1024;

/** nodemailer's `command` for failures while setting up the session, before any message is named. */
const SESSION_COMMAND = /^(CONN|EHLO|HELO|LHLO|STARTTLS|AUTH)\b/;

/**
 * Sends the request's message through `transport`; `extra` adds per-message options (e.g. `auth`). A
 * recipient is delivered only when the upstream accepted it; one it named neither way stays queued (a
 * temporary failure), never counted as delivered. A refusal of DATA or of the message after some recipients
 * were refused at RCPT TO leaves those with their own reply and applies to the others only, as Postfix's
 * smtp(8) does. Otherwise a failure is thrown (the same error for every recipient).
 */
export async function sendRaw(
  transport: Transporter,
  request: DeliveryRequest,
  options: { extra?: Partial<SendMailOptions>; mapError?: ErrorMapper } = {},
): Promise<RecipientOutcome[]> {
  const mapError = options.mapError ?? defaultErrorMapper;
  const transaction: Transaction = {};
  let info: SentInfo;
  try {
    info = await sendThroughTransport(transport, request, options.extra ?? {}, transaction);
  } catch (err) {
    if (err instanceof SmtpUtf8NotOffered) throw err.refusal;
    // nodemailer names the refused recipients on the error only when all were refused; after a refused DATA (or
    // message) they are in its bookkeeping of the envelope it was given (SMTPConnectionEnvelope: rejectedErrors).
    // Not after a refused MAIL FROM: the RCPT TO replies that follow it in a pipelined envelope only echo that.
    const rejected = (err as { rejectedErrors?: RejectedError[] }).rejectedErrors ?? (failedCommand(err) === 'DATA' ? transaction.envelope?.rejectedErrors : undefined);
    if (rejected?.length) return perRecipient(request, rejected, [], '', mapError, mapError(err, 'message'));
    throw mapError(err, 'session');
  }
  const accepted = (info.accepted ?? []).filter((a): a is string => typeof a === 'string');
  return perRecipient(request, info.rejectedErrors ?? [], accepted, info.response ?? '250 OK', mapError);
}

/** nodemailer names recipients as they were sent, in wireForm: they are matched in that form. */
function perRecipient(
  request: DeliveryRequest,
  rejected: RejectedError[],
  accepted: string[],
  reply: string,
  mapError: ErrorMapper,
  otherwise?: SmtpError,
): RecipientOutcome[] {
  const errors = new Map(rejected.map((e) => [wireForm(e.recipient ?? ''), mapError(e, 'recipient')]));
  const ok = new Set(accepted.map(wireForm));
  return request.recipients.map((recipient) => {
    const error = errors.get(wireForm(recipient)) ?? otherwise;
    if (error) return { recipient, delivered: false, error };
    if (ok.has(wireForm(recipient))) return { recipient, delivered: true, reply };
    return { recipient, delivered: false, error: new SmtpError(451, '4.3.0', 'upstream client reported no result for this recipient') };
  });
}

const NON_ASCII = /[^\x00-\x7f]/;

/**
 * Why the message can only go to an upstream that offers SMTPUTF8 (RFC 6531 3.2), as the refusal to one that does
 * not; undefined when it can go anywhere. Domains go out as A-labels, so only a UTF-8 local part (or a domain
 * with no A-label) counts; UTF-8 header fields only when the client itself asked for SMTPUTF8, as in Postfix,
 * whose smtp(8) fails such a delivery with 5.6.7 "SMTPUTF8 is required, but was not offered by host"
 * (smtp_proto.c). To an upstream that offers SMTPUTF8, nodemailer names it in MAIL FROM for a UTF-8 address
 * only: it has no option to name it for header fields alone.
 */
function smtpUtf8Refusal(request: DeliveryRequest, envelope: { from: string; to: string[] }): SmtpError | undefined {
  const address = [envelope.from, ...envelope.to].find((a) => NON_ASCII.test(a));
  if (address !== undefined) {
    return new SmtpError(553, '5.6.7', `SMTPUTF8 is required for the UTF-8 address <${address}>, but the upstream did not offer it (RFC 6531)`);
  }
  if (request.utf8Headers) {
    return new SmtpError(554, '5.6.9', 'SMTPUTF8 is required for the UTF-8 header fields the client sent with SMTPUTF8, but the upstream did not offer it (RFC 6531)');
  }
  return undefined;
}

/** An address as it goes on the wire: the domain in lower-case ASCII (punycode), the local part as is. */
export function wireForm(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return address;
  return `${address.slice(0, at)}@${asciiDomain(address.slice(at + 1))}`;
}

/** A domain as it goes on the wire: an IDN as lower-case A-labels (bücher.de is xn--bcher-kva.de). */
export function asciiDomain(domain: string): string {
  return domainToASCII(domain) || domain.toLowerCase();
}

/** The SMTP command nodemailer was running when `err` happened ("AUTH XOAUTH2", "MAIL FROM", "CONN" ...). */
export function failedCommand(err: unknown): string | undefined {
  const command = (err as { command?: unknown } | null)?.command;
  return typeof command === 'string' ? command : undefined;
}

/**
 * A refused greeting, EHLO, STARTTLS or AUTH is about our link to the upstream, not about this message:
 * it is deferred like Postfix does (TLS required but not offered, soft-bounced SASL failures), never bounced.
 */
export function deferRefusedSession(err: unknown): SmtpError {
  const error = toSmtpError(err);
  const command = failedCommand(err);
  if (error.temporary || command === undefined || !SESSION_COMMAND.test(command)) return error;
  return new SmtpError(451, `4${error.enhanced.slice(1)}`, `${command} refused by upstream: ${error.code} ${error.message}`, { cause: err });
}

/**
 * Hands the message to the transporter's SMTP transport (pooled or not) through the transport plugin API,
 * send(mail, callback), instead of sendMail(). sendMail() builds a MIME tree around even a raw message: a random
 * boundary and Message-ID, the envelope parsed as address headers, two more streams between file and socket. That
 * was a quarter of the event loop's time per relayed 4 KiB message; without it, 20-30 % less main-thread CPU.
 * nodemailer's SMTP transports read mail.data and these four methods of mail.message; the Message-ID is for
 * their logs only (a raw message goes out as stored). The message file is opened when the transport is about to
 * send it; nodemailer reads it to the end or destroys it, also when the pool moves the message to a fresh
 * connection and opens it again (test/integration/smtp-send.test.ts checks that no descriptor stays open).
 */
function sendThroughTransport(transport: Transporter, request: DeliveryRequest, extra: Partial<SendMailOptions>, transaction: Transaction): Promise<SentInfo> {
  const envelope = { from: wireForm(request.sender), to: request.recipients.map(wireForm) };
  const smtpUtf8 = smtpUtf8Refusal(request, envelope);
  const messageId = `<${request.queueId}@smarthost>`;
  const mail = {
    data: { ...extra, envelope },
    message: {
      // Called once per try (the pool moves a message whose connection closed before it was read to another).
      // use8BitMime: BODY=8BITMIME where the upstream offers 8BITMIME (Exchange Online and Gmail do). Where it does
      // not, an 8-bit message still goes, as it is. Postfix by default converts 8-bit MIME to quoted-printable for
      // such a server (disable_mime_output_conversion = no) and, where it does not convert, sends 8-bit mail as is
      // (smtp_proto.c: "our primary mission is to deliver mail"). smarthost converts nothing: it relays byte for
      // byte, and re-encoding would break DKIM signatures; refusing instead would bounce mail most servers take.
      getEnvelope: () =>
        (transaction.envelope = { from: envelope.from, to: [...envelope.to], use8BitMime: request.eightBit === true, ...(smtpUtf8 ? { [NEEDS_SMTPUTF8]: smtpUtf8 } : {}) }),
      messageId: () => messageId,
      getHeader: (name: string) => (name.toLowerCase() === 'message-id' ? messageId : undefined),
      createReadStream: () => request.openMessage({ chunkSize: READ_CHUNK }),
    },
  };
  return new Promise((resolve, reject) => {
    (transport.transporter as unknown as MailTransport).send(mail, (err, info) => {
      if (err) reject(err);
      else resolve(info as SentInfo);
    });
  });
}

/** On an envelope handed to nodemailer: the refusal for a connection whose server did not offer SMTPUTF8. */
const NEEDS_SMTPUTF8 = Symbol('needsSmtpUtf8');

/**
 * A message stopped before MAIL FROM because it needs SMTPUTF8. Shaped like nodemailer's own envelope errors
 * (EENVELOPE), so the pool resets the connection with RSET and keeps it for the next message.
 */
class SmtpUtf8NotOffered extends Error {
  readonly code = 'EENVELOPE';
  readonly command = 'MAIL FROM';
  constructor(readonly refusal: SmtpError) {
    super(refusal.reply);
  }
}

/**
 * nodemailer writes a UTF-8 address into MAIL FROM and RCPT TO as is when the server did not offer SMTPUTF8
 * (RFC 6531 3.2 forbids that; a strict server refuses or mangles it) and has no option to refuse instead. Only
 * the connection knows the server's EHLO keywords (its _supportedExtensions), and the transports make their
 * connections themselves: so SMTPConnection's send() is wrapped, once per process. An envelope that carries
 * NEEDS_SMTPUTF8, sent to a server without SMTPUTF8, fails before MAIL FROM; every other envelope passes as it
 * came. test/integration/eightbit-smtputf8.test.ts fails if nodemailer's internals change under this.
 */
const sendOnConnection = SMTPConnection.prototype.send;
SMTPConnection.prototype.send = function send(this: SMTPConnection, envelope, message, done) {
  const refusal = (envelope as { [NEEDS_SMTPUTF8]?: SmtpError })[NEEDS_SMTPUTF8];
  const offered = (this as unknown as { _supportedExtensions?: string[] })._supportedExtensions;
  if (refusal === undefined || offered?.includes('SMTPUTF8')) return sendOnConnection.call(this, envelope, message, done);
  // As nodemailer does with a message whose envelope it refused: whatever the stream reads from is released.
  if (typeof (message as Readable).destroy === 'function') (message as Readable).destroy();
  // nodemailer's own error paths call back with the error alone, as this does (its ResultCallback).
  setImmediate(() => (done as (err: Error) => void)(new SmtpUtf8NotOffered(refusal)));
};
