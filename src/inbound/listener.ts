import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { createSecureContext } from 'node:tls';
import { SMTPServer, type SMTPServerAddress, type SMTPServerDataStream, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import smtpServerTlsOptions from 'smtp-server/lib/tls-options.js';
import type { ListenerConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import type { Config } from '../config/schema.js';
import { checkEnvelopeAddress } from '../policy/address-policy.js';
import { checkHeaderFromAllowed, checkSenderAllowed } from '../policy/sender-policy.js';
import { unreachableRecipient } from '../upstreams/reachability.js';
import { tagLabel, tagValue } from '../upstreams/tags.js';
import { fieldValue, parseMailboxes, splitHeaderFields } from '../rewrite/header-block.js';
import { NetworkList, normalizeIp } from '../policy/networks.js';
import type { SuppressionSettings } from '../policy/suppression.js';
import { SmtpError, toSmtpError } from '../smtp-error.js';
import { newQueueId } from '../spool/queue-id.js';
import { createRecord, type MessageRecord } from '../spool/record.js';
import type { Spool } from '../spool/spool.js';
import type { WindowCounter } from '../state/window-counter.js';
import { AuthFailureGuard } from './auth-guard.js';
import { coalesceReplies } from './coalesce-replies.js';
import { keepSourceRoutes, refuseDeclaredOversize, requireTlsForAuth, type Connection } from './connection-adapters.js';
import { enhanceStatusCodes } from './enhanced-status-codes.js';
import { dataRejectionReason, type InboundMetrics, type RejectionReason } from './metrics.js';
import { InboundMessageTransform, type ReceivedTrace } from './message-stream.js';
import { InboundRateLimiter, type RateKind } from './rate-limits.js';
import { SessionDrain } from './session-drain.js';
import type { LocalUsers } from './users.js';

export interface ListenerDeps {
  hostname: string;
  spool: Spool;
  users: LocalUsers;
  /** Hands a durably spooled message to delivery. */
  accept: (record: MessageRecord) => void;
  log: Logger;
  /** Sender restrictions and the alias rules they must also hold for. */
  /** Sender restrictions, alias rules, and the routes and upstreams a recipient must be reachable through. */
  policy: Pick<Config, 'users' | 'senderRestrictions' | 'rewrite' | 'routing' | 'listeners' | 'upstreams'> & Partial<Pick<Config, 'tags'>>;
  /** With action refuse, listed recipients get 550 5.7.1 at RCPT TO. */
  suppression?: SuppressionSettings;
  metrics?: InboundMetrics;
  /** Message and recipient rates (rateLimits); in Redis when several instances share them. */
  rateCounter: WindowCounter;
  /** The time the rate windows are measured in (a test's clock). */
  now?: () => number;
}

function headerValue(block: Buffer | undefined, name: string): string | undefined {
  const field = block && splitHeaderFields(block).find((f) => f.name === name.toLowerCase());
  return field ? fieldValue(field) : undefined;
}

function headerFromAddresses(block: Buffer | undefined): string[] {
  if (!block) return [];
  return splitHeaderFields(block)
    .filter((f) => f.name === 'from')
    .flatMap((f) => parseMailboxes(fieldValue(f)).map((m) => m.address));
}

type Callback = (err?: Error | null) => void;
/** The MAIL FROM parameters of the extensions EHLO lists: SIZE, BODY (8BITMIME) and SMTPUTF8; smtp-server checks their values. */
const MAIL_PARAMETERS = ['SIZE', 'BODY', 'SMTPUTF8'];

/**
 * RFC 5321 4.1.1.11: a parameter the server does not recognise gets 555. smtp-server hands on any it parsed,
 * those of extensions this listener does not offer too (DSN's NOTIFY and RET, REQUIRETLS), which were then
 * answered 250 and not honoured: a message sent with REQUIRETLS went on to a plaintext upstream.
 */
function unsupportedParameter(address: SMTPServerAddress, supported: readonly string[]): SmtpError | undefined {
  const name = Object.keys(address.args || {}).find((n) => !supported.includes(n));
  return name === undefined ? undefined : new SmtpError(555, '5.5.4', `Unsupported parameter ${name}`);
}

/** One SMTP listener (relay or submission role) on smtp-server; every decision replies through SmtpError. */
export class Listener {
  readonly server: SMTPServer;
  readonly #networks: NetworkList;
  readonly #authGuard: AuthFailureGuard;
  readonly #rates: InboundRateLimiter;
  readonly #perIp = new Map<string, number>();
  readonly #counted = new Set<string>();
  readonly #drain: SessionDrain;

  constructor(
    readonly config: ListenerConfig,
    private readonly deps: ListenerDeps,
  ) {
    this.#networks = new NetworkList(config.role === 'relay' ? config.networks : []);
    this.#authGuard = new AuthFailureGuard(config.maxAuthFailures, config.authFailureWindow);
    this.#rates = new InboundRateLimiter(config.name, config.rateLimits, deps.rateCounter, deps.log, deps.now);
    this.server = new SMTPServer(this.#options());
    this.#drain = new SessionDrain(this.server);
    this.#capPendingSockets();
    this.server.server.on('connection', coalesceReplies);
    this.server.on('error', (err) => {
      // Before listening, the error is a failed bind, which listen() reports itself.
      if (this.server.server.listening) deps.log.warn({ event: 'smtp.error', listener: config.name, err }, 'SMTP connection error');
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(new Error(`listener ${this.config.name}: cannot listen on ${this.config.host}:${this.config.port}: ${err.message}`));
      this.server.server.once('error', onError);
      this.server.listen(this.config.port, this.config.host, () => {
        this.server.server.off('error', onError);
        resolve();
      });
    });
  }

  /** The bound port (differs from the configured one when that was 0). */
  get port(): number {
    const address = this.server.server.address();
    return typeof address === 'object' && address ? address.port : this.config.port;
  }

  /**
   * Stops accepting; a session with no transaction gets 421 4.3.2 at once, one with a transaction finishes it
   * first (see SessionDrain). What is still open after timeoutMs smtp-server cuts with its own 421.
   */
  async close(timeoutMs: number): Promise<void> {
    if (await this.#drain.drain(timeoutMs)) return;
    this.server.options.closeTimeout = 1; // 0 would be smtp-server's default, 30 s
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  #options(): SMTPServerOptions {
    const c = this.config;
    const tls = c.tls ? { key: readFileSync(c.tls.key), cert: readFileSync(c.tls.cert), minVersion: c.tls.minVersion } : {};
    return {
      ...tls,
      name: this.deps.hostname,
      // smtp-server already writes "<name> ESMTP" before the banner.
      banner: 'smarthost',
      secure: c.tls?.implicit ?? false,
      disabledCommands: this.#serverDisabledCommands(),
      allowInsecureAuth: c.allowInsecureAuth,
      authMethods: ['PLAIN', 'LOGIN'],
      authOptional: true,
      size: c.maxMessageSize,
      socketTimeout: c.socketTimeout,
      disableReverseLookup: true,
      // smtp-server's replies get their code from its table; ours carry their own (see enhanceStatusCodes).
      hideENHANCEDSTATUSCODES: false,
      hideDSN: true,
      hideREQUIRETLS: true,
      logger: false,
      // Only these peers may (and must) open with a PROXY header; from any other peer the line is an unknown command (500).
      useProxy: c.proxyProtocol ? [...c.proxyProtocol.from] : false,
      onConnect: (session, cb) => cb(this.#onConnect(session)),
      onClose: (session) => this.#onClose(session),
      onAuth: (auth, session, cb) => {
        this.#onAuth(auth.username ?? '', auth.password ?? '', session).then(
          (user) => cb(null, { user }),
          (err: unknown) => cb(toSmtpError(err).forSmtpServer()),
        );
      },
      onMailFrom: (address, session, cb) => {
        const refused = this.#onMailFrom(address, session);
        if (refused) return this.#reply(cb, refused);
        this.#takeRate('messages', session, cb);
      },
      onRcptTo: (address, session, cb) => {
        const unsupported = unsupportedParameter(address, []);
        if (unsupported) return this.#reply(cb, unsupported, 'unsupported_parameter');
        const tooMany = this.#tooManyRecipients(address.address, session);
        if (tooMany) return this.#reply(cb, tooMany, 'too_many_recipients');
        const bad = checkEnvelopeAddress(address.address, 'recipient');
        if (bad) return this.#reply(cb, bad, 'recipient_address');
        const suppressed = this.#checkSuppressed(address.address, session);
        if (suppressed) return this.#reply(cb, suppressed, 'suppressed');
        const unreachable = this.#checkReachable(address.address, session);
        if (unreachable) return this.#reply(cb, unreachable, 'unreachable');
        this.#takeRate('recipients', session, cb);
      },
      onData: (stream, session, cb) => this.#onData(stream, session, cb),
    };
  }

  /**
   * Answers once the current call stack has unwound (process.nextTick), never synchronously: an answer given at
   * once lets a pipelined MAIL, RCPT, DATA and message after an end-of-data run inside smtp-server's
   * SMTPStream.continue(), which then overwrites the continuation the second message just registered, and that
   * session never reads another command (found by test/fuzz). Not a later turn of the event loop either: the
   * replies to commands pipelined in one packet are then written together (see coalesceReplies).
   */
  #reply(cb: Callback, err: SmtpError | undefined, reason?: RejectionReason): void {
    if (err && reason) this.#rejected(reason, err.code);
    const reply = err ? err.forSmtpServer() : null;
    process.nextTick(() => cb(reply));
  }

  /**
   * Counts a command that every other check accepted (so refused senders and recipients use no budget) and
   * answers it. The count may wait on Redis; #reply still answers on a later turn either way.
   */
  #takeRate(kind: RateKind, session: SMTPServerSession, cb: Callback): void {
    const client = { address: normalizeIp(session.remoteAddress), user: typeof session.user === 'string' ? session.user : undefined };
    if (!this.#rates.applies(kind, client)) return this.#reply(cb, undefined);
    void this.#rates.take(kind, client).then((refusal) => {
      if (refusal) {
        this.deps.log.warn(
          { event: 'smtp.refused', listener: this.config.name, client: client.address, user: client.user, reason: refusal.reason, limit: refusal.limit, retryAt: new Date(refusal.retryAt).toISOString() },
          'rate limit reached',
        );
      }
      this.#reply(cb, refusal?.error, 'rate_limited');
    });
  }

  #rejected(reason: RejectionReason, code: number): void {
    this.deps.metrics?.rejected(this.config.name, reason, code);
  }

  /**
   * Loads new TLS certificates (reload) and returns the step that puts them in force: new connections and
   * STARTTLS use them, sessions in progress keep theirs. Only the certificate files and minVersion change here;
   * turning TLS on or off needs a restart. A certificate that does not match its key (a renewal caught half-way)
   * throws here with the running context untouched; smtp-server's updateSecureContext would have dropped it
   * first and left STARTTLS failing every handshake.
   */
  prepareTls(tls: NonNullable<ListenerConfig['tls']>): () => void {
    const options = { key: readFileSync(tls.key), cert: readFileSync(tls.cert), minVersion: tls.minVersion };
    // The options smtp-server's updateSecureContext would build the context from.
    const context = createSecureContext(smtpServerTlsOptions({ ...this.server.options, ...options }));
    return () => {
      Object.assign(this.server.options, options);
      this.server.secureContext = new Map([['*', context]]);
    };
  }

  /**
   * maxClients also bounds the sockets still owing their PROXY header or implicit TLS handshake, as smtp-server's
   * option does (it drops them: nothing can be answered before either). The option is set only while smtp-server
   * takes a socket: set for good, smtp-server would refuse a session over the limit itself, before onConnect,
   * with no enhanced status code and uncounted. Wraps the (typed) _acceptSocket; the proxy-protocol integration
   * test fails if that changes.
   */
  #capPendingSockets(): void {
    const accept = this.server._acceptSocket.bind(this.server);
    this.server._acceptSocket = (socket, handshake) => {
      this.server.options.maxClients = this.config.maxClients;
      try {
        return accept(socket, handshake);
      } finally {
        delete this.server.options.maxClients;
      }
    };
  }

  #serverDisabledCommands(): string[] {
    return this.config.tls ? [] : ['STARTTLS'];
  }

  /** smtp-server's connection behind a session, for the few of its handlers this listener adapts. */
  #connectionOf(session: SMTPServerSession): Connection | undefined {
    for (const connection of this.server.connections) if (connection.session === session) return connection;
    return undefined;
  }

  #onConnect(session: SMTPServerSession): Error | null {
    const connection = this.#connectionOf(session);
    // Never without it: AUTH would then be taken in clear.
    if (!connection) return new SmtpError(421, '4.3.0', 'Service not available, try again later').forSmtpServer();
    // Checked here, not by smtp-server's maxClients option: its 421 goes out before this handler, with no enhanced status code.
    if (this.server.connections.size > this.config.maxClients) {
      this.#rejected('max_clients', 421);
      return new SmtpError(421, '4.3.2', 'Too many connected clients, try again in a moment').forSmtpServer();
    }
    const rejected = (reason: RejectionReason, code: number) => this.#rejected(reason, code);
    enhanceStatusCodes(connection);
    keepSourceRoutes(connection);
    if (!this.config.allowInsecureAuth) requireTlsForAuth(connection, { offersStartTls: Boolean(this.config.tls), rejected });
    refuseDeclaredOversize(connection, rejected);
    this.#drain.watch(connection);
    this.deps.metrics?.connections.inc({ listener: this.config.name });
    const ip = normalizeIp(session.remoteAddress);
    if (this.#rates.exempts(ip)) return null;
    const count = (this.#perIp.get(ip) ?? 0) + 1;
    if (count > this.config.maxConnectionsPerIp) {
      this.#rejected('connections_per_ip', 421);
      this.deps.log.warn({ event: 'smtp.refused', listener: this.config.name, client: ip, reason: 'connections per address' }, 'too many connections');
      return new SmtpError(421, '4.7.0', 'Too many connections from your address, try again later').forSmtpServer();
    }
    this.#perIp.set(ip, count);
    this.#counted.add(session.id);
    return null;
  }

  #onClose(session: SMTPServerSession): void {
    if (!this.#counted.delete(session.id)) return;
    const ip = normalizeIp(session.remoteAddress);
    const count = (this.#perIp.get(ip) ?? 1) - 1;
    if (count <= 0) this.#perIp.delete(ip);
    else this.#perIp.set(ip, count);
  }

  async #onAuth(username: string, password: string, session: SMTPServerSession): Promise<string> {
    const ip = normalizeIp(session.remoteAddress);
    if (this.#authGuard.isBlocked(ip)) {
      this.#rejected('auth_throttled', 421);
      throw new SmtpError(421, '4.7.0', 'Too many failed authentication attempts, try again later');
    }
    // Counted as failed before the (slow, scrypt) check, so attempts in parallel cannot outrun the limit.
    this.#authGuard.recordFailure(ip);
    if (await this.deps.users.authenticate(username, password)) {
      this.#authGuard.forgive(ip);
      this.deps.log.info({ event: 'smtp.auth', listener: this.config.name, client: ip, user: username }, 'authenticated');
      return username;
    }
    this.deps.metrics?.authFailures.inc({ listener: this.config.name });
    this.deps.log.warn({ event: 'smtp.auth_failed', listener: this.config.name, client: ip, user: username }, 'authentication failed');
    throw new SmtpError(535, '5.7.8', 'Authentication credentials invalid');
  }

  #onMailFrom(address: SMTPServerAddress, session: SMTPServerSession): SmtpError | undefined {
    // AUTH=<mailbox> (RFC 4954 section 5) belongs to AUTH, offered inside TLS or with allowInsecureAuth.
    const unsupported = unsupportedParameter(address, session.secure || this.config.allowInsecureAuth ? [...MAIL_PARAMETERS, 'AUTH'] : MAIL_PARAMETERS);
    if (unsupported) return (this.#rejected('unsupported_parameter', unsupported.code), unsupported);
    if (typeof session.user === 'string' && !this.deps.policy.users.some((u) => u.name === session.user)) {
      // Removed by a reload after this session authenticated: its login, and so its allowedSenders, are gone.
      this.deps.log.info(
        { event: 'smtp.refused', listener: this.config.name, client: normalizeIp(session.remoteAddress), user: session.user, reason: 'user no longer configured' },
        'user removed since it authenticated',
      );
      this.#rejected('auth_required', 530);
      return new SmtpError(530, '5.7.0', 'Authentication required: this user is no longer configured');
    }
    const trusted = this.config.role === 'relay' && this.#networks.contains(session.remoteAddress);
    if (!session.user && !trusted) {
      this.deps.log.info(
        { event: 'smtp.refused', listener: this.config.name, client: normalizeIp(session.remoteAddress), reason: 'authentication required' },
        'unauthenticated client outside allowed networks',
      );
      this.#rejected('auth_required', 530);
      return new SmtpError(530, '5.7.0', 'Authentication required');
    }
    const bad = checkEnvelopeAddress(address.address, 'sender');
    if (bad) return (this.#rejected('sender_address', bad.code), bad);
    const refused = checkSenderAllowed(this.deps.policy, {
      sender: address.address,
      ...(typeof session.user === 'string' ? { user: session.user } : {}),
      clientAddress: normalizeIp(session.remoteAddress),
    });
    if (refused) this.#rejected('sender_not_allowed', refused.code);
    return refused;
  }

  /**
   * maxRecipients is enforced here rather than by smtp-server, whose 452 had no 4.5.3 and was not counted. A
   * repeated address replaces its earlier entry in smtp-server's envelope (in any case), so it is not one more.
   */
  #tooManyRecipients(recipient: string, session: SMTPServerSession): SmtpError | undefined {
    const rcptTo = session.envelope.rcptTo;
    if (rcptTo.length < this.config.maxRecipients) return undefined;
    const key = recipient.toLowerCase();
    if (rcptTo.some((r) => r.address.toLowerCase() === key)) return undefined;
    return new SmtpError(452, '4.5.3', 'Too many recipients');
  }

  /** A recipient whose route ends at an upstream that cannot take it (Direct Send outside the tenant) is refused now, not bounced later. */
  #checkReachable(recipient: string, session: SMTPServerSession): SmtpError | undefined {
    return unreachableRecipient(this.deps.policy, {
      sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
      recipient,
      ...(typeof session.user === 'string' ? { user: session.user } : {}),
      clientAddress: normalizeIp(session.remoteAddress),
      listener: this.config.name,
    });
  }

  #checkSuppressed(recipient: string, session: SMTPServerSession): SmtpError | undefined {
    const s = this.deps.suppression;
    if (s?.action !== 'refuse' || !s.list.has(recipient)) return undefined;
    this.deps.log.info(
      { event: 'smtp.refused', listener: this.config.name, client: normalizeIp(session.remoteAddress), recipient, reason: 'suppression list' },
      'recipient on the suppression list refused',
    );
    return new SmtpError(550, '5.7.1', 'Recipient is on the suppression list');
  }

  #onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    const id = newQueueId();
    const recipients = session.envelope.rcptTo.map((a) => a.address);
    const message = new InboundMessageTransform(this.#trace(session, id, recipients));
    stream.on('data', () => {
      if (stream.sizeExceeded) message.destroy(new SmtpError(552, '5.3.4', 'Message size exceeds fixed maximum message size'));
    });
    stream.once('close', () => {
      if (!stream.readableEnded) message.destroy(new SmtpError(451, '4.4.2', 'Connection lost during DATA'));
    });
    stream.pipe(message);
    const record = createRecord({
      id,
      sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
      recipients,
      receivedAt: Date.now(),
      client: {
        address: normalizeIp(session.remoteAddress),
        ...(session.hostNameAppearsAs ? { helo: session.hostNameAppearsAs } : {}),
        ...(typeof session.user === 'string' ? { user: session.user } : {}),
        listener: this.config.name,
        tls: session.secure,
      },
    });
    this.deps.spool
      .store(message as Readable, record, (r) => {
        if (message.messageId) r.messageId = message.messageId;
        if (message.eightBit) r.eightBit = true;
        // The accepted MAIL's own parameter: smtp-server sets envelope.smtpUtf8 before onMailFrom and leaves it
        // set when that MAIL is refused (a 555 for another of its parameters), so a later plain MAIL would inherit it.
        const mailArgs = session.envelope.mailFrom ? (session.envelope.mailFrom.args as Record<string, unknown> | false) : false;
        if (mailArgs && mailArgs.SMTPUTF8 && message.eightBitHeader) r.utf8Headers = true;
        const from = headerFromAddresses(message.headerBlock);
        if (from.length > 0) r.headerFrom = from;
        const tags = this.deps.policy.tags;
        const tag = tags && tagValue(headerValue(message.headerBlock, tags.header));
        if (tag !== undefined) r.tag = tag;
        // Header rules could otherwise turn a From the client may not use into one it may not use either.
        const refused = checkHeaderFromAllowed(this.deps.policy, { headerFrom: from, ...(r.client.user !== undefined ? { user: r.client.user } : {}), clientAddress: r.client.address });
        if (refused) throw refused;
      })
      .then(
        (stored) => {
          cb(null, `2.0.0 Ok: queued as ${id}`);
          this.#drain.messageAnswered(session, stream);
          this.deps.log.info(
            { event: 'received', queueId: id, listener: this.config.name, client: record.client.address, user: record.client.user, sender: stored.sender, recipients, size: stored.size, messageId: stored.messageId },
            'message queued',
          );
          this.deps.metrics?.messages.inc({ listener: this.config.name });
          this.deps.metrics?.messageSize.observe({ listener: this.config.name }, stored.size);
          const tags = this.deps.policy.tags;
          if (tags) this.deps.metrics?.tagged.inc({ listener: this.config.name, tag: tagLabel(tags, stored.tag) });
          this.deps.accept(stored);
        },
        (err: unknown) => {
          stream.unpipe(message);
          stream.resume();
          const error = toSmtpError(err);
          this.#rejected(dataRejectionReason(error), error.code);
          this.deps.log.warn({ event: 'receive.failed', queueId: id, listener: this.config.name, reply: error.reply, err: error.cause ?? error }, 'message not accepted');
          cb(error.forSmtpServer());
          this.#drain.messageAnswered(session, stream);
        },
      );
  }

  #trace(session: SMTPServerSession, queueId: string, recipients: string[]): ReceivedTrace {
    const tls = session.tlsOptions ? `${session.tlsOptions.version ?? ''} ${session.tlsOptions.name ?? ''}`.trim() : undefined;
    return {
      fromHelo: session.hostNameAppearsAs || 'unknown',
      clientAddress: normalizeIp(session.remoteAddress),
      byHost: this.deps.hostname,
      protocol: protocolOf(session),
      queueId,
      ...(recipients.length === 1 ? { recipient: recipients[0] } : {}),
      date: new Date(),
      ...(tls ? { tls } : {}),
    };
  }
}

function protocolOf(session: SMTPServerSession): ReceivedTrace['protocol'] {
  const t = session.transmissionType;
  return t === 'ESMTP' || t === 'ESMTPS' || t === 'ESMTPA' || t === 'ESMTPSA' || t === 'SMTP' ? t : 'ESMTP';
}
