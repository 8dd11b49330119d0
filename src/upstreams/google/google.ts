/**
 * `google`: Gmail / Google Workspace SMTP (smtp.gmail.com:587, STARTTLS) with SASL XOAUTH2, as the mailbox a
 * service account with domain-wide delegation impersonates: the configured one, or the envelope sender
 * (mailbox: fromSender). The spooled message goes byte for byte with an explicit envelope, through the smtp
 * upstream's connection settings and send path (smtp.ts, smtp-send.ts); only the login differs. One connection
 * per delivery, logging in with the token the mailbox's TokenSource hands out at that moment, so a long queue
 * never outlives its token. When Gmail refuses a token the cache still trusted, nodemailer asks once more in
 * the same session (its "renew" call of oauth2_provision_cb), and gets a freshly issued one.
 */
import nodemailer, { type SendMailOptions, type Transporter } from 'nodemailer';
import XOAuth2 from 'nodemailer/lib/xoauth2';
import type { Logger } from '../../log.js';
import { SmtpError, toSmtpError } from '../../smtp-error.js';
import { smtpConnectionOptions } from '../smtp.js';
import { probeSmtp } from '../smtp-probe.js';
import { deferRefusedSession, failedCommand, sendRaw, type ErrorMapper } from '../smtp-send.js';
import type { DeliveryRequest, ProbeOptions, ProbeStep, RecipientOutcome, Upstream } from '../upstream.js';
import { GMAIL_SCOPE, googleMailbox, type GoogleUpstreamConfig } from './config.js';
import { classifyGmailReply } from './gmail-replies.js';
import { ServiceAccountTokenSource, type ServiceAccountTokenSourceOptions } from './token-source.js';

export interface GoogleUpstreamOptions {
  hostname: string;
  log?: Logger;
  /** HTTP seam for the token endpoint (tests). */
  fetch?: typeof fetch;
  now?: () => number;
  onRefresh?: ServiceAccountTokenSourceOptions['onRefresh'];
}

export class GoogleUpstream implements Upstream {
  readonly #config: GoogleUpstreamConfig;
  readonly #options: GoogleUpstreamOptions;
  readonly #transport: Transporter;
  /** One token source per impersonated mailbox (lower-cased): each has its own JWT subject and cache. */
  readonly #tokens = new Map<string, ServiceAccountTokenSource>();
  /** Mailboxes whose last failure was alerted, with its reply: logged once until a delivery succeeds. */
  readonly #alerted = new Map<string, string>();
  /** Cuts connections still open when the daemon stops: their mail stays queued. */
  readonly #closing = new AbortController();

