import { isIP } from 'node:net';
import { domainToASCII } from 'node:url';
import nodemailer, { type Transporter } from 'nodemailer';
import type { SmtpUpstreamConfig } from '../config/schema.js';
import { SmtpError, toSmtpError } from '../smtp-error.js';
import type { DeliveryRequest, RecipientOutcome, Upstream } from './upstream.js';

const DEFAULT_PORT = { none: 25, starttls: 587, tls: 465 } as const;

interface RejectedError {
  recipient?: string;
}

/** nodemailer's `command` for failures while setting up the session, before any message is named. */
const SESSION_COMMAND = /^(CONN|EHLO|HELO|LHLO|STARTTLS|AUTH)\b/;

/**
 * Any SMTP server, through a pool of nodemailer connections. The spooled message is sent byte for byte
 * with an explicit envelope, so headers never decide who receives it.
 */
export class SmtpUpstream implements Upstream {
  readonly #transport: Transporter;

  constructor(
    readonly name: string,
    config: SmtpUpstreamConfig,
    hostname: string,
  ) {
    this.#transport = nodemailer.createTransport({
      pool: true,
      maxConnections: config.maxConnections,
      host: config.host,
      port: config.port ?? DEFAULT_PORT[config.security],
      secure: config.security === 'tls',
      requireTLS: config.security === 'starttls',
      ignoreTLS: config.security === 'none',
      name: config.ehloName ?? hostname,
      // SNI carries host names only (RFC 6066); for an IP address the certificate is checked against the address.
      tls: { rejectUnauthorized: config.verifyCertificate, ...(isIP(config.host) ? {} : { servername: config.host }) },
      connectionTimeout: config.timeout,
      greetingTimeout: config.timeout,
      socketTimeout: config.timeout,
      ...(config.auth ? { auth: { user: config.auth.user, pass: config.auth.pass.reveal() }, authMethod: config.auth.method } : {}),
    });
  }

  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    let info: { accepted?: string[]; rejectedErrors?: RejectedError[]; response?: string };
    try {
      info = await this.#transport.sendMail({
        envelope: { from: request.sender, to: [...request.recipients] },
        raw: request.openMessage(),
      });
    } catch (err) {
      const rejected = (err as { rejectedErrors?: RejectedError[] }).rejectedErrors;
      if (rejected?.length) return this.#perRecipient(request, rejected, [], '', toSmtpError(err));
      throw classify(err);
    }
    return this.#perRecipient(request, info.rejectedErrors ?? [], info.accepted ?? [], info.response ?? '250 OK');
  }

  /**
   * nodemailer names recipients as it sent them, with the domain lower-cased and punycoded: they are matched
   * in that form. A recipient is delivered only when the upstream accepted it; one it named neither way
   * stays queued (a temporary failure), never counted as delivered.
   */
  #perRecipient(request: DeliveryRequest, rejected: RejectedError[], accepted: string[], reply: string, otherwise?: SmtpError): RecipientOutcome[] {
    const errors = new Map(rejected.map((e) => [wireForm(e.recipient ?? ''), toSmtpError(e)]));
    const ok = new Set(accepted.map(wireForm));
    return request.recipients.map((recipient) => {
      const error = errors.get(wireForm(recipient)) ?? otherwise;
      if (error) return { recipient, delivered: false, error };
      if (ok.has(wireForm(recipient))) return { recipient, delivered: true, reply };
      return { recipient, delivered: false, error: new SmtpError(451, '4.3.0', 'upstream client reported no result for this recipient') };
    });
  }

  /**
   * Called when the daemon stops, after deliveries had their shutdown timeout: a connection still busy
   * (a stalled upstream) is cut too, its message fails temporarily and stays queued, and the process can exit.
   */
  async close(): Promise<void> {
    this.#transport.close({ force: true });
  }
}

/** An address as nodemailer puts it on the wire: the domain in lower-case ASCII (punycode), the local part as is. */
function wireForm(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return address;
  const domain = address.slice(at + 1);
  return `${address.slice(0, at)}@${domainToASCII(domain) || domain.toLowerCase()}`;
}

/**
 * A refused greeting, EHLO, STARTTLS or AUTH is about our link to the upstream, not about this message:
 * it is deferred like Postfix does (TLS required but not offered, soft-bounced SASL failures), never bounced.
 */
function classify(err: unknown): SmtpError {
  const error = toSmtpError(err);
  const command = (err as { command?: unknown } | null)?.command;
  if (error.temporary || typeof command !== 'string' || !SESSION_COMMAND.test(command)) return error;
  return new SmtpError(451, `4${error.enhanced.slice(1)}`, `${command} refused by upstream: ${error.code} ${error.message}`, { cause: err });
}
