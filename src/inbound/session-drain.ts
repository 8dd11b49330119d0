/**
 * Ending a listener's SMTP sessions at shutdown. smtp-server's close() waits for every session to end, an idle
 * one too (a nodemailer pool between messages, a monitoring check, a printer that never sends QUIT), so one such
 * client held the stop for all of delivery.shutdownTimeout, past Docker's 10 s grace period. Here a session with
 * no transaction gets 421 4.3.2 (RFC 3463: system not accepting network messages) at once; one with a
 * transaction (MAIL FROM accepted, its message in DATA or being stored) finishes it, gets its reply (a 250 only
 * after the fsync, as always) and then the same 421. Only what is still open at the deadline is cut.
 */
import type { SMTPServer, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import { SmtpError } from '../smtp-error.js';
import type { Connection } from './connection-adapters.js';

const SHUTTING_DOWN = new SmtpError(421, '4.3.2', 'Service shutting down').forSmtpServer();

/** From an accepted MAIL FROM until the message is answered or the client resets (RSET, EHLO). */
function inTransaction(connection: Connection): boolean {
  // No envelope before the session is set up (smtp-server's first 100 ms, onConnect): no transaction either.
  return Boolean((connection.session.envelope as SMTPServerSession['envelope'] | undefined)?.mailFrom);
}

function isQuit(command: Buffer): boolean {
  return command.toString('latin1').trim().split(' ')[0]!.toUpperCase() === 'QUIT';
}

export class SessionDrain {
  #draining = false;

  constructor(private readonly server: SMTPServer) {}

  /**
   * While draining, a command of a session with no transaction (one pipelined after the end of a message) is
   * answered 421, except QUIT, which still gets its 221; a command that leaves the session without one (RSET)
   * is followed by the 421. Wraps smtp-server's _onCommand, the one way in for every command line; the
   * shutdown integration test fails if that changes.
   */
  watch(connection: Connection): void {
    const onCommand = connection._onCommand.bind(connection);
    connection._onCommand = (command, next) => {
      if (this.#draining && !inTransaction(connection) && !isQuit(command)) return this.#shutDown(connection);
      onCommand(command, () => (this.#draining && !inTransaction(connection) ? this.#shutDown(connection) : next?.()));
    };
  }

  /**
   * The listener answered a message (a 250 or a refusal). smtp-server writes that reply once the message stream
   * has ended, at once if it already has; after it the session has no transaction, and the 421 follows at once
   * rather than as the reply to the next command, which a pooled client may not send for minutes. A command
   * already pipelined behind the message (QUIT) has been answered by then: smtp-server reads it as it replies.
   */
  messageAnswered(session: SMTPServerSession, stream: SMTPServerDataStream): void {
    const answered = () => {
      if (!this.#draining) return;
      for (const connection of this.server.connections) if (connection.session === session && !inTransaction(connection)) this.#shutDown(connection);
    };
    if (stream.readable) stream.once('end', answered);
    else answered();
  }

  /**
   * Stops accepting and ends the sessions, each as soon as it has no transaction. Resolves true once every
   * connection has closed, false when timeoutMs passed first. smtp-server's close() is not called here: from
   * then on it answers every command 421, so a session between MAIL FROM and DATA could not finish.
   */
  drain(timeoutMs: number): Promise<boolean> {
    this.#draining = true;
    // net.Server's close calls back once its last connection has closed.
    const closed = new Promise<boolean>((resolve) => this.server.server.close(() => resolve(true)));
    // As smtp-server's close() does: a socket still owing its PROXY header or TLS handshake has no session to finish.
    this.server._pendingSockets.forEach((socket) => socket.destroy());
    for (const connection of this.server.connections) if (!inTransaction(connection)) this.#shutDown(connection);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    return Promise.race([closed, late]).finally(() => clearTimeout(timer));
  }

  /**
   * smtp-server closes the connection after any 421 (and drops it from server.connections). The text carries its
   * own enhanced status code, so none from smtp-server's table (context false): a session not yet greeted has no
   * enhanceStatusCodes to keep it from writing "421 4.4.2 4.3.2".
   */
  #shutDown(connection: Connection): void {
    if (this.server.connections.has(connection)) connection.send(SHUTTING_DOWN.responseCode, SHUTTING_DOWN.message, false);
  }
}