  constructor(
    readonly name: string,
    config: GoogleUpstreamConfig,
    options: GoogleUpstreamOptions,
  ) {
    this.#config = config;
    this.#options = options;
    this.#transport = nodemailer.createTransport({ pool: false, ...smtpConnectionOptions(config, options.hostname) });
    // Asked when the message's token was refused (renew) or has expired: the mailbox's source answers.
    this.#transport.set('oauth2_provision_cb', (user: string, renew: boolean, callback: (err: Error | null, token?: string, expires?: number) => void) => {
      this.#tokenSource(user)
        .getToken(GMAIL_SCOPE, { forceRefresh: renew })
        .then(
          (t) => callback(null, t.token, t.expiresAt),
          // A plain Error: nodemailer rewrites the `code` of the error it is handed. The reply survives in `response`.
          (err: unknown) => {
            const error = toSmtpError(err);
            callback(Object.assign(new Error(error.message), { responseCode: error.code, response: error.reply }));
          },
        );
    });
  }

  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    const mailbox = this.#mailboxFor(request.sender);
    // Fetched before connecting: without a token there is nothing to connect for (deferred 4.7.0, alerted).
    const token = await this.#tokenSource(mailbox).getToken(GMAIL_SCOPE);
    const auth: SendMailOptions['auth'] = { type: 'OAuth2', user: mailbox, accessToken: token.token, expires: token.expiresAt };
    const outcomes = await sendRaw(this.#transport, request, { extra: { auth, signal: this.#closing.signal }, mapError: this.#mapError(mailbox) });
    this.#alerted.delete(mailbox.toLowerCase());
    return outcomes;
  }

  /** `smarthost test-upstream`: the token for the impersonated mailbox, then connect, STARTTLS and the XOAUTH2 login. */
  async probe(report: (step: ProbeStep) => void, options: ProbeOptions = {}): Promise<boolean> {
    const mailbox = this.#config.mailbox === 'fromSender' ? (options.sender ?? '') : this.#config.mailbox;
    if (mailbox === '') {
      report({ step: 'mailbox', ok: false, detail: 'this upstream impersonates the sender (mailbox: fromSender)', fix: 'give the mailbox to test with --from ADDRESS' });
      return false;
    }
    const tokens = this.#tokenSource(mailbox);
    try {
      const token = await tokens.getToken(GMAIL_SCOPE);
      report({ step: 'token', ok: true, detail: `service account ${this.#config.serviceAccount.clientEmail} got a token for ${mailbox}, valid until ${new Date(token.expiresAt).toISOString()}` });
    } catch (err) {
      report({ step: 'token', ok: false, detail: toSmtpError(err).message, fix: DELEGATION_FIX });
      return false;
    }
    const c = smtpConnectionOptions(this.#config, this.#options.hostname);
    const target = { host: c.host, port: c.port, secure: c.secure, requireTLS: c.requireTLS, ignoreTLS: c.ignoreTLS, name: c.name, tls: c.tls, timeout: this.#config.timeout };
    return probeSmtp(
      target,
      {
        describe: `XOAUTH2 as ${mailbox}`,
        auth: async () => {
          const token = await tokens.getToken(GMAIL_SCOPE);
          return { type: 'OAuth2', user: mailbox, method: 'XOAUTH2', oauth2: new XOAuth2({ user: mailbox, accessToken: token.token, expires: token.expiresAt }) };
        },
        explain: () => DELEGATION_FIX,
      },
      report,
    );
  }

  sendsAs(sender: string): string {
    return googleMailbox(this.#config, sender);
  }

  #mailboxFor(sender: string): string {
    const mailbox = this.sendsAs(sender);
    if (mailbox === '') throw new SmtpError(550, '5.7.0', `upstream ${this.name} logs in as the sender (mailbox: fromSender) and a bounce has none: set bounceMailbox`);
    return mailbox;
  }

  #tokenSource(mailbox: string): ServiceAccountTokenSource {
    const key = mailbox.toLowerCase();
    let source = this.#tokens.get(key);
    if (!source) {
      source = new ServiceAccountTokenSource({
        account: this.#config.serviceAccount,
        subject: mailbox,
        tokenUrl: this.#config.tokenUrl,
        refreshAheadMs: this.#config.refreshAhead,
        timeoutMs: this.#config.timeout,
        upstream: this.name,
        ...(this.#options.log ? { log: this.#options.log } : {}),
        ...(this.#options.fetch ? { fetch: this.#options.fetch } : {}),
        ...(this.#options.now ? { now: this.#options.now } : {}),
        ...(this.#options.onRefresh ? { onRefresh: this.#options.onRefresh } : {}),
      });
      this.#tokens.set(key, source);
    }
    return source;
  }

  /**
   * Gmail's replies through its table (gmail-replies.ts: a daily sending limit defers, whichever command Gmail
   * refuses); anything else as the smtp upstream reads it. A login refused even with a fresh token defers and is
   * alerted (an operator must act).
   */
  #mapError(mailbox: string): ErrorMapper {
    return (err, origin) => {
      const classified = classifyGmailReply(toSmtpError(err));
      if (classified.alert) this.#alert(mailbox, classified.error, `mailbox ${mailbox}: ${classified.alert}`);
      if (classified.row || origin !== 'session') return classified.error;
      const error = deferRefusedSession(err);
      if (refusedLogin(err)) this.#alert(mailbox, error, `Google refused the XOAUTH2 login of ${mailbox}; ${DELEGATION_FIX}`);
      return error;
    };
  }

  /** Logged once per mailbox and reply, until a delivery succeeds. */
  #alert(mailbox: string, error: SmtpError, what: string): void {
    const key = mailbox.toLowerCase();
    const reply = error.cause instanceof SmtpError ? error.cause.reply : error.reply;
    if (this.#alerted.get(key) === reply) return;
    this.#alerted.set(key, reply);
    this.#options.log?.error({ event: 'upstream.alert', upstream: this.name, mailbox, reply }, `upstream ${this.name}: ${what}`);
  }

  async close(): Promise<void> {
    this.#closing.abort();
    this.#transport.close();
  }
}

const DELEGATION_FIX = 'check domain-wide delegation of the service account for https://mail.google.com/ and that the mailbox exists';

/** A login the server refused (5xx to AUTH), as opposed to a connection that failed or a token we had none of. */
function refusedLogin(err: unknown): boolean {
  const code = (err as { responseCode?: unknown } | null)?.responseCode;
  return /^AUTH\b/.test(failedCommand(err) ?? '') && typeof code === 'number' && code >= 500;
}
