/**
 * Where a listener adapts smtp-server's handling of one connection to what the RFCs and this project's docs
 * say, by wrapping one of the connection's own (typed) methods. Each is installed from onConnect and guarded
 * by an integration test that fails if smtp-server changes the method it wraps. The other such adapters live
 * beside what they serve: enhanced-status-codes.ts (send) and session-drain.ts (_onCommand).
 */
import type { SMTPServer } from 'smtp-server';
import { SmtpError } from '../smtp-error.js';
import type { RejectionReason } from './metrics.js';

/** smtp-server's connection behind one SMTP session (its class is not exported by name). */
export type Connection = SMTPServer['connections'] extends Set<infer C> ? C : never;
/** Counts a refusal in smarthost_smtp_rejections_total. */
type Rejected = (reason: RejectionReason, code: number) => void;

/** The path of a MAIL FROM or RCPT TO command when it starts with a source route: "<@a,@b:user@domain>". */
const SOURCE_ROUTED_PATH = /^[^:]*:\s*<(@[^<>\s]*)>/;

/**
 * Without allowInsecureAuth a password may only cross inside TLS. smtp-server takes AUTH in clear where the
 * listener has no STARTTLS, and where it has, lists AUTH in EHLO before it and answers AUTH with 538 and
 * RFC 3207's text. Before TLS, EHLO here leaves AUTH out and AUTH is answered as RFC 3207 and RFC 4954 say:
 * 530 5.7.0 where STARTTLS is offered, 538 5.7.11 where the listener has no TLS. (Disabling the command for
 * the session, as before, answered 500 "command not recognized", and smtp-server ends a session after ten.)
 */
export function requireTlsForAuth(connection: Connection, o: { offersStartTls: boolean; rejected: Rejected }): void {
  const disabled = o.offersStartTls ? [] : ['STARTTLS'];
  const ehlo = connection.handler_EHLO.bind(connection);
  connection.handler_EHLO = (command, callback) => {
    if (connection.secure) return ehlo(command, callback);
    // EHLO lists AUTH unless the session disables it; disabled only while EHLO answers, so AUTH still reaches its handler.
    connection.session.disabledCommands = [...disabled, 'AUTH'];
    ehlo(command, () => {
      delete connection.session.disabledCommands;
      callback();
    });
  };
  const auth = connection.handler_AUTH.bind(connection);
  connection.handler_AUTH = (command, callback) => {
    if (connection.secure) return auth(command, callback);
    const refusal = o.offersStartTls
      ? new SmtpError(530, '5.7.0', 'Must issue a STARTTLS command first')
      : new SmtpError(538, '5.7.11', 'Encryption required for requested authentication mechanism');
    o.rejected('auth_without_tls', refusal.code);
    const reply = refusal.forSmtpServer();
    connection.send(reply.responseCode, reply.message);
    callback();
  };
}

/**
 * smtp-server strips a source route (<@relay:user@domain>) before onMailFrom/onRcptTo see the address, so
 * the address policy could never refuse one as documented. Put the route back for this connection's
 * handlers. Relies on smtp-server's _parseAddressCommand; the bad-input integration test guards it.
 */
export function keepSourceRoutes(connection: Connection): void {
  const parse = connection._parseAddressCommand.bind(connection);
  connection._parseAddressCommand = (name, command) => {
    const parsed = parse(name, command);
    const route = SOURCE_ROUTED_PATH.exec(command.toString('latin1'));
    if (parsed && route) parsed.address = route[1]!;
    return parsed;
  };
}

/**
 * smtp-server refuses a declared SIZE over maxMessageSize itself, before onMailFrom, with a 552 that had no
 * 5.3.4 and was not counted, though that is where most oversized messages end (clients that declare SIZE,
 * Postfix among them, never send them). Its verdict stands; only the reply is this listener's.
 */
export function refuseDeclaredOversize(connection: Connection, rejected: Rejected): void {
  const validate = connection._validateMailParams.bind(connection);
  connection._validateMailParams = (parsed) => {
    const refused = validate(parsed);
    if (refused?.code !== 552) return refused;
    rejected('message_size', 552);
    const reply = new SmtpError(552, '5.3.4', 'Message size exceeds fixed maximum message size').forSmtpServer();
    return { code: reply.responseCode, message: reply.message, enhancedCode: null };
  };
}
