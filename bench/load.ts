/**
 * Our load generator: raw `net` SMTP sessions, no client library, so the only cost measured is the
 * server's. Each session says EHLO once, then repeats MAIL/RCPT/DATA (pipelined when the server offers
 * PIPELINING) for its share of the messages. The accept latency of a message is the time from writing the
 * final "\r\n.\r\n" to reading the server's reply; only a 250 counts as acknowledged.
 *
 * Run directly (`node dist/bench/load.js --port P --sessions S --messages M --size BYTES`) it prints one
 * JSON LoadResult on stdout; the orchestrator runs it that way so generator and measurement do not share
 * an event loop.
 */
import { once } from 'node:events';
import net from 'node:net';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { now } from './process.js';

export interface LoadOptions {
  host?: string;
  port: number;
  sessions: number;
  messages: number;
  /** Approximate size of each message in bytes, header included. */
  size: number;
  from?: string;
  to?: string;
  /** Longest wait for any one server reply. */
  replyTimeoutMs?: number;
}

export interface LoadResult {
  messages: number;
  acknowledged: number;
  /** Messages the server answered with anything but 250 (at MAIL, RCPT, DATA or after the data). */
  rejected: number;
  failedSessions: number;
  /** First few distinct errors and non-250 replies, for the report. */
  errors: string[];
  /** Epoch ms: first connection attempt, and the last reply of the last session. */
  startedAt: number;
  finishedAt: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number; mean: number } | undefined;
}

interface Reply {
  code: number;
  text: string;
}

/** Reads SMTP replies (multi-line ones joined) from a socket, in order. */
class ReplyReader {
  #buffer = '';
  #lines: string[] = [];
  readonly #ready: Reply[] = [];
  #waiter: { resolve: (r: Reply) => void; reject: (e: Error) => void } | undefined;
  #failure: Error | undefined;

