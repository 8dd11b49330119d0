/**
 * A local stand-in for smtp.gmail.com:587 that accepts SASL XOAUTH2 only, and only with access tokens the
 * fake token endpoint issued for the user named in the login. Following Google's "OAuth 2.0 Mechanism"
 * (https://developers.google.com/workspace/gmail/imap/xoauth2-protocol): the client sends
 * base64("user=" {User} "^Aauth=Bearer " {Access Token} "^A^A"); a refused token is answered 334 with a
 * base64 JSON error ({"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}), the client sends
 * an empty line, and the server closes the exchange with 535 5.7.8. STARTTLS is offered (and required for AUTH)
 * as Gmail does on port 587. Built on smtp-server like test/helpers/sink.ts.
 * A user in `overDailyLimit` has used up Gmail's daily sending limit: the message is read, then refused with
 * 550 5.4.5 Daily user sending limit exceeded, as listed in "Gmail SMTP errors and codes"
 * (https://support.google.com/a/answer/3726730); "Gmail sending limits in Google Workspace"
 * (https://support.google.com/a/answer/166852) says the user can send again within 24 hours.
 */
import type { AddressInfo } from 'node:net';
import { SMTPServer, type SMTPServerDataStream } from 'smtp-server';
import { makeTestCertificate } from '../helpers/tls.js';
import type { GoogleTokenFake } from './google-token.js';

export interface GmailMessage {
  /** The mailbox that logged in. */
  user: string;
  sender: string;
  recipients: string[];
  raw: Buffer;
}

export interface GmailSmtpFake {
  port: number;
  messages: GmailMessage[];
  /** Logins, in order: who tried, and whether the token was accepted. */
  logins: { user: string; ok: boolean; tls: boolean }[];
  /** Users refused whatever their token (a suspended account, SMTP turned off for the user). */
  refused: Set<string>;
  /** Users who reached their daily sending limit: each message is refused after DATA with 550 5.4.5. */
  overDailyLimit: Set<string>;
  waitForMessages(n: number, timeoutMs?: number): Promise<GmailMessage[]>;
  close(): Promise<void>;
}

export async function startGmailSmtpFake(tokens: Pick<GoogleTokenFake, 'isValid'>): Promise<GmailSmtpFake> {
  const cert = await makeTestCertificate();
  const waiters = new Set<() => void>();
  const fake: GmailSmtpFake = {
    port: 0,
    messages: [],
    logins: [],
    refused: new Set(),
    overDailyLimit: new Set(),
    waitForMessages(n, timeoutMs = 10_000) {
      if (fake.messages.length >= n) return Promise.resolve(fake.messages.slice());
      return new Promise((resolve, reject) => {
        const check = () => {
          if (fake.messages.length >= n) (cleanup(), resolve(fake.messages.slice()));
        };
        const timer = setTimeout(() => (cleanup(), reject(new Error(`gmail fake: ${fake.messages.length} of ${n} messages after ${timeoutMs} ms; logins ${JSON.stringify(fake.logins)}`))), timeoutMs);
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

  const server: SMTPServer = new SMTPServer({
    logger: false,
    name: 'smtp.gmail.test',
    disableReverseLookup: true,
    key: cert.key,
    cert: cert.cert,
    authMethods: ['XOAUTH2'],
    // Gmail offers AUTH only after STARTTLS on port 587.
    allowInsecureAuth: false,
    closeTimeout: 100,
    onAuth(auth, session, callback) {
      const user = auth.username ?? '';
      const ok = auth.method === 'XOAUTH2' && typeof auth.accessToken === 'string' && tokens.isValid(auth.accessToken, user) && !fake.refused.has(user.toLowerCase());
      fake.logins.push({ user, ok, tls: session.secure });
      if (ok) return callback(null, { user });
      return callback(null, { data: { status: '400', schemes: 'Bearer', scope: 'https://mail.google.com/' } });
    },
    onMailFrom(_address, session, callback) {
      if (!session.user) return callback(Object.assign(new Error('5.7.0 Authentication Required'), { responseCode: 530 }));
      callback();
    },
    onData(stream: SMTPServerDataStream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        if (fake.overDailyLimit.has(String(session.user).toLowerCase())) {
          const limit = 'Daily user sending limit exceeded. For more information on Gmail sending limits go to https://support.google.com/a/answer/166852 - gsmtp';
          return callback(Object.assign(new Error(`5.4.5 ${limit}`), { responseCode: 550 }));
        }
        fake.messages.push({
          user: String(session.user),
          sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          recipients: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks),
        });
        callback(null, `2.0.0 OK gmail-${fake.messages.length} - gsmtp`);
        for (const w of [...waiters]) w();
      });
    },
  });
  server.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => (server.off('error', reject), resolve()));
  });
  fake.port = (server.server.address() as AddressInfo).port;
  return fake;
}
