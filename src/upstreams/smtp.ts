import nodemailer, { type Transporter } from 'nodemailer';
import type { SmtpUpstreamConfig } from '../config/schema.js';
import { SmtpError, toSmtpError } from '../smtp-error.js';
import type { DeliveryRequest, RecipientOutcome, Upstream } from './upstream.js';

const DEFAULT_PORT = { none: 25, starttls: 587, tls: 465 } as const;

interface RejectedError {
  recipient?: string;
}

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
      tls: { rejectUnauthorized: config.verifyCertificate, servername: config.host },
      connectionTimeout: config.timeout,
      greetingTimeout: config.timeout,
      socketTimeout: config.timeout,
      ...(config.auth ? { auth: { user: config.auth.user, pass: config.auth.pass.reveal() }, authMethod: config.auth.method } : {}),
    });
  }

  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    let info: { accepted?: unknown[]; rejectedErrors?: RejectedError[]; response?: string };
    try {
      info = await this.#transport.sendMail({
        envelope: { from: request.sender, to: [...request.recipients] },
        raw: request.openMessage(),
      });
    } catch (err) {
      const rejected = (err as { rejectedErrors?: RejectedError[] }).rejectedErrors;
      if (rejected?.length) return this.#perRecipient(request, rejected, '', toSmtpError(err));
      throw toSmtpError(err);
    }
    return this.#perRecipient(request, info.rejectedErrors ?? [], info.response ?? '250 OK');
  }

  #perRecipient(request: DeliveryRequest, rejected: RejectedError[], reply: string, otherwise?: SmtpError): RecipientOutcome[] {
    const errors = new Map(rejected.map((e) => [e.recipient, toSmtpError(e)]));
    return request.recipients.map((recipient) => {
      const error = errors.get(recipient) ?? otherwise;
      return error ? { recipient, delivered: false, error } : { recipient, delivered: true, reply };
    });
  }

  async close(): Promise<void> {
    this.#transport.close();
  }
}
