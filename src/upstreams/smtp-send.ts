/**
 * What every SMTP-speaking upstream (smtp, m365-smtp, m365-connector, google) shares: sending the spooled
 * message byte for byte with an explicit envelope through a nodemailer transport, and reading its answer back as
 * one outcome per requested recipient.
 */
import { domainToASCII } from 'node:url';
import type { SendMailOptions, Transporter } from 'nodemailer';
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
  envelope?: { from: string; to: string[]; rejectedErrors?: RejectedError[] };
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

/** An address as it goes on the wire: the domain in lower-case ASCII (punycode), the local part as is. */
export function wireForm(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return address;
  const domain = address.slice(at + 1);
  return `${address.slice(0, at)}@${domainToASCII(domain) || domain.toLowerCase()}`;
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
  const messageId = `<${request.queueId}@smarthost>`;
  const mail = {
    data: { ...extra, envelope },
    message: {
      // Called once per try (the pool moves a message whose connection closed before it was read to another).
      getEnvelope: () => (transaction.envelope = { from: envelope.from, to: [...envelope.to] }),
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
