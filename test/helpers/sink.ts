/**
 * Controllable upstream SMTP sink for integration tests.
 *
 * Built on smtp-server, bound to 127.0.0.1 on a free port. Behaviour per
 * recipient (at RCPT TO) and per message (after DATA) can be switched at
 * runtime so tests can simulate temporary / permanent failures and dropped
 * connections.
 */
import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';
import type { SMTPServerAddress, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';

export type SinkBehaviour = 'accept' | 'tempfail' | 'permfail' | 'drop';

export interface SinkMessage {
  sender: string;
  recipients: string[];
  /**
   * The MAIL FROM and RCPT TO paths as the client wrote them. smtp-server hands its handlers (and so sender and
   * recipients above) the domains decoded from punycode, which hides whether a client sent xn-- or UTF-8.
   */
  wireSender: string;
  wireRecipients: string[];
  /** The MAIL FROM parameters, as smtp-server parsed them: { BODY: '8BITMIME', SMTPUTF8: true }, {} for none. */
  mailParameters: Record<string, string | true>;
  raw: Buffer;
  messageId?: string;
  receivedAt: number;
}

export interface SinkOptions {
  /** per-recipient behaviour at RCPT TO: 'tempfail' => 451 4.2.0, 'permfail' => 550 5.1.1, 'drop' => socket destroyed. Default 'accept'. May be changed at runtime (tests mutate a Map). */
  recipientBehaviour?: Map<string, SinkBehaviour> | ((rcpt: string) => SinkBehaviour);
  /** behaviour after DATA for the whole message: 'accept' | 'tempfail' (451 4.3.0) | 'permfail' (554 5.6.0) | 'drop' */
  dataBehaviour?: () => SinkBehaviour;
  /** optional TLS key/cert (PEM) so STARTTLS is offered; else STARTTLS disabled */
  tls?: { key: Buffer | string; cert: Buffer | string };
  /** require AUTH with these credentials (PLAIN/LOGIN) */
  auth?: { user: string; pass: string };
  /** Listen on this port (e.g. where an upstream that refused connections comes back); default: any free one. */
  port?: number;
  /** false: no SMTPUTF8 in the EHLO reply, so only ASCII envelopes can reach this sink. Default true. */
  smtputf8?: boolean;
  /** false: no 8BITMIME in the EHLO reply. Default true. */
  eightBitMime?: boolean;
}

export interface Sink {
  port: number;
  host: '127.0.0.1';
  /** accepted messages, in order */
  messages: SinkMessage[];
  /** resolves once at least n messages were accepted (event-driven, no polling sleeps); rejects after timeoutMs (default 10000) with a clear error */
  waitForMessages(n: number, timeoutMs?: number): Promise<SinkMessage[]>;
  /** resolves with the first accepted message addressed to `recipient` (event-driven); rejects as waitForMessages does */
  waitForRecipient(recipient: string, timeoutMs?: number): Promise<SinkMessage>;
  /** all accepted recipients across messages, for duplicate checks */
  deliveredRecipients(): string[];
  close(): Promise<void>;
}

const HOST = '127.0.0.1' as const;

/** Error carrying the SMTP reply code smtp-server should send. */
function smtpError(responseCode: number, message: string): Error & { responseCode: number } {
  return Object.assign(new Error(message), { responseCode });
}

/**
 * Extracts the Message-ID header value (as written, e.g. "<id@host>") from the
 * raw message's header block. Case-insensitive, folded headers are unfolded.
 */
export function extractMessageId(raw: Buffer): string | undefined {
  const text = raw.toString('latin1');
  const end = text.search(/\r?\n\r?\n/);
  const headerBlock = end === -1 ? text : text.slice(0, end);
  const unfolded = headerBlock.replace(/\r?\n(?=[ \t])/g, '');
  const match = /^message-id[ \t]*:[ \t]*(.*?)[ \t]*$/im.exec(unfolded);
  const value = match?.[1]?.trim();
  return value ? value : undefined;
}

function lookupBehaviour(
  spec: SinkOptions['recipientBehaviour'],
  rcpt: string,
): SinkBehaviour {
  if (!spec) return 'accept';
  if (typeof spec === 'function') return spec(rcpt);
  return spec.get(rcpt) ?? spec.get(rcpt.toLowerCase()) ?? 'accept';
}

export function startSink(options: SinkOptions = {}): Promise<Sink> {
  const messages: SinkMessage[] = [];
  const waiters = new Set<() => void>();

  const notify = (): void => {
    for (const waiter of [...waiters]) waiter();
  };

  // Destroys the TCP/TLS socket behind a session (simulates a dropped connection).
  const dropSession = (session: SMTPServerSession): void => {
    for (const connection of server.connections) {
      if (connection.id === session.id || connection.session === session) {
        connection._socket.destroy();
        return;
      }
    }
  };

  /** Each parsed MAIL FROM / RCPT TO address (smtp-server's own object, kept in the envelope) to its path as sent. */
  const wirePaths = new WeakMap<object, string>();
  // smtp-server's (typed) _parseAddressCommand sees the command as sent; the listener wraps it the same way.
  const keepWirePaths = (session: SMTPServerSession): void => {
    for (const connection of server.connections) {
      if (connection.session !== session) continue;
      const parse = connection._parseAddressCommand.bind(connection);
      connection._parseAddressCommand = (name, command) => {
        const parsed = parse(name, command);
        const path = /^[^:]*:\s*<([^>]*)>/.exec(command.toString('utf8'));
        if (parsed && path) wirePaths.set(parsed, path[1]!);
        return parsed;
      };
      return;
    }
  };

  const server: SMTPServer = new SMTPServer({
    logger: false,
    name: 'sink.localhost',
    disableReverseLookup: true,
    authOptional: !options.auth,
    allowInsecureAuth: true,
    authMethods: ['PLAIN', 'LOGIN'],
    disabledCommands: options.tls ? [] : ['STARTTLS'],
    hideSMTPUTF8: options.smtputf8 === false,
    hide8BITMIME: options.eightBitMime === false,
    ...(options.tls ? { key: options.tls.key, cert: options.tls.cert } : {}),
    closeTimeout: 1000,

    onConnect(session, callback) {
      keepWirePaths(session);
      callback();
    },

    onAuth(auth, _session, callback) {
      // Without configured credentials any AUTH succeeds (AUTH is optional then).
      if (!options.auth) return callback(null, { user: auth.username ?? 'anonymous' });
      if (auth.username === options.auth.user && auth.password === options.auth.pass) {
        return callback(null, { user: auth.username });
      }
      return callback(smtpError(535, '5.7.8 Authentication credentials invalid'));
    },

    onRcptTo(address: SMTPServerAddress, session, callback) {
      switch (lookupBehaviour(options.recipientBehaviour, address.address)) {
        case 'tempfail':
          return callback(smtpError(451, '4.2.0 Mailbox temporarily unavailable'));
        case 'permfail':
          return callback(smtpError(550, '5.1.1 No such user here'));
        case 'drop':
          dropSession(session);
          return; // never answered: the connection is gone
        default:
          return callback();
      }
    },

    onData(stream: SMTPServerDataStream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('error', (err: Error) => callback(err));
      stream.on('end', () => {
        const behaviour = options.dataBehaviour ? options.dataBehaviour() : 'accept';
        switch (behaviour) {
          case 'tempfail':
            return callback(smtpError(451, '4.3.0 Temporary failure, try again later'));
          case 'permfail':
            return callback(smtpError(554, '5.6.0 Message rejected'));
          case 'drop':
            dropSession(session);
            return;
          default: {
            const raw = Buffer.concat(chunks);
            const mailFrom = session.envelope.mailFrom;
            const messageId = extractMessageId(raw);
            const message: SinkMessage = {
              sender: mailFrom ? mailFrom.address : '',
              recipients: session.envelope.rcptTo.map((r) => r.address),
              wireSender: mailFrom ? (wirePaths.get(mailFrom) ?? mailFrom.address) : '',
              wireRecipients: session.envelope.rcptTo.map((r) => wirePaths.get(r) ?? r.address),
              mailParameters: { ...((mailFrom && mailFrom.args) || {}) } as Record<string, string | true>,
              raw,
              ...(messageId !== undefined ? { messageId } : {}),
              receivedAt: Date.now(),
            };
            messages.push(message);
            callback(null, `2.0.0 Ok: queued as sink-${messages.length}`);
            notify();
            return;
          }
        }
      });
    },
  });

  // Connection-level errors (resets from dropped sockets, etc.) are expected in
  // tests; swallow them so they never crash the test process.
  const onRuntimeError = (): void => {};

  let closed: Promise<void> | undefined;

  const sink: Sink = {
    port: 0,
    host: HOST,
    messages,

    async waitForRecipient(recipient: string, timeoutMs = 10_000): Promise<SinkMessage> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = messages.find((m) => m.recipients.includes(recipient));
        if (found) return found;
        await this.waitForMessages(messages.length + 1, Math.max(0, deadline - Date.now()));
      }
    },
    waitForMessages(n: number, timeoutMs = 10_000): Promise<SinkMessage[]> {
      if (messages.length >= n) return Promise.resolve(messages.slice());
      return new Promise<SinkMessage[]>((resolve, reject) => {
        const check = (): void => {
          if (messages.length >= n) {
            cleanup();
            resolve(messages.slice());
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          const got = messages
            .map((m) => `${m.messageId ?? '(no Message-ID)'} -> ${m.recipients.join(',')}`)
            .join('; ');
          reject(
            new Error(
              `sink on port ${sink.port}: timed out after ${timeoutMs} ms waiting for ${n} message(s); ` +
                `received ${messages.length}${got ? `: ${got}` : ''}`,
            ),
          );
        }, timeoutMs);
        const cleanup = (): void => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
      });
    },

    deliveredRecipients(): string[] {
      return messages.flatMap((m) => m.recipients);
    },

    close(): Promise<void> {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Do not wait for clients to QUIT: tear down open sessions right away.
        for (const connection of server.connections) connection._socket.destroy();
      });
      return closed;
    },
  };

  return new Promise<Sink>((resolve, reject) => {
    const onStartError = (err: Error): void => reject(err);
    server.once('error', onStartError);
    server.listen(options.port ?? 0, HOST, () => {
      server.off('error', onStartError);
      server.on('error', onRuntimeError);
      sink.port = (server.server.address() as AddressInfo).port;
      resolve(sink);
    });
  });
}
