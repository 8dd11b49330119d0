/**
 * A stand-in for a tenant's Exchange Online MX endpoint (contoso-com.mail.protection.outlook.com:25) as a
 * relay reaches it without AUTH, on 127.0.0.1 with smtp-server. Follows "How to set up a multifunction device
 * or application to send email using Microsoft 365" (option 2: Direct Send, option 3: connector relay):
 * https://learn.microsoft.com/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
 * - STARTTLS is offered; a TLS client certificate is asked for (not required) so a certificate-based partner
 *   inbound connector (TlsSenderCertificateName) can recognise the relay;
 * - a session a connector recognises may relay to any recipient;
 * - an anonymous session is Direct Send: recipients outside the tenant's accepted domains get 550 5.7.54
 *   (Unable to relay recipient in non-accepted domain); with RejectDirectSend on, a sender in an accepted
 *   domain gets 550 5.7.68 (Set-OrganizationConfig -RejectDirectSend $true: "anonymous messages sent from your
 *   own domain ... that don't match any inbound connector" are rejected).
 *   https://learn.microsoft.com/powershell/module/exchange/set-organizationconfig (RejectDirectSend)
 */
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import { makeTestCertificate } from '../helpers/tls.js';

export interface MxDelivery {
  sender: string;
  recipients: string[];
  raw: Buffer;
  secure: boolean;
  helo: string;
  /** The connector that recognised the session, if any. */
  connector?: string;
}

export interface FakeMx {
  port: number;
  deliveries: MxDelivery[];
  refusals: { stage: 'mail' | 'rcpt'; address: string; reply: string }[];
  /** Set-OrganizationConfig -RejectDirectSend */
  rejectDirectSend: boolean;
  waitUntil(done: () => boolean, what: string, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export interface FakeMxOptions {
  acceptedDomains: string[];
  /** Certificate-based inbound connectors: name -> the certificate subject CN / SAN the connector expects. */
  certificateConnectors?: Record<string, string>;
  rejectDirectSend?: boolean;
}

type Reply = Error & { responseCode: number };
const reply = (code: number, text: string): Reply => Object.assign(new Error(text), { responseCode: code });

export async function startFakeMx(options: FakeMxOptions): Promise<FakeMx> {
  const cert = await makeTestCertificate();
  const accepted = new Set(options.acceptedDomains.map((d) => d.toLowerCase()));
  const waiters = new Set<() => void>();
  const notify = () => [...waiters].forEach((w) => w());
  const domainOf = (address: string) => address.slice(address.lastIndexOf('@') + 1).toLowerCase();

  /** The connector that recognises this session by its client certificate, if any. */
  function connectorOf(session: SMTPServerSession): string | undefined {
    const socket = [...server.connections].find((c) => c.session === session)?._socket as TLSSocket | undefined;
    const peer = session.secure && socket && typeof socket.getPeerCertificate === 'function' ? socket.getPeerCertificate() : undefined;
    if (!peer || !peer.subject) return undefined;
    const names = [peer.subject.CN, ...(peer.subjectaltname ?? '').split(/,\s*/).map((n) => n.replace(/^DNS:/, ''))].filter(Boolean);
    return Object.entries(options.certificateConnectors ?? {}).find(([, expected]) => names.includes(expected))?.[0];
  }

  const mx: FakeMx = {
    port: 0,
    deliveries: [],
    refusals: [],
    rejectDirectSend: options.rejectDirectSend ?? false,
    waitUntil(done, what, timeoutMs = 15_000) {
      if (done()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const check = () => done() && (cleanup(), resolve());
        const timer = setTimeout(() => (cleanup(), reject(new Error(`fake MX: timed out after ${timeoutMs} ms waiting for ${what}`))), timeoutMs);
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
    name: 'contoso-com.mail.protection.outlook.com',
    banner: 'Microsoft ESMTP MAIL Service ready (fake MX)',
    disableReverseLookup: true,
    key: cert.key,
    cert: cert.cert,
    requestCert: true,
    rejectUnauthorized: false,
    authOptional: true,
    disabledCommands: ['AUTH'],
    closeTimeout: 100,

    onMailFrom(address, session, callback) {
      if (!connectorOf(session) && mx.rejectDirectSend && accepted.has(domainOf(address.address))) {
        const err = reply(550, '5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources');
        mx.refusals.push({ stage: 'mail', address: address.address, reply: `550 ${err.message}` });
        notify();
        return callback(err);
      }
      callback();
    },

    onRcptTo(address, session, callback) {
      if (!connectorOf(session) && !accepted.has(domainOf(address.address))) {
        const err = reply(550, '5.7.54 SMTP; Unable to relay recipient in non-accepted domain');
        mx.refusals.push({ stage: 'rcpt', address: address.address, reply: `550 ${err.message}` });
        notify();
        return callback(err);
      }
      callback();
    },

    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const connector = connectorOf(session);
        mx.deliveries.push({
          sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          recipients: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks),
          secure: session.secure,
          helo: session.hostNameAppearsAs,
          ...(connector ? { connector } : {}),
        });
        callback(null, `2.6.0 <${mx.deliveries.length}@fake> [InternalId=1] Queued mail for delivery`);
        notify();
      });
    },
  });
  server.on('error', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  mx.port = (server.server.address() as AddressInfo).port;
  return mx;
}
