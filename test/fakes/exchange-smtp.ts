/**
 * A stand-in for Exchange Online SMTP AUTH client submission (smtp.office365.com:587), built on smtp-server
 * and bound to 127.0.0.1. What it does, and the documentation it follows:
 * - STARTTLS first; AUTH (LOGIN, XOAUTH2) is offered only on the encrypted session, as on smtp.office365.com
 *   ("How to set up a multifunction device or application to send email using Microsoft 365", option 1:
 *   port 587, STARTTLS, TLS 1.2).
 *   https://learn.microsoft.com/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
 * - XOAUTH2 ("user=MAILBOX^Aauth=Bearer TOKEN^A^A") is accepted only with a live token from the fake identity
 *   provider, issued for https://outlook.office365.com/.default to an app of this tenant that was given the
 *   mailbox (SMTP.SendAsApp + New-ServicePrincipal + Add-MailboxPermission); anything else is 535 5.7.3
 *   Authentication unsuccessful. A mailbox with SMTP AUTH disabled answers 535 5.7.139.
 *   https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
 * - Basic auth (LOGIN/PLAIN) answers 550 5.7.30 (not supported for client submission) unless enabled, as it
 *   will be by default once Microsoft retires it (end of December 2026).
 * - Sending limits ("Exchange Online limits", sending limits; "SMTP AUTH client submission limits"):
 *   30 messages a minute per mailbox, then 554 5.2.0 STOREDRV.Submission.Exception:
 *   SubmissionQuotaExceededException; 3 concurrent connections per mailbox, then 432 4.3.2
 *   STOREDRV.ClientSubmit; sender thread limit exceeded.
 *   https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#sending-limits-1
 * - The authenticated mailbox may send as itself or as addresses it has SendAs on, else 550 5.7.60 SMTP;
 *   Client does not have permissions to send as this sender.
 * - Any reply on command (script()): 5.2.251-255 continuous-error throttling, 5.7.3, 5.7.139 and the rest.
 *   https://learn.microsoft.com/exchange/mail-flow-best-practices/continuous-error-throttling-smtp-auth-submissions
 * Its clock is the identity provider's, so advancing one ages tokens and rate windows together.
 */
import type { AddressInfo } from 'node:net';
import { SMTPServer, type SMTPServerAuthentication, type SMTPServerSession } from 'smtp-server';
import { makeTestCertificate } from '../helpers/tls.js';
import type { FakeIdentityProvider } from './identity-provider.js';

export const EXCHANGE_SCOPE = 'https://outlook.office365.com/.default';

export interface ExchangeMailbox {
  address: string;
  /** Client IDs of apps whose service principal has FullAccess to this mailbox. */
  apps?: string[];
  /** Basic auth password (only used when basicAuth is enabled). */
  password?: string;
  /** Set-CASMailbox -SmtpClientAuthenticationDisabled $true */
  smtpAuthDisabled?: boolean;
  /** Addresses this mailbox may send as (besides its own). */
  sendAs?: string[];
}

export type Stage = 'auth' | 'mail' | 'rcpt' | 'data';

export interface ScriptedReply {
  stage: Stage;
  /** "550 5.7.60 SMTP; Client does not have permissions to send as this sender" */
  reply: string;
  /** Only for this mailbox (the AUTH user) / this recipient. */
  mailbox?: string;
  recipient?: string;
  /** How many times; default 1. */
  times?: number;
}

export interface ExchangeDelivery {
  mailbox: string;
  method: string;
  token?: string;
  sender: string;
  recipients: string[];
  raw: Buffer;
  secure: boolean;
}

