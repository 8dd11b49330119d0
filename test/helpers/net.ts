/**
 * Low-level network helpers for tests: free port discovery and a raw SMTP
 * dialog driver (no SMTP client library involved, so tests can send exactly
 * the bytes they want).
 */
import net from 'node:net';

/** Ports freePort returned in this process: a config built from two calls must not get one port twice. */
const handedOut = new Set<number>();

/**
 * A currently free TCP port on `host`, for a server the test starts a moment later. Chosen below the kernel's
 * ephemeral range (32768 and up here), where port 0 would pick: client sockets of tests running in parallel
 * take ephemeral ports at any time and could grab the port between this probe and the real bind. Never the
 * same port twice in one process: config validation refuses two listeners on one port.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 10_000 + Math.floor(Math.random() * 22_000);
    if (!handedOut.has(port) && (await canBind(port, host))) return (handedOut.add(port), port);
  }
  throw new Error(`no free port found on ${host}`);
}

function canBind(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

export interface SmtpDialogOptions {
  host?: string;
  localAddress?: string;
  /** overall timeout for the whole dialog, default 5000 ms */
  timeoutMs?: number;
  /** written as soon as the connection is up, before the greeting (a load balancer's PROXY header) */
  preamble?: string;
}

/** SMTP command verbs recognised inside RAW: entries (upper case only, so body text rarely matches). */
const COMMAND_RE = /^(HELO|EHLO|LHLO|MAIL|RCPT|DATA|BDAT|RSET|NOOP|QUIT|VRFY|EXPN|HELP|AUTH|STARTTLS|XCLIENT|XFORWARD)(?=[ :]|$)/;

/**
 * Drives a raw SMTP dialog over a plain TCP socket and returns everything the
 * server sent (the full transcript, CRLFs preserved).
 *
 * Semantics:
 *  - First waits for the server greeting (one complete reply).
 *  - A complete reply is any number of `NNN-` continuation lines followed by
 *    a final `NNN ` (or bare `NNN`) line.
 *  - A plain entry is a command: it is written followed by "\r\n", then the
 *    dialog waits for one complete reply before sending the next entry.
 *  - An entry starting with "RAW:" has the rest written verbatim (no CRLF is
 *    appended). The dialog then waits for as many replies as the raw data
 *    requires, counting its complete (CRLF-terminated) lines:
 *      * outside DATA mode, each line starting with an upper-case SMTP verb
 *        (MAIL, RCPT, DATA, RSET, QUIT, ...) expects one reply; "DATA" also
 *        switches into DATA mode (pipelining-friendly);
 *      * in DATA mode (entered after a DATA that got a 354, or after a DATA
 *        line inside a raw entry), only the terminating "." line expects a
 *        reply (the end-of-data reply) and leaves DATA mode;
 *      * anything else (header/body lines, partial lines) expects no reply.
 *    Raw data ending with "\r\n.\r\n" always waits for at least one reply.
 *    So ["DATA", "RAW:Subject: x\r\n\r\nbody\r\n.\r\n"] works as expected, and
 *    "RAW:MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n" waits for two replies.
 *  - Resolves after the reply to the last entry (then closes the socket), or
 *    earlier if the server closes the connection (e.g. after a 421 or a
 *    dropped connection) - the transcript shows what happened.
 *  - Rejects on socket errors other than a reset after output was received,
 *    or when the whole dialog exceeds `timeoutMs` (default 5000 ms); the
 *    error message contains the transcript so far.
 */
export function smtpDialog(port: number, lines: string[], opts: SmtpDialogOptions = {}): Promise<string> {
  const host = opts.host ?? '127.0.0.1';
  const timeoutMs = opts.timeoutMs ?? 5000;

  return new Promise<string>((resolve, reject) => {
    let transcript = '';
    let scanned = 0; // offset in transcript up to which complete lines were parsed
    let repliesReceived = 0;
    let repliesNeeded = 1; // the greeting
    let step = 0;
    let inData = false;
    let lastWasDataCommand = false;
    let done = false;

    const socket = net.connect({
      host,
      port,
      ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
    });
    if (opts.preamble !== undefined) socket.once('connect', () => socket.write(opts.preamble!));

    const finish = (err?: Error): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.removeAllListeners('data');
      socket.on('error', () => {});
      socket.destroy();
      if (err) reject(err);
      else resolve(transcript);
    };

    const timer = setTimeout(() => {
      finish(
        new Error(
          `smtpDialog: timed out after ${timeoutMs} ms at step ${step}/${lines.length} ` +
            `(waiting for ${repliesNeeded - repliesReceived} reply/replies); transcript so far:\n${transcript}`,
        ),
      );
    }, timeoutMs);

    const countRawReplies = (raw: string): number => {
      let expected = 0;
      const parts = raw.split('\r\n');
      parts.pop(); // trailing partial line (or '' if raw ends with CRLF) expects nothing
      for (const line of parts) {
        if (inData) {
          if (line === '.') {
            expected++;
            inData = false;
          }
        } else if (COMMAND_RE.test(line)) {
          expected++;
          if (/^DATA$/.test(line)) inData = true;
        }
      }
      if (expected === 0 && raw.endsWith('\r\n.\r\n')) expected = 1;
      return expected;
    };

    const sendNext = (): void => {
      while (repliesReceived >= repliesNeeded) {
        if (step >= lines.length) {
          finish();
          return;
        }
        const entry = lines[step++] ?? '';
        if (entry.startsWith('RAW:')) {
          const raw = entry.slice(4);
          lastWasDataCommand = false;
          socket.write(raw);
          repliesNeeded += countRawReplies(raw);
        } else {
          lastWasDataCommand = /^DATA$/i.test(entry.trim());
          socket.write(entry + '\r\n');
          repliesNeeded += 1;
        }
      }
    };

    const onReply = (finalLine: string): void => {
      repliesReceived++;
      // After a plain DATA command, a 354 puts the dialog into DATA mode for RAW: entries.
      if (lastWasDataCommand && repliesReceived === repliesNeeded) {
        inData = finalLine.startsWith('354');
        lastWasDataCommand = false;
      }
    };

    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      transcript += chunk;
      let nl: number;
      while ((nl = transcript.indexOf('\n', scanned)) !== -1) {
        const line = transcript.slice(scanned, nl).replace(/\r$/, '');
        scanned = nl + 1;
        if (/^\d{3}(?: |$)/.test(line)) onReply(line);
        // /^\d{3}-/ continuation lines (and anything else) do not complete a reply
      }
      sendNext();
    });
    socket.on('close', () => finish());
    socket.on('end', () => finish());
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A reset after the server already spoke counts as "server closed".
      if (transcript.length > 0 && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) finish();
      else finish(new Error(`smtpDialog: ${err.message}; transcript so far:\n${transcript}`));
    });
  });
}

/**
 * Splits a transcript into complete replies. Each reply keeps all its lines
 * (continuations included) joined by "\r\n", without the trailing CRLF.
 */
export function smtpReplies(transcript: string): string[] {
  const replies: string[] = [];
  let current: string[] = [];
  for (const line of transcript.split(/\r?\n/)) {
    if (line === '') continue;
    current.push(line);
    if (/^\d{3}(?: |$)/.test(line)) {
      replies.push(current.join('\r\n'));
      current = [];
    }
  }
  if (current.length) replies.push(current.join('\r\n'));
  return replies;
}

/** Reply codes of every complete reply in a transcript, e.g. [220, 250, 250, 221]. */
export function smtpReplyCodes(transcript: string): number[] {
  return smtpReplies(transcript).map((r) => Number.parseInt(r.slice(0, 3), 10));
}
