/**
 * `m365-smtp`: Exchange Online SMTP AUTH client submission (smtp.office365.com:587, STARTTLS, then AUTH
 * XOAUTH2 with an app token for https://outlook.office365.com/.default), following "Authenticate an IMAP,
 * POP or SMTP connection using OAuth" (client-credentials flow, SMTP.SendAsApp):
 * https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
 *
 * One connection per delivery, at most maxConnectionsPerMailbox at once per mailbox (Exchange Online allows
 * 3). Each connection logs in with the token the app's TokenSource hands out at that moment (msal's cache
 * answers until shortly before expiry), so a long queue never outlives its token; a login refused with a
 * token the cache still trusts is retried once with a freshly issued one.
 */
import { isIP } from 'node:net';
import nodemailer, { type SendMailOptions, type Transporter } from 'nodemailer';
import XOAuth2 from 'nodemailer/lib/xoauth2';
import type { Logger } from '../../log.js';
import { SmtpError, toSmtpError } from '../../smtp-error.js';
import { KeyedLimit } from '../keyed-limit.js';
import type { MicrosoftApps } from '../oauth/msal.js';
import type { TokenSource } from '../oauth/token-source.js';
import { probeSmtp, type SmtpProbeLogin } from '../smtp-probe.js';
import { deferRefusedSession, failedCommand, sendRaw, type ErrorMapper } from '../smtp-send.js';
import type { DeliveryRequest, ProbeOptions, ProbeStep, RecipientOutcome, Upstream } from '../upstream.js';
import { m365SmtpMailbox, type M365SmtpUpstreamConfig } from './config.js';
import { BASIC_AUTH_RETIREMENT, classifyExchangeReply, type ExchangeLogin } from './exchange-replies.js';

export interface M365Deps {
  hostname: string;
  log: Logger;
  microsoft: MicrosoftApps;
}

export class M365SmtpUpstream implements Upstream {
  readonly #transport: Transporter;
  readonly #limit: KeyedLimit;
  readonly #tokens: TokenSource | undefined;
  readonly #log: Logger;
  /** Which Exchange replies' explanations fit: a refused password is not a refused app. */
  readonly #login: ExchangeLogin;
  /** Mailboxes whose last failure was logged as an alert, with its reply: logged once, until a delivery succeeds. */
  readonly #alerted = new Map<string, string>();
  /** Cuts connections still open when the daemon stops (a stalled Exchange): their mail stays queued. */
  readonly #closing = new AbortController();

