/**
 * What every SMTP-speaking upstream (smtp, m365-smtp, m365-connector) shares: sending the spooled message byte
 * for byte with an explicit envelope through nodemailer, and reading nodemailer's answer back as one outcome
 * per requested recipient.
 */
import { domainToASCII } from 'node:url';
import type { SendMailOptions, Transporter } from 'nodemailer';
import { SmtpError, toSmtpError } from '../smtp-error.js';
import type { DeliveryRequest, RecipientOutcome } from './upstream.js';

interface RejectedError {
  recipient?: string;
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

/** nodemailer's `command` for failures while setting up the session, before any message is named. */
const SESSION_COMMAND = /^(CONN|EHLO|HELO|LHLO|STARTTLS|AUTH)\b/;

/**
 * Sends the request's message through `transport`; `extra` adds per-message options (e.g. `auth`). A
 * recipient is delivered only when the upstream accepted it; one it named neither way stays queued (a
 * temporary failure), never counted as delivered. Throws (the same error for every recipient) when the
 * session failed before any recipient was named.
 */
export async function sendRaw(
  transport: Transporter,
  request: DeliveryRequest,
  options: { extra?: Partial<SendMailOptions>; mapError?: ErrorMapper } = {},
): Promise<RecipientOutcome[]> {
  const mapError = options.mapError ?? defaultErrorMapper;
  let info: { accepted?: unknown[]; rejectedErrors?: RejectedError[]; response?: string };
  try {
    info = (await transport.sendMail({
      ...(options.extra ?? {}),
      envelope: { from: request.sender, to: [...request.recipients] },
      raw: request.openMessage(),
      // Never written: a raw message goes out as stored. Named only so that nodemailer, which logs one per
      // message, does not invent it from five randomBytes calls (3 % of the event loop when relaying 4 KiB mail).
      messageId: `<${request.queueId}@smarthost>`,
    })) as typeof info;
  } catch (err) {
    const rejected = (err as { rejectedErrors?: RejectedError[] }).rejectedErrors;
    if (rejected?.length) return perRecipient(request, rejected, [], '', mapError, mapError(err, 'message'));
    throw mapError(err, 'session');
  }
  const accepted = (info.accepted ?? []).filter((a): a is string => typeof a === 'string');
  return perRecipient(request, info.rejectedErrors ?? [], accepted, info.response ?? '250 OK', mapError);
}

/** nodemailer names recipients as it sent them, with the domain lower-cased and punycoded: they are matched in that form. */
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

/** An address as nodemailer puts it on the wire: the domain in lower-case ASCII (punycode), the local part as is. */
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
