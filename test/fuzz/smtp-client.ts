/**
 * A raw SMTP client for fuzzing: writes exactly the bytes of a generated session (bursts, partial lines,
 * split writes, STARTTLS with or without the handshake) and ends it the way the plan says (QUIT, FIN, RST,
 * plain destroy). It waits for replies only where the server owes one; where that is comes from a model of
 * the server's input parser (simulate below), which takes the reply codes already seen as facts and guesses
 * optimistically only about replies still to come.
 */
import net from 'node:net';
import tls from 'node:tls';

/** smtp-server's default maxCommandLength: a longer command line (or unfinished line) closes the session. */
export const MAX_COMMAND_LINE = 16 * 1024;

const HTTP_REQUEST = /^(OPTIONS|GET|HEAD|POST|PUT|DELETE|TRACE|CONNECT) \/.* HTTP\/\d\.\d$/i;

export type Ending = 'quit' | 'end' | 'destroy' | 'reset';

export type Step =
  /** Bytes written as one piece, or split at `splits` (offsets modulo the length) into several writes. */
  | { kind: 'write'; data: Buffer; splits: number[]; wait: boolean }
  /** STARTTLS, and the TLS handshake if the server agrees. */
  | { kind: 'starttls' };

export interface SessionPlan {
  listener: string;
  from: string;
  /** Written before the greeting (an early talker). */
  early?: Buffer;
  steps: Step[];
  ending: Ending;
}

export interface SessionOutcome {
  transcript: string;
  /** Whether the session hit its time bound waiting for a reply or a close the model expected. */
  stalled: boolean;
  /** Replies received, and replies the model expected for everything written. */
  replies: { received: number; expected: number };
  closedByServer: boolean;
}

type Mode = 'command' | 'data' | 'tls-handshake' | 'closing';

interface SimState {
  mode: Mode;
  /** Unfinished command line. */
  pending: string;
  /** Last bytes of the data so far (the end-of-data sequence may straddle writes). */
  tail: string;
  /** Replies the server owes for everything simulated so far (the greeting is reply 0). */
  replies: number;
  /** AUTH continuation lines still expected, guessed from the AUTH command while its replies are unknown. */
  continuations: number;
  secure: boolean;
}

/**
 * How the server's parser reads `input` from `start`: complete command lines get one reply each; after a
 * DATA answered 354 (or not answered yet) everything up to <CRLF>.<CRLF> is data and gets one reply; a line
 * after a 334 is an AUTH continuation; STARTTLS answered 220 hands the connection to TLS; QUIT, a 421 reply,
 * an HTTP request line or an overlong line end the session.
 */
function simulate(start: SimState, input: string, codes: readonly number[], starttlsOffered: boolean): SimState {
  const st = { ...start };
  let rest = input;
  while (rest.length > 0 && (st.mode === 'command' || st.mode === 'data')) {
    if (st.mode === 'data') {
      const text = st.tail + rest;
      const end = text.indexOf('\r\n.\r\n');
      if (end === -1) {
        st.tail = text.slice(-4);
        break;
      }
      rest = text.slice(end + 5);
      st.mode = codes[st.replies++] === 421 ? 'closing' : 'command';
      continue;
    }
    const buf = st.pending + rest;
    const eol = /\r?\n/.exec(buf);
    if (!eol) {
      st.pending = buf;
      if (buf.length > MAX_COMMAND_LINE) st.mode = 'closing';
      break;
    }
    const line = buf.slice(0, eol.index);
    rest = buf.slice(eol.index + eol[0].length);
    st.pending = '';
    if (line.length > MAX_COMMAND_LINE) {
      st.mode = 'closing';
      break;
    }
    const previous = codes[st.replies - 1];
    const continuation = previous === undefined ? st.continuations > 0 : previous === 334;
    const code = codes[st.replies++];
    if (code === 421 || code === 221) {
      st.mode = 'closing';
      continue;
    }
    if (continuation) {
      st.continuations = code === undefined || code === 334 ? Math.max(0, st.continuations - 1) : 0;
      continue;
    }
    st.continuations = 0;
    const [verb = '', argument] = line.split(' ');
    switch (verb.toUpperCase()) {
      case 'DATA':
        if (code === undefined || code === 354) (st.mode = 'data'), (st.tail = '\r\n');
        break;
      case 'QUIT':
        st.mode = 'closing';
        break;
      case 'STARTTLS':
        if (code === 220 || (code === undefined && starttlsOffered && !st.secure && line.trim() === 'STARTTLS')) st.mode = 'tls-handshake';
        break;
      case 'AUTH': {
        const method = (argument ?? '').toUpperCase();
        const initial = line.split(' ').length > 2;
        if (code === undefined || code === 334) st.continuations = method === 'LOGIN' ? (initial ? 1 : 2) : method === 'PLAIN' && !initial ? 1 : 0;
        break;
      }
      default:
        if (HTTP_REQUEST.test(line)) st.mode = 'closing';
    }
  }
  return st;
}

