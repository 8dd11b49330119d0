/**
 * `m365-connector`: port 25 into the tenant's MX endpoint (contoso-com.mail.protection.outlook.com), no AUTH.
 * Two ways Exchange Online takes such mail ("How to set up a multifunction device or application to send
 * email using Microsoft 365", options 2 and 3):
 * https://learn.microsoft.com/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
 * - connector relay: a partner inbound connector recognises this relay by its static IP or by the TLS client
 *   certificate it presents, and then relays to any recipient;
 * - Direct Send (mode: directSend): anonymous, so only the tenant's own mailboxes can be reached; recipients
 *   outside acceptedDomains fail here, before anything is sent. A tenant with RejectDirectSend answers 550 5.7.68.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import nodemailer, { type Transporter } from 'nodemailer';
import type { Logger } from '../../log.js';
import { SmtpError, toSmtpError } from '../../smtp-error.js';
import { probeSmtp } from '../smtp-probe.js';
import { deferRefusedSession, sendRaw, type ErrorMapper } from '../smtp-send.js';
import type { DeliveryRequest, ProbeStep, RecipientOutcome, Upstream } from '../upstream.js';
import type { M365ConnectorUpstreamConfig } from './config.js';
import { acceptsRecipient, connectorHost } from './direct-send.js';
import { classifyExchangeReply } from './exchange-replies.js';

export class M365ConnectorUpstream implements Upstream {
  readonly host: string;
  readonly #transport: Transporter;
  readonly #tls: ConnectionOptions;
  readonly #log: Logger;

  constructor(
    readonly name: string,
    readonly config: Readonly<M365ConnectorUpstreamConfig>,
    private readonly deps: { hostname: string; log: Logger },
  ) {
    this.#log = deps.log;
    this.host = connectorHost(config);
    const certificate = config.clientCertificate;
    this.#tls = {
      rejectUnauthorized: config.verifyCertificate,
      ...(isIP(this.host) ? {} : { servername: this.host }),
      ...(certificate ? { cert: readFileSync(certificate.cert), key: readFileSync(certificate.key) } : {}),
    };
    this.#transport = nodemailer.createTransport({
      pool: true,
      maxConnections: config.maxConnections,
      host: this.host,
      port: config.port,
      secure: false,
      requireTLS: config.requireTls,
      name: config.ehloName ?? deps.hostname,
      tls: this.#tls,
      connectionTimeout: config.timeout,
      greetingTimeout: config.timeout,
      socketTimeout: config.timeout,
    });
  }

  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    const outside = request.recipients.filter((r) => !acceptsRecipient(this.config, r));
    if (outside.length === 0) return sendRaw(this.#transport, request, { mapError: this.#mapError });
    const inside = request.recipients.filter((r) => acceptsRecipient(this.config, r));
    const refused = new SmtpError(
      550,
      '5.7.1',
      `upstream ${this.name} uses Direct Send, which reaches only the tenant's accepted domains (${(this.config.acceptedDomains ?? []).join(', ')}); route this recipient to another upstream`,
    );
    const sent = inside.length === 0 ? [] : await sendRaw(this.#transport, { ...request, recipients: inside }, { mapError: this.#mapError });
    const byRecipient = new Map(sent.map((o) => [o.recipient, o]));
    return request.recipients.map((recipient) => byRecipient.get(recipient) ?? { recipient, delivered: false, error: refused });
  }

  readonly #mapError: ErrorMapper = (err, origin) => {
    const classified = classifyExchangeReply(toSmtpError(err));
    if (classified.row?.action === 'bounce' && /5\.7\.68/.test(classified.error.enhanced)) {
      this.#log.error({ event: 'upstream.alert', upstream: this.name, reply: toSmtpError(err).reply }, `upstream ${this.name}: ${classified.row.explanation}`);
    }
    if (classified.row) return classified.error;
    return origin === 'session' ? deferRefusedSession(err) : classified.error;
  };

  probe(report: (step: ProbeStep) => void): Promise<boolean> {
    const target = {
      host: this.host,
      port: this.config.port,
      secure: false,
      requireTLS: this.config.requireTls,
      name: this.config.ehloName ?? this.deps.hostname,
      tls: this.#tls,
      timeout: this.config.timeout,
    };
    return probeSmtp(target, undefined, report);
  }

  /** Like the smtp upstream: connections still busy when the daemon stops are cut, their mail stays queued. */
  async close(): Promise<void> {
    this.#transport.close({ force: true });
  }
}
