/**
 * An upstream SMTP server whose failures are scripted per connection, per recipient and per transaction,
 * for tests that prove smarthost loses nothing when its upstream misbehaves.
 *
 * Built on smtp-server, bound to 127.0.0.1 on a free port. Each hook is asked at its stage and answers
 * what happens there:
 *   - connection(n):            'reject421' answers the greeting with 421 4.3.2 and closes;
 *   - recipient(addr, att, ..): '452' (452 4.2.2 mailbox full) or '550' (550 5.1.1 no such user) at RCPT TO;
 *   - data(sender, att, ..):    '451' after the data (451 4.3.0), 'drop' (socket destroyed at the first data
 *                               chunk, mid-DATA), or 'stall' (the data is read and never answered, until the
 *                               client hangs up).
 * `att` counts how often that recipient (lower-cased) or that sender was offered so far, from 1, so a
 * transient fault can go away after a bounded number of occurrences.
 *
 * Only a transaction answered with 250 counts as delivered; every fault that fired is counted by kind.
 */
import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';
import type { SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import { extractMessageId } from '../helpers/sink.js';

export type ConnectionFault = 'ok' | 'reject421';
export type RecipientFault = 'ok' | '452' | '550';
export type DataFault = 'ok' | '451' | 'drop' | 'stall';
export type FaultKind = 'greeting421' | 'rcpt452' | 'rcpt550' | 'data451' | 'dropMidData' | 'stall';

export interface FaultScript {
  connection?(n: number): ConnectionFault;
  recipient?(address: string, attempt: number, sender: string): RecipientFault;
  data?(sender: string, attempt: number, recipients: readonly string[]): DataFault;
}

export interface Transaction {
  sender: string;
  /** As the client sent them. */
  recipients: string[];
  raw: Buffer;
  messageId?: string;
}

export interface FaultySmtp {
  port: number;
  /** Transactions answered with 250, in order. */
  delivered: Transaction[];
  /** How often each fault fired. */
  faults: Record<FaultKind, number>;
  connections(): number;
  /** Resolves once `done()` holds, re-checked after every delivered transaction; rejects after timeoutMs. */
  waitUntil(done: () => boolean, what: string, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

type SmtpServerError = Error & { responseCode: number };

function reply(responseCode: number, message: string): SmtpServerError {
  return Object.assign(new Error(message), { responseCode });
}

export async function startFaultySmtp(script: FaultScript): Promise<FaultySmtp> {
  const delivered: Transaction[] = [];
  const faults: Record<FaultKind, number> = { greeting421: 0, rcpt452: 0, rcpt550: 0, data451: 0, dropMidData: 0, stall: 0 };
  const recipientAttempts = new Map<string, number>();
  const senderAttempts = new Map<string, number>();
  const waiters = new Set<() => void>();
  /** Data callbacks held by a stall, answered (into a closed socket) once the client hangs up. */
  const stalled = new Map<string, () => void>();
  let connections = 0;

  const socketOf = (session: SMTPServerSession) => [...server.connections].find((c) => c.session === session)?._socket;

  const server: SMTPServer = new SMTPServer({
    logger: false,
    name: 'faulty.localhost',
    disableReverseLookup: true,
    authOptional: true,
    disabledCommands: ['STARTTLS', 'AUTH'],
    closeTimeout: 100,

    onConnect(_session, callback) {
      connections += 1;
      if ((script.connection?.(connections) ?? 'ok') === 'reject421') {
        faults.greeting421 += 1;
        return callback(reply(421, '4.3.2 Service not available, try again later'));
      }
      callback();
    },

    onRcptTo(address, session, callback) {
      const key = address.address.toLowerCase();
      const attempt = (recipientAttempts.get(key) ?? 0) + 1;
      recipientAttempts.set(key, attempt);
      const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
      switch (script.recipient?.(address.address, attempt, sender) ?? 'ok') {
        case '452':
          faults.rcpt452 += 1;
          return callback(reply(452, '4.2.2 Mailbox full, try again later'));
        case '550':
          faults.rcpt550 += 1;
          return callback(reply(550, '5.1.1 No such user here'));
        default:
          return callback();
      }
    },

    onData(stream: SMTPServerDataStream, session, callback) {
      const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
      const recipients = session.envelope.rcptTo.map((r) => r.address);
      const attempt = (senderAttempts.get(sender) ?? 0) + 1;
      senderAttempts.set(sender, attempt);
      const fault = script.data?.(sender, attempt, recipients) ?? 'ok';
      const chunks: Buffer[] = [];
      if (fault === 'drop') {
        stream.on('error', () => {});
        stream.once('data', () => {
          faults.dropMidData += 1;
          socketOf(session)?.destroy();
        });
        stream.resume();
        return; // never answered: the connection is gone
      }
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('error', (err: Error) => callback(err));
      stream.on('end', () => {
        if (fault === '451') {
          faults.data451 += 1;
          return callback(reply(451, '4.3.0 Temporary failure after data, try again later'));
        }
        if (fault === 'stall') {
          faults.stall += 1;
          stalled.set(session.id, () => callback(reply(421, '4.4.2 too late')));
          return;
        }
        const raw = Buffer.concat(chunks);
        const messageId = extractMessageId(raw);
        delivered.push({ sender, recipients, raw, ...(messageId !== undefined ? { messageId } : {}) });
        callback(null, `2.0.0 Ok: queued as faulty-${delivered.length}`);
        for (const w of [...waiters]) w();
      });
    },

    onClose(session) {
      const release = stalled.get(session.id);
      stalled.delete(session.id);
      release?.();
    },
  });
  // Resets from dropped and timed-out sessions are the point of this server; never let them crash the test.
  server.on('error', () => {});

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => (server.off('error', reject), resolve()));
  });

  let closed: Promise<void> | undefined;
  return {
    port: (server.server.address() as AddressInfo).port,
    delivered,
    faults,
    connections: () => connections,
    waitUntil(done, what, timeoutMs = 20_000) {
      if (done()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const check = () => {
          if (done()) (cleanup(), resolve());
        };
        const timer = setTimeout(() => (cleanup(), reject(new Error(`faulty upstream: timed out after ${timeoutMs} ms waiting for ${what}`))), timeoutMs);
        const cleanup = () => (clearTimeout(timer), waiters.delete(check));
        waiters.add(check);
      });
    },
    close() {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const connection of server.connections) connection._socket.destroy();
      });
      return closed;
    },
  };
}
