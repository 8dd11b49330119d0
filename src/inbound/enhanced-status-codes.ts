/**
 * RFC 2034: with ENHANCEDSTATUSCODES advertised, every reply but the greeting, the replies to EHLO and HELO and
 * 3xx carries one enhanced status code (RFC 3463), which is what an admin reads in a printer's or an app's log
 * ("5.7.1" policy, "5.1.3" address syntax). smtp-server writes one from its table by reply code
 * (hideENHANCEDSTATUSCODES: false), but also in front of a text that already starts with one: every SmtpError
 * reply would read "553 5.1.3 5.7.1 ..." and "250 2.0.0 Ok: queued as" would get a 2.6.0 too.
 */
import type { Connection } from './connection-adapters.js';

/** What SmtpError.forSmtpServer() puts at the start of the text. */
const LEADING_ENHANCED_CODE = /^[245]\.\d{1,3}\.\d{1,3} /;

/** smtp-server's replies, by their text, whose code from its table is wrong for the situation; as Postfix answers. */
const CORRECTED = new Map([
  // Its 421 code is 4.4.2, a broken connection; right for the idle timeout only.
  ['Server shutting down', '4.3.2'], // as SessionDrain's own 421
  ['Error: too many unrecognized commands', '4.7.0'], // Postfix: 421 4.7.0 Error: too many errors
  ['HTTP requests not allowed', '4.7.0'],
  // VRFY verifies nothing here; its 2.1.5 says the address is valid. Postfix: 252 2.0.0.
  ['Try to send something. No promises though', '2.0.0'],
]);

/**
 * Makes this connection's replies carry exactly one enhanced status code: a reply whose text has one keeps it and
 * gets no other, one in CORRECTED gets that code, any other the one smtp-server's table gives. Wraps the
 * connection's send(), its one way to write a reply (typed, and whose context false means "no code"); the
 * enhanced-status-codes integration test fails if that changes. Installed from onConnect: a client that talks
 * within smtp-server's first 100 ms, before it, gets the table's "421 4.4.2 ... You talk too soon", or no code at all
 * when that command was EHLO or HELO.
 */
export function enhanceStatusCodes(connection: Connection): void {
  const send = connection.send.bind(connection);
  connection.send = (code, data, context) => {
    if (typeof data !== 'string' || context === false) return send(code, data, context);
    if (LEADING_ENHANCED_CODE.test(data)) return send(code, data, false);
    const corrected = CORRECTED.get(data);
    if (corrected) return send(code, `${corrected} ${data}`, false);
    // smtp-server exempts the replies to LHLO as to EHLO; here LHLO is no command, and its 500 is an unknown command's.
    return send(code, data, context === 'LHLO' ? undefined : context);
  };
}