/** Runs one planned session against 127.0.0.1:port; every wait ends at the latest after boundMs in all. */
export async function runSession(port: number, plan: SessionPlan, options: { starttlsOffered: boolean; boundMs: number }): Promise<SessionOutcome> {
  const client = new FuzzClient(port, plan.from, options.starttlsOffered, options.boundMs);
  try {
    await client.play(plan);
  } finally {
    client.dispose();
  }
  return { transcript: client.transcript, stalled: client.stalled, closedByServer: client.closedByServer, replies: client.replies() };
}

class FuzzClient {
  transcript = '';
  stalled = false;
  closedByServer = false;
  readonly #codes: number[] = [];
  #scanned = 0;
  #closed = false;
  #raw: net.Socket;
  #socket: net.Socket | tls.TLSSocket;
  /** Model state at the last point where every reply was in, and what was written since. */
  #base: SimState = { mode: 'command', pending: '', tail: '', replies: 1, continuations: 0, secure: false };
  #since = '';
  #wake: (() => void) | undefined;
  #ending = false;
  readonly #deadline: Promise<void>;
  readonly #timer: NodeJS.Timeout;
  readonly #onData = (chunk: Buffer) => this.#received(chunk);

  constructor(
    port: number,
    from: string,
    private readonly starttlsOffered: boolean,
    boundMs: number,
  ) {
    let reached!: () => void;
    this.#deadline = new Promise((resolve) => (reached = resolve));
    this.#timer = setTimeout(() => {
      this.stalled = true;
      reached();
      this.#wake?.();
    }, boundMs);
    this.#raw = this.#socket = net.connect({ host: '127.0.0.1', port, localAddress: from });
    this.#raw.setNoDelay(true);
    this.#raw.on('data', this.#onData);
    this.#raw.on('error', () => {});
    this.#raw.on('close', () => this.#onClose());
  }

  /** Destroys the TLS layer as well as the TCP socket: a TLS socket left behind can keep its process from exiting. */
  dispose(): void {
    clearTimeout(this.#timer);
    this.#socket.destroy();
    this.#raw.destroy();
  }

  async play(plan: SessionPlan): Promise<void> {
    await this.#until(new Promise<void>((resolve) => (this.#raw.once('connect', resolve), this.#raw.once('close', resolve))));
    if (plan.early) await this.#write(plan.early, []);
    else await this.#waitForReplies();
    for (const step of plan.steps) {
      if (this.#closed || this.stalled) return;
      if (step.kind === 'starttls') {
        await this.#starttls();
        continue;
      }
      await this.#write(step.data, step.splits);
      if (step.wait) await this.#waitForReplies();
    }
    await this.#end(plan.ending);
  }

  replies(): { received: number; expected: number } {
    return { received: this.#codes.length, expected: this.#state().replies };
  }

  #state(): SimState {
    return simulate(this.#base, this.#since, this.#codes, this.starttlsOffered);
  }

  #received(chunk: Buffer): void {
    this.transcript += chunk.toString('latin1');
    let nl: number;
    while ((nl = this.transcript.indexOf('\n', this.#scanned)) !== -1) {
      const reply = /^(\d{3})(?: |\r?$)/.exec(this.transcript.slice(this.#scanned, nl));
      if (reply) this.#codes.push(Number(reply[1]));
      this.#scanned = nl + 1;
    }
    this.#wake?.();
  }

  #onClose(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.closedByServer = !this.#ending;
    this.#wake?.();
  }

  /** Resolves with `p`, or undefined at the session's time bound. */
  #until<T>(p: Promise<T>): Promise<T | undefined> {
    return Promise.race([p, this.#deadline.then(() => undefined)]);
  }

  /** Waits until the server has answered everything written (true), or closed, or the bound passed (false). */
  async #waitForReplies(): Promise<boolean> {
    for (;;) {
      const state = this.#state();
      if (this.#codes.length >= state.replies) {
        this.#base = state;
        this.#since = '';
        return true;
      }
      if (this.#closed || this.stalled) return false;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }

  async #waitForClose(): Promise<void> {
    while (!this.#closed && !this.stalled) {
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }

  async #write(data: Buffer, splits: number[]): Promise<void> {
    if (this.#closed || data.length === 0) return;
    this.#since += data.toString('latin1');
    const cuts = [...new Set(splits.map((s) => s % data.length).filter((s) => s > 0))].sort((a, b) => a - b);
    let from = 0;
    for (const to of [...cuts, data.length]) {
      if (this.#closed || this.stalled) return;
      const piece = data.subarray(from, to);
      from = to;
      await this.#until(new Promise<void>((resolve) => this.#socket.write(piece, () => resolve())));
    }
  }

  async #starttls(): Promise<void> {
    await this.#write(Buffer.from('STARTTLS\r\n'), []);
    if (!(await this.#waitForReplies()) || this.#base.mode !== 'tls-handshake') return;
    this.#raw.off('data', this.#onData);
    const secure = tls.connect({ socket: this.#raw, rejectUnauthorized: false, servername: 'localhost' });
    secure.on('error', () => {});
    const ok = await this.#until(
      new Promise<boolean>((resolve) => {
        secure.once('secureConnect', () => resolve(true));
        secure.once('close', () => resolve(false));
      }),
    );
    if (!ok) {
      secure.destroy();
      this.#closed = true;
      return;
    }
    secure.on('data', this.#onData);
    secure.on('close', () => this.#onClose());
    this.#socket = secure;
    this.#base = { ...this.#base, mode: 'command', pending: '', tail: '', continuations: 0, secure: true };
  }

  async #end(ending: Ending): Promise<void> {
    if (this.#closed || this.stalled) return;
    if (ending === 'quit') {
      if (!(await this.#waitForReplies())) return;
      if (this.#base.mode === 'command') {
        // Finish a partial line and cancel an AUTH exchange first, so that QUIT is read as QUIT.
        const cancel = this.#codes[this.#base.replies - 1] === 334 ? '*\r\n' : '';
        this.#ending = true;
        await this.#write(Buffer.from(`${this.#base.pending ? '\r\n' : ''}${cancel}QUIT\r\n`), []);
        return this.#waitForClose();
      }
      if (this.#base.mode === 'closing') return this.#waitForClose();
      ending = 'destroy'; // in DATA or in a TLS handshake QUIT would not be a command
    }
    this.#ending = true;
    if (ending === 'destroy') this.#socket.destroy();
    // An RST only on a plain connection: under TLS the TCP handle belongs to the TLS layer.
    else if (ending === 'reset') this.#socket === this.#raw ? this.#raw.resetAndDestroy() : this.#socket.destroy();
    else {
      this.#socket.end();
      await this.#waitForClose();
    }
  }
}
