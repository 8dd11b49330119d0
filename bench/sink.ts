/**
 * The upstream both relays deliver to. Postfix's smtp-sink when installed (the reference sink: C, event
 * driven, PIPELINING), else our own raw-`net` sink run in a separate process so its work never competes
 * with the orchestrator's clock. Either way the sink prints a running "mesg=N" counter on stdout, flushed
 * per message, and the orchestrator timestamps each increment as it arrives: that is the arrival time of
 * message N. Bound to 127.0.0.1 only.
 *
 * Run directly (`node dist/bench/sink.js PORT`) this file is the Node sink.
 */
import type { ChildProcess } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { findProgram, freePort, now, spawnTracked, TimeoutError, waitForExit, waitForSmtp } from './process.js';

export type SinkKind = 'smtp-sink' | 'node';

export class Sink {
  /** Arrival time (epoch ms) of each message, in order: arrivals[n - 1] is when message n was counted. */
  readonly arrivals: number[] = [];
  readonly #waiters = new Set<() => void>();

  private constructor(
    readonly kind: SinkKind,
    readonly port: number,
    private readonly child: ChildProcess,
  ) {
    let pending = '';
    child.stdout!.setEncoding('latin1').on('data', (text: string) => {
      const at = now();
      // Counter lines end in \r (smtp-sink redraws one terminal line); a read may hold several or half of one.
      const lines = (pending + text).split('\r');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        const m = /mesg=(\d+)/.exec(line);
        if (m) while (this.arrivals.length < Number(m[1])) this.arrivals.push(at);
      }
      for (const wake of this.#waiters) wake();
    });
  }

  static async start(prefer: SinkKind = 'smtp-sink'): Promise<Sink> {
    const port = await freePort();
    const smtpSink = prefer === 'smtp-sink' ? findProgram('smtp-sink') : undefined;
    // -c: the counter; -u: required as root, drops privileges after binding; -m: more concurrent sessions
    // than any scenario opens; 1024: listen backlog.
    const child = smtpSink
      ? spawnTracked(smtpSink, ['-c', ...(process.getuid?.() === 0 ? ['-u', 'nobody'] : []), '-m', '1000', `127.0.0.1:${port}`, '1024'], {
          stdio: ['ignore', 'pipe', 'inherit'],
        })
      : spawnTracked(process.execPath, [fileURLToPath(import.meta.url), String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
    const sink = new Sink(smtpSink ? 'smtp-sink' : 'node', port, child);
    await waitForSmtp(port, 10_000, `sink (${sink.kind})`, () => child.exitCode === null);
    return sink;
  }

  get count(): number {
    return this.arrivals.length;
  }

  /** Resolves with the arrival time of message n (counting since the sink started); rejects after timeoutMs. */
  waitForCount(n: number, timeoutMs: number): Promise<number> {
    if (this.count >= n) return Promise.resolve(this.arrivals[n - 1]!);
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.count < n) return;
        this.#waiters.delete(check);
        clearTimeout(timer);
        resolve(this.arrivals[n - 1]!);
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new TimeoutError(`sink counted ${this.count} of ${n} messages within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      this.#waiters.add(check);
    });
  }

  async stop(): Promise<void> {
    this.child.kill('SIGTERM');
    await waitForExit(this.child, 5000, 'sink').catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------------------
// The Node sink: a minimal SMTP server that accepts everything and discards it.

const END_OF_DATA = Buffer.from('\r\n.\r\n');
const EHLO_REPLY = '250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE\r\n';

function serveSink(port: number): void {
  let messages = 0;
  const server = net.createServer((socket) => {
    let inData = false;
    let line = '';
    // The last 4 bytes seen in DATA: the terminator may straddle two reads.
    let tail = Buffer.alloc(0);
    socket.setNoDelay(true);
    socket.on('error', () => socket.destroy());
    socket.write('220 bench-sink ESMTP\r\n');
    socket.on('data', (chunk: Buffer) => {
      // Pipelined commands arrive together; answer them all with one write.
      let replies = '';
      let pos = 0;
      while (pos < chunk.length) {
        if (inData) {
          const end = findEndOfData(tail, chunk, pos);
          if (end === -1) {
            tail = Buffer.from(Buffer.concat([tail, chunk.subarray(Math.max(pos, chunk.length - 4))]).subarray(-4));
            break;
          }
          inData = false;
          pos = end;
          messages++;
          process.stdout.write(`mesg=${messages}\r`);
          replies += '250 2.0.0 Ok: discarded\r\n';
          continue;
        }
        const lf = chunk.indexOf(0x0a, pos);
        if (lf === -1) {
          line += chunk.toString('latin1', pos);
          break;
        }
        line += chunk.toString('latin1', pos, lf + 1);
        pos = lf + 1;
        const verb = line.slice(0, 4).toUpperCase();
        line = '';
        if (verb === 'EHLO') replies += EHLO_REPLY;
        else if (verb === 'DATA') {
          replies += '354 End data with <CR><LF>.<CR><LF>\r\n';
          inData = true;
          // The DATA line's own CRLF counts as the first half of the terminator (an empty message).
          tail = Buffer.from('\r\n');
        } else if (verb === 'QUIT') {
          socket.end(`${replies}221 2.0.0 Bye\r\n`);
          return;
        } else if (['HELO', 'MAIL', 'RCPT', 'RSET', 'NOOP'].includes(verb)) replies += '250 2.0.0 Ok\r\n';
        else replies += '502 5.5.2 Command not implemented\r\n';
      }
      if (replies) socket.write(replies);
    });
  });
  server.listen(port, '127.0.0.1');
  process.once('SIGTERM', () => process.exit(0));
}

/** Offset just after the terminator "\r\n.\r\n" in chunk from `from`, given the previous bytes; -1 if absent. */
function findEndOfData(tail: Buffer, chunk: Buffer, from: number): number {
  if (tail.length > 0) {
    const joint = Buffer.concat([tail, chunk.subarray(from, from + 4)]);
    const i = joint.indexOf(END_OF_DATA);
    if (i !== -1) return from + i + END_OF_DATA.length - tail.length;
  }
  const i = chunk.indexOf(END_OF_DATA, from);
  return i === -1 ? -1 : i + END_OF_DATA.length;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  serveSink(Number(process.argv[2]));
}