  constructor(
    readonly name: string,
    readonly config: Readonly<M365SmtpUpstreamConfig>,
    private readonly deps: M365Deps,
  ) {
    this.#log = deps.log;
    this.#limit = new KeyedLimit(config.maxConnectionsPerMailbox);
    this.#tokens = config.app === undefined ? undefined : deps.microsoft.tokenSource(config.app);
    const basic = config.legacyBasicAuth;
    this.#login = basic ? 'legacyBasicAuth' : 'app';
    this.#transport = nodemailer.createTransport({
      pool: false,
      host: config.host,
      port: config.port,
      secure: false,
      requireTLS: true,
      // Log in even when AUTH is not advertised: Exchange then says why, instead of mail going out unauthenticated.
      forceAuth: true,
      name: config.ehloName ?? deps.hostname,
      tls: { rejectUnauthorized: config.verifyCertificate, ...(isIP(config.host) ? {} : { servername: config.host }) },
      connectionTimeout: config.timeout,
      greetingTimeout: config.timeout,
      socketTimeout: config.timeout,
      ...(basic ? { auth: { user: basic.user, pass: basic.pass.reveal() } } : {}),
    });
    if (basic) {
      this.#log.warn(
        { event: 'config.warning', upstream: name, mailbox: basic.user },
        `upstream ${name}: legacyBasicAuth sends a password; Microsoft disables Basic auth for SMTP AUTH client submission by default at ${BASIC_AUTH_RETIREMENT}: move to an app under microsoft.apps (OAuth)`,
      );
    }
  }

  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    const mailbox = this.#mailboxFor(request.sender);
    return this.#limit.run(mailbox.toLowerCase(), () => this.#send(request, mailbox, false));
  }

  async #send(request: DeliveryRequest, mailbox: string, freshToken: boolean): Promise<RecipientOutcome[]> {
    const auth = await this.#auth(mailbox, freshToken);
    const extra: Partial<SendMailOptions> = { signal: this.#closing.signal, ...(auth ? { auth } : {}) };
    try {
      const outcomes = await sendRaw(this.#transport, request, { extra, mapError: this.#mapError(mailbox) });
      this.#alerted.delete(mailbox.toLowerCase());
      return outcomes;
    } catch (err) {
      if (this.#tokens && !freshToken && refusedLogin(err)) return this.#send(request, mailbox, true);
      throw err;
    }
  }

  /** The per-message XOAUTH2 login, or none (legacyBasicAuth logs in with the transport's user and password). */
  async #auth(mailbox: string, freshToken: boolean): Promise<SendMailOptions['auth'] | undefined> {
    if (!this.#tokens) return undefined;
    const token = await this.#tokens.getToken(this.config.scope, { forceRefresh: freshToken });
    return { type: 'OAuth2', user: mailbox, accessToken: token.token, expires: token.expiresAt };
  }

  sendsAs(sender: string): string {
    return m365SmtpMailbox(this.config, sender);
  }

  #mailboxFor(sender: string): string {
    const mailbox = this.sendsAs(sender);
    if (mailbox === '') {
      throw new SmtpError(550, '5.7.0', `upstream ${this.name} logs in as the sender (mailbox: fromSender), and a bounce has none: route bounces to an upstream with a fixed mailbox`);
    }
    return mailbox;
  }

  /** Exchange's replies through the table; anything else as the smtp upstream reads it. */
  #mapError(mailbox: string): ErrorMapper {
    return (err, origin) => {
      const classified = classifyExchangeReply(toSmtpError(err), this.#login);
      if (classified.alert) this.#raiseAlert(mailbox, classified.error, classified.alert);
      if (classified.row) return classified.error;
      return origin === 'session' ? deferRefusedSession(err) : classified.error;
    };
  }

  #raiseAlert(mailbox: string, error: SmtpError, fix: string): void {
    const key = mailbox.toLowerCase();
    const reply = error.cause instanceof SmtpError ? error.cause.reply : error.reply;
    if (this.#alerted.get(key) === reply) return;
    this.#alerted.set(key, reply);
    this.#log.error({ event: 'upstream.alert', upstream: this.name, mailbox, reply }, `upstream ${this.name}, mailbox ${mailbox}: ${fix}`);
  }

  async probe(report: (step: ProbeStep) => void, options: ProbeOptions = {}): Promise<boolean> {
    // A fixed mailbox (or legacyBasicAuth's user) is tested as configured; fromSender needs one to test.
    const mailbox = this.config.legacyBasicAuth?.user ?? (this.config.mailbox === 'fromSender' ? (options.sender ?? '') : this.config.mailbox);
    if (mailbox === '') {
      report({ step: 'mailbox', ok: false, detail: 'this upstream logs in as the sender (mailbox: fromSender)', fix: 'give the mailbox to test with --from ADDRESS' });
      return false;
    }
    if (this.#tokens) {
      try {
        const token = await this.#tokens.getToken(this.config.scope);
        report({ step: 'token', ok: true, detail: `app ${this.config.app} got a token for ${this.config.scope}, valid until ${new Date(token.expiresAt).toISOString()}` });
      } catch (err) {
        report({ step: 'token', ok: false, detail: toSmtpError(err).message });
        return false;
      }
    }
    const login: SmtpProbeLogin = {
      describe: `${this.#tokens ? 'XOAUTH2' : 'Basic auth (legacyBasicAuth)'} as ${mailbox}`,
      auth: async () => {
        const basic = this.config.legacyBasicAuth;
        if (basic) return { user: basic.user, pass: basic.pass.reveal() };
        const token = await this.#tokens!.getToken(this.config.scope);
        return { type: 'OAuth2', user: mailbox, method: 'XOAUTH2', oauth2: new XOAuth2({ user: mailbox, accessToken: token.token, expires: token.expiresAt }) };
      },
      explain: (error) => classifyExchangeReply(error, this.#login).row?.explanation,
    };
    const target = {
      host: this.config.host,
      port: this.config.port,
      secure: false,
      requireTLS: true,
      name: this.config.ehloName ?? this.deps.hostname,
      tls: { rejectUnauthorized: this.config.verifyCertificate, ...(isIP(this.config.host) ? {} : { servername: this.config.host }) },
      timeout: this.config.timeout,
    };
    return probeSmtp(target, login, report);
  }

  async close(): Promise<void> {
    this.#closing.abort();
    this.#transport.close();
  }
}

/** A login Exchange refused (535), found in the cause chain of the SmtpError sendRaw threw. */
function refusedLogin(err: unknown): boolean {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    const command = failedCommand(e);
    if (command !== undefined) return command.startsWith('AUTH') && (e as { responseCode?: unknown }).responseCode === 535;
  }
  return false;
}