  constructor(socket: net.Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (text: string) => this.#feed(text));
    socket.on('error', (err) => this.#fail(err));
    socket.on('close', () => this.#fail(new Error('connection closed by server')));
    socket.on('timeout', () => {
      this.#fail(new Error('no reply within the timeout'));
      socket.destroy();
    });
  }

  next(): Promise<Reply> {
    const ready = this.#ready.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => (this.#waiter = { resolve, reject }));
  }

  #feed(text: string): void {
    this.#buffer += text;
    let lf: number;
    while ((lf = this.#buffer.indexOf('\n')) !== -1) {
      const line = this.#buffer.slice(0, lf).replace(/\r$/, '');
      this.#buffer = this.#buffer.slice(lf + 1);
      this.#lines.push(line);
      if (line[3] === '-') continue; // "250-..." continues the reply
      const reply = { code: Number(line.slice(0, 3)), text: this.#lines.join('\n') };
      this.#lines = [];
      const waiter = this.#waiter;
      this.#waiter = undefined;
      if (waiter) waiter.resolve(reply);
      else this.#ready.push(reply);
    }
  }

  #fail(err: Error): void {
    this.#failure ??= err;
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.reject(err);
  }
}

/**
 * Message content: a small unique header, then a body of 78-byte lines (no line starts with ".", so no
 * dot-stuffing), written from one shared block of at most 1 MB so a 100 MB message costs no 100 MB buffer.
 */
class MessageSource {
  readonly #block: Buffer;
  readonly #bodyBytes: number;

  constructor(
    private readonly size: number,
    private readonly from: string,
    private readonly to: string,
  ) {
    const line = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 the quick brown fox\r\n'.slice(-78);
    this.#bodyBytes = Math.max(78, size - 300);
    const blockLines = Math.ceil(Math.min(this.#bodyBytes, 1024 * 1024) / line.length);
    this.#block = Buffer.from(line.repeat(blockLines));
  }

  header(id: string): Buffer {
    return Buffer.from(
      `From: <${this.from}>\r\nTo: <${this.to}>\r\nSubject: bench ${id}\r\nDate: ${new Date().toUTCString()}\r\n` +
        `Message-ID: <${id}@bench.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n`,
    );
  }

  /** Body blocks totalling about `size` bytes (whole lines), each ending in CRLF. */
  *bodyChunks(): Generator<Buffer> {
    let left = this.#bodyBytes;
    while (left > 0) {
      const chunk = left >= this.#block.length ? this.#block : this.#block.subarray(0, Math.ceil(left / 78) * 78);
      left -= chunk.length;
      yield chunk;
    }
  }
}

/** Writes with backpressure; a connection lost while waiting to drain fails the write instead of hanging. */
async function write(socket: net.Socket, data: Buffer | string): Promise<void> {
  if (socket.write(data)) return;
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error) => {
      socket.off('drain', onDrain);
      socket.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(new Error('connection closed while writing'));
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}

/** One SMTP session sending `count` messages. Throws on connection or protocol trouble. */
async function runSession(o: Required<LoadOptions>, index: number, count: number, source: MessageSource, result: LoadResult, latencies: number[]): Promise<void> {
  const socket = net.connect(o.port, o.host);
  socket.setNoDelay(true);
  socket.setTimeout(o.replyTimeoutMs);
  const replies = new ReplyReader(socket);
  const reject = (what: string, reply: Reply) => {
    result.rejected++;
    const note = `${what}: ${reply.text.split('\n').pop()}`;
    if (result.errors.length < 5 && !result.errors.includes(note)) result.errors.push(note);
  };
  try {
    await once(socket, 'connect');
    const greeting = await replies.next();
    if (greeting.code !== 220) throw new Error(`greeting: ${greeting.text}`);
    await write(socket, 'EHLO bench-client.test\r\n');
    const ehlo = await replies.next();
    if (ehlo.code !== 250) throw new Error(`EHLO: ${ehlo.text}`);
    const pipelining = /^250[ -]PIPELINING/im.test(ehlo.text);
    const envelope = [`MAIL FROM:<${o.from}>\r\n`, `RCPT TO:<${o.to}>\r\n`, 'DATA\r\n'];
    for (let n = 0; n < count; n++) {
      let answers: Reply[];
      if (pipelining) {
        await write(socket, envelope.join(''));
        answers = [await replies.next(), await replies.next(), await replies.next()];
      } else {
        answers = [];
        for (const command of envelope) {
          await write(socket, command);
          const answer = await replies.next();
          answers.push(answer);
          if (answer.code >= 400) break;
        }
      }
      const [mail, rcpt, data] = answers;
      if (mail?.code !== 250 || rcpt?.code !== 250 || data?.code !== 354) {
        reject('envelope', answers.find((a) => a.code >= 400) ?? answers[answers.length - 1]!);
        await write(socket, 'RSET\r\n');
        await replies.next();
        continue;
      }
      await write(socket, source.header(`${index}.${n}.${process.pid}`));
      for (const chunk of source.bodyChunks()) await write(socket, chunk);
      // The body ends in CRLF, so ".\r\n" completes the "\r\n.\r\n" terminator.
      const sentAt = now();
      socket.write('.\r\n');
      const final = await replies.next();
      if (final.code === 250) {
        result.acknowledged++;
        latencies.push(now() - sentAt);
      } else {
        reject('end of data', final);
      }
    }
    await write(socket, 'QUIT\r\n');
    await replies.next().catch(() => undefined);
  } finally {
    socket.destroy();
  }
}

export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const o: Required<LoadOptions> = { host: '127.0.0.1', from: 'from@bench.test', to: 'to@bench.test', replyTimeoutMs: 120_000, ...options };
  const sessions = Math.max(1, Math.min(o.sessions, o.messages));
  const source = new MessageSource(o.size, o.from, o.to);
  const latencies: number[] = [];
  const result: LoadResult = {
    messages: o.messages,
    acknowledged: 0,
    rejected: 0,
    failedSessions: 0,
    errors: [],
    startedAt: now(),
    finishedAt: 0,
    latencyMs: undefined,
  };
  // Fixed shares, not a shared counter: every session stays busy to the end, so "200 sessions" means 200 at once.
  const shares = Array.from({ length: sessions }, (_, i) => Math.floor(o.messages / sessions) + (i < o.messages % sessions ? 1 : 0));
  await Promise.all(
    shares.map((count, i) =>
      runSession(o, i, count, source, result, latencies).catch((err: Error) => {
        result.failedSessions++;
        if (result.errors.length < 5) result.errors.push(`session ${i}: ${err.message}`);
      }),
    ),
  );
  result.finishedAt = now();
  result.latencyMs = summarize(latencies);
  return result;
}

/** Nearest-rank percentiles, in milliseconds. */
function summarize(values: number[]): LoadResult['latencyMs'] {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
  return { p50: at(50), p90: at(90), p99: at(99), max: sorted[sorted.length - 1]!, mean: sorted.reduce((a, b) => a + b, 0) / sorted.length };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string' },
      sessions: { type: 'string', default: '1' },
      messages: { type: 'string', default: '1' },
      size: { type: 'string', default: '4096' },
    },
  });
  if (!values.port) {
    console.error('usage: load.js --port PORT [--host H] [--sessions S] [--messages M] [--size BYTES]');
    process.exit(2);
  }
  const result = await runLoad({
    host: values.host,
    port: Number(values.port),
    sessions: Number(values.sessions),
    messages: Number(values.messages),
    size: Number(values.size),
  });
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
