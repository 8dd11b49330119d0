import { isIP } from 'node:net';
import nodemailer, { type Transporter } from 'nodemailer';
import type { SmtpUpstreamConfig } from '../config/schema.js';
import { probeSmtp, type SmtpProbeTarget } from './smtp-probe.js';
import { sendRaw } from './smtp-send.js';
import type { DeliveryRequest, ProbeStep, RecipientOutcome, Upstream } from './upstream.js';

const DEFAULT_PORT = { none: 25, starttls: 587, tls: 465 } as const;

/** The settings an SMTP-speaking upstream shares with `smtp` (host, port, TLS, EHLO name, timeouts). */
export type SmtpConnectionSettings = Pick<SmtpUpstreamConfig, 'host' | 'port' | 'security' | 'ehloName' | 'verifyCertificate' | 'timeout'>;

/**
 * nodemailer's connection options for those settings; upstreams that log in their own way (google: XOAUTH2 per
 * message) add auth and pooling to them.
 */
export function smtpConnectionOptions(config: SmtpConnectionSettings, hostname: string) {
  return {
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
  };
}

/**
 * Any SMTP server, through a pool of nodemailer connections. The spooled message is sent byte for byte
 * with an explicit envelope, so headers never decide who receives it.
 */
export class SmtpUpstream implements Upstream {
  readonly #transport: Transporter;
  readonly #target: SmtpProbeTarget;

  constructor(
    readonly name: string,
    private readonly config: SmtpUpstreamConfig,
    hostname: string,
  ) {
    this.#target = {
      host: config.host,
      port: config.port ?? DEFAULT_PORT[config.security],
      secure: config.security === 'tls',
      requireTLS: config.security === 'starttls',
      ignoreTLS: config.security === 'none',
      name: config.ehloName ?? hostname,
      tls: { rejectUnauthorized: config.verifyCertificate, ...(isIP(config.host) ? {} : { servername: config.host }) },
      timeout: config.timeout,
    };
    this.#transport = nodemailer.createTransport({
      pool: true,
      maxConnections: config.maxConnections,
      ...smtpConnectionOptions(config, hostname),
      ...(config.auth ? { auth: { user: config.auth.user, pass: config.auth.pass.reveal() }, authMethod: config.auth.method } : {}),
    });
  }

  deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    return sendRaw(this.#transport, request);
  }

  probe(report: (step: ProbeStep) => void): Promise<boolean> {
    const auth = this.config.auth;
    const login = auth && {
      describe: `${auth.method} as ${auth.user}`,
      auth: async () => ({ user: auth.user, pass: auth.pass.reveal(), method: auth.method }),
    };
    return probeSmtp(this.#target, login, report);
  }

  /**
   * Called when the daemon stops, after deliveries had their shutdown timeout: a connection still busy
   * (a stalled upstream) is cut too, its message fails temporarily and stays queued, and the process can exit.
   */
  async close(): Promise<void> {
    this.#transport.close({ force: true });
  }
}