export interface FakeExchange {
  port: number;
  deliveries: ExchangeDelivery[];
  /** Every refused login: who, how, and the reply. */
  authFailures: { user: string; method: string; reply: string }[];
  /** Every reply other than 2xx/3xx the fake sent after AUTH, in order (throttling, scripted ones). */
  refusals: { mailbox: string; stage: Stage; reply: string }[];
  /** Highest number of simultaneous authenticated sessions seen per mailbox. */
  peakSessions: Map<string, number>;
  script(reply: ScriptedReply): void;
  /** While held, a finished DATA is not answered until release(); held() counts those waiting. */
  hold(): void;
  held(): number;
  release(): void;
  waitUntil(done: () => boolean, what: string, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export interface FakeExchangeOptions {
  idp: FakeIdentityProvider;
  tenantId: string;
  mailboxes: ExchangeMailbox[];
  basicAuth?: boolean;
  messagesPerMinute?: number;
  sessionsPerMailbox?: number;
}

type Reply = Error & { responseCode: number };

function reply(text: string): Reply {
  const m = /^(\d{3}) ([\s\S]*)$/.exec(text);
  return Object.assign(new Error(m ? m[2]! : text), { responseCode: m ? Number(m[1]) : 550 });
}

export async function startFakeExchange(options: FakeExchangeOptions): Promise<FakeExchange> {
  const cert = await makeTestCertificate();
  const { idp } = options;
  const perMinute = options.messagesPerMinute ?? 30;
  const sessionsPerMailbox = options.sessionsPerMailbox ?? 3;
  const mailboxes = new Map(options.mailboxes.map((m) => [m.address.toLowerCase(), m]));
  const sessions = new Map<string, Set<string>>(); // mailbox -> session ids
  const submissions = new Map<string, number[]>(); // mailbox -> submission times
  const scripted: ScriptedReply[] = [];
  const tokensBySession = new Map<string, string>();
  const waiters = new Set<() => void>();
  let holding = false;
  const heldReplies: (() => void)[] = [];

  const fake: FakeExchange = {
    port: 0,
    deliveries: [],
    authFailures: [],
    refusals: [],
    peakSessions: new Map(),
    script: (r) => void scripted.push({ times: 1, ...r }),
    hold: () => void (holding = true),
    held: () => heldReplies.length,
    release() {
      holding = false;
      for (const r of heldReplies.splice(0)) r();
    },
    waitUntil(done, what, timeoutMs = 15_000) {
      if (done()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const check = () => done() && (cleanup(), resolve());
        const timer = setTimeout(() => (cleanup(), reject(new Error(`fake Exchange: timed out after ${timeoutMs} ms waiting for ${what}`))), timeoutMs);
        const cleanup = () => (clearTimeout(timer), waiters.delete(check));
        waiters.add(check);
      });
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const c of server.connections) c._socket.destroy();
      }),
  };
  const notify = () => [...waiters].forEach((w) => w());

  /** Sessions of the mailbox whose client has not hung up (a closing one may not have reached onClose yet). */
  function openSessions(mailbox: string): number {
    const ids = sessions.get(mailbox) ?? new Set<string>();
    return [...server.connections].filter((c) => ids.has(c.id) && !c._socket.readableEnded && !c._socket.destroyed).length;
  }

  /** The scripted reply for this stage, if one is due (consumed). */
  function scriptedFor(stage: Stage, mailbox: string, recipient?: string): Reply | undefined {
    const i = scripted.findIndex(
      (s) => s.stage === stage && (s.mailbox === undefined || s.mailbox.toLowerCase() === mailbox.toLowerCase()) && (s.recipient === undefined || s.recipient === recipient),
    );
    if (i < 0) return undefined;
    const s = scripted[i]!;
    if (--s.times! <= 0) scripted.splice(i, 1);
    return reply(s.reply);
  }

  function refuse(session: SMTPServerSession, stage: Stage, err: Reply): Reply {
    fake.refusals.push({ mailbox: mailboxOf(session), stage, reply: `${err.responseCode} ${err.message}` });
    notify();
    return err;
  }

  function authenticate(auth: SMTPServerAuthentication, session: SMTPServerSession): Reply | string {
    const user = (auth.username ?? '').toLowerCase();
    const scriptedReply = scriptedFor('auth', user);
    if (scriptedReply) return scriptedReply;
    const mailbox = mailboxes.get(user);
    if (auth.method === 'XOAUTH2') {
      const token = auth.accessToken ? idp.introspect(auth.accessToken) : undefined;
      if (mailbox?.smtpAuthDisabled) return reply('535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.');
      if (!token || !mailbox || token.tenantId !== options.tenantId || token.scope !== EXCHANGE_SCOPE || !(mailbox.apps ?? []).includes(token.clientId)) {
        return reply('535 5.7.3 Authentication unsuccessful [SN4PR0201CA0042.namprd02.prod.outlook.com]');
      }
      tokensBySession.set(session.id, auth.accessToken!);
      return user;
    }
    if (!options.basicAuth) return reply('550 5.7.30 Basic authentication is not supported for Client Submission.');
    if (mailbox?.smtpAuthDisabled) return reply('535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.');
    if (!mailbox?.password || mailbox.password !== auth.password) return reply('535 5.7.3 Authentication unsuccessful');
    return user;
  }

  const server: SMTPServer = new SMTPServer({
    logger: false,
    name: 'AM0PR01CA0001.outlook.office365.com',
    banner: 'Microsoft ESMTP MAIL Service ready (fake)',
    disableReverseLookup: true,
    key: cert.key,
    cert: cert.cert,
    authMethods: ['LOGIN', 'XOAUTH2'],
    allowInsecureAuth: false,
    closeTimeout: 100,

    onAuth(auth, session, callback) {
      const result = authenticate(auth, session);
      if (typeof result !== 'string') {
        fake.authFailures.push({ user: auth.username ?? '', method: auth.method, reply: `${result.responseCode} ${result.message}` });
        notify();
        return callback(result);
      }
      const open = sessions.get(result) ?? new Set<string>();
      open.add(session.id);
      sessions.set(result, open);
      fake.peakSessions.set(result, Math.max(fake.peakSessions.get(result) ?? 0, open.size));
      callback(null, { user: result });
    },

    onMailFrom(address, session, callback) {
      const mailbox = mailboxOf(session);
      if (!mailbox) return callback(reply('530 5.7.57 Client not authenticated to send mail. [fake]'));
      const scriptedReply = scriptedFor('mail', mailbox);
      if (scriptedReply) return callback(refuse(session, 'mail', scriptedReply));
      if (openSessions(mailbox) > sessionsPerMailbox) {
        return callback(refuse(session, 'mail', reply('432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=FAKE]')));
      }
      const sender = address.address.toLowerCase();
      const box = mailboxes.get(mailbox);
      if (sender !== mailbox && !(box?.sendAs ?? []).map((a) => a.toLowerCase()).includes(sender)) {
        return callback(refuse(session, 'mail', reply('550 5.7.60 SMTP; Client does not have permissions to send as this sender [FAKE]')));
      }
      callback();
    },

    onRcptTo(address, session, callback) {
      const scriptedReply = scriptedFor('rcpt', mailboxOf(session), address.address);
      callback(scriptedReply ? refuse(session, 'rcpt', scriptedReply) : undefined);
    },

    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const mailbox = mailboxOf(session);
        const answer = () => {
          const scriptedReply = scriptedFor('data', mailbox);
          if (scriptedReply) return callback(refuse(session, 'data', scriptedReply));
          const now = idp.now();
          const recent = (submissions.get(mailbox) ?? []).filter((t) => t > now - 60_000);
          if (recent.length >= perMinute) {
            submissions.set(mailbox, recent);
            return callback(
              refuse(session, 'data', reply('554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message Cannot submit message. [FAKE]')),
            );
          }
          submissions.set(mailbox, [...recent, now]);
          const token = tokensBySession.get(session.id);
          fake.deliveries.push({
            mailbox,
            method: token ? 'XOAUTH2' : 'LOGIN',
            ...(token ? { token } : {}),
            sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
            recipients: session.envelope.rcptTo.map((r) => r.address),
            raw: Buffer.concat(chunks),
            secure: session.secure,
          });
          callback(null, `2.0.0 OK <${fake.deliveries.length}@fake.outlook.com> [Hostname=FAKE]`);
          notify();
        };
        if (holding) {
          heldReplies.push(answer);
          notify();
        } else answer();
      });
    },

    onClose(session) {
      tokensBySession.delete(session.id);
      for (const open of sessions.values()) open.delete(session.id);
    },
  });
  server.on('error', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  fake.port = (server.server.address() as AddressInfo).port;
  return fake;
}

function mailboxOf(session: SMTPServerSession): string {
  return typeof session.user === 'string' ? session.user : '';
}
