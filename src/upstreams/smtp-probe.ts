/**
 * `smarthost test-upstream` for the SMTP-speaking upstreams: connect, greeting and EHLO, STARTTLS, AUTH, one
 * step at a time on a single nodemailer SMTPConnection, each reported in plain words with the likely fix.
 * Nothing is sent.
 */
import type { TLSSocket } from 'node:tls';
import type { ConnectionOptions } from 'node:tls';
import SMTPConnection, { type SMTPConnectionAuth } from 'nodemailer/lib/smtp-connection';
import { toSmtpError, type SmtpError } from '../smtp-error.js';
import { failedCommand } from './smtp-send.js';
import type { ProbeStep } from './upstream.js';

export interface SmtpProbeTarget {
  host: string;
  port: number;
  /** TLS from the first byte (port 465). */
  secure: boolean;
  requireTLS: boolean;
  /** Plain text only (security: none). */
  ignoreTLS?: boolean;
  /** EHLO name. */
  name: string;
  tls: ConnectionOptions;
  timeout: number;
}

export interface SmtpProbeLogin {
  /** "XOAUTH2 as scans@contoso.com", "LOGIN as relay@example.net". */
  describe: string;
  /** The auth object for SMTPConnection.login(); may fail (e.g. no token), reported as the AUTH step. */
  auth(): Promise<SMTPConnectionAuth>;
  /** The fix for a refused login, when the upstream knows its provider's replies. */
  explain?(error: SmtpError): string | undefined;
}

type Report = (step: ProbeStep) => void;

/** Runs the steps; resolves true when every one passed. */
export async function probeSmtp(target: SmtpProbeTarget, login: SmtpProbeLogin | undefined, report: Report): Promise<boolean> {
  const connection = new SMTPConnection({
    host: target.host,
    port: target.port,
    secure: target.secure,
    requireTLS: target.requireTLS,
    ignoreTLS: target.ignoreTLS ?? false,
    name: target.name,
    tls: target.tls,
    connectionTimeout: target.timeout,
    greetingTimeout: target.timeout,
    socketTimeout: target.timeout,
  });
  connection.on('error', () => {}); // every failure is reported through the callbacks below
  try {
    try {
      await new Promise<void>((resolve, reject) => {
        connection.once('error', reject);
        connection.connect(() => (connection.off('error', reject), resolve()));
      });
    } catch (err) {
      reportConnectFailure(target, err, report);
      return false;
    }
    report({ step: 'connect', ok: true, detail: `${target.host}:${target.port} answered the greeting and EHLO ${target.name}` });
    const socket = connection._socket as TLSSocket | false | null;
    const protocol = connection.secure && socket && typeof socket.getProtocol === 'function' ? socket.getProtocol() : null;
    if (connection.secure) {
      report({ step: target.secure ? 'TLS' : 'STARTTLS', ok: true, detail: `encrypted with ${protocol ?? 'TLS'}` });
    } else if (!target.ignoreTLS) {
      report({ step: 'STARTTLS', ok: true, detail: 'not offered by the server: the session stays unencrypted (requireTls is off)' });
    }
    if (!login) return true;
    return await authenticate(connection, login, report);
  } finally {
    connection.close();
  }
}

async function authenticate(connection: SMTPConnection, login: SmtpProbeLogin, report: Report): Promise<boolean> {
  let auth: SMTPConnectionAuth;
  try {
    auth = await login.auth();
  } catch (err) {
    report({ step: 'AUTH', ok: false, detail: toSmtpError(err).message });
    return false;
  }
  try {
    await new Promise<void>((resolve, reject) => connection.login(auth, (err) => (err ? reject(err) : resolve())));
  } catch (err) {
    const error = toSmtpError(err);
    const fix = login.explain?.(error) ?? 'check the user name and the password (or the app\'s permissions)';
    report({ step: 'AUTH', ok: false, detail: `${login.describe} refused: ${error.reply}`, fix });
    return false;
  }
  report({ step: 'AUTH', ok: true, detail: `${login.describe} accepted` });
  return true;
}

function reportConnectFailure(target: SmtpProbeTarget, err: unknown, report: Report): void {
  const error = toSmtpError(err);
  const command = failedCommand(err) ?? 'CONN';
  const code = (err as { code?: unknown }).code;
  const text = `${error.message}${error.code < 451 || error.code >= 500 ? ` (${error.reply})` : ''}`;
  if (command === 'STARTTLS' || /certificate|self[- ]signed|TLS|SSL/i.test(String(error.message)) || code === 'ETLS') {
    report({ step: 'connect', ok: true, detail: `${target.host}:${target.port} answered` });
    report({
      step: 'STARTTLS',
      ok: false,
      detail: text,
      fix: /certificate|self[- ]signed/i.test(error.message)
        ? `the server's certificate failed verification: the host must be the name on its certificate (${target.host}); verifyCertificate: false only for a test server`
        : 'the server did not offer STARTTLS or the TLS handshake failed: check the port (587 and 25 use STARTTLS, 465 implicit TLS)',
    });
    return;
  }
  if (command === 'CONN' || command === 'GREETING') {
    report({
      step: 'connect',
      ok: false,
      detail: `${target.host}:${target.port}: ${text}`,
      fix: /ENOTFOUND|EAI_AGAIN/.test(text)
        ? `the name ${target.host} does not resolve: check host (and DNS on this machine)`
        : `check host and port, and that the firewall lets this machine reach ${target.host} on TCP port ${target.port} (many networks block outbound port 25)`,
    });
    return;
  }
  report({ step: command, ok: false, detail: `${target.host}:${target.port}: ${text}`, fix: 'the server refused the session before login: check ehloName and the port' });
}
