/**
 * Stopping with SMTP sessions open, over real sockets, with delivery.shutdownTimeout at 60 s so that a stop
 * waiting for it is caught by the test's own timeout: an idle session gets 421 4.3.2 at once, a session with a
 * transaction finishes it (its 250 after the fsync) and then gets the same 421.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { hashPassword } from '../../src/inbound/passwords.js';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { freePort } from '../helpers/net.js';
import { startSink, type Sink } from '../helpers/sink.js';

const SHUTTING_DOWN = '421 4.3.2 Service shutting down';
/** Far beyond the test's timeout: a stop that waits for it fails the test. */
const SHUTDOWN_TIMEOUT = '60s';
const TEST_TIMEOUT = { timeout: 20_000 };

/** A raw SMTP client driven one step at a time: replies are read in order, and `closed` settles when the server closes. */
class RawSession {
  readonly #socket: net.Socket;
  readonly #replies: string[] = [];
  readonly #waiting: ((reply: string) => void)[] = [];
  #buffer = '';
  readonly closed: Promise<void>;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      let end: RegExpExecArray | null;
      // A complete reply ends with a line "NNN text" (not "NNN-text").
      while ((end = /^\d{3}(?: [^\r\n]*)?\r\n/m.exec(this.#buffer))) {
        const reply = this.#buffer.slice(0, end.index + end[0].length).trimEnd();
        this.#buffer = this.#buffer.slice(end.index + end[0].length);
        const waiter = this.#waiting.shift();
        if (waiter) waiter(reply);
        else this.#replies.push(reply);
      }
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  /** Connects and reads the greeting. */
  static async open(t: TestContext, port: number): Promise<RawSession> {
    const session = new RawSession(net.connect(port, '127.0.0.1'));
    t.after(() => session.#socket.destroy());
    assert.match(await session.reply(), /^220 /);
    return session;
  }

  /** The next reply (the last line of a multi-line one included). */
  reply(): Promise<string> {
    const ready = this.#replies.shift();
    return ready !== undefined ? Promise.resolve(ready) : new Promise((resolve) => this.#waiting.push(resolve));
  }

  write(data: string): void {
    this.#socket.write(data);
  }

  async command(line: string): Promise<string> {
    this.write(`${line}\r\n`);
    return this.reply();
  }

  /** The last line of the next reply. */
  async lastLine(): Promise<string> {
    return (await this.reply()).split('\r\n').at(-1)!;
  }
}

const USER = 'app';
const PASSWORD = 'correct horse';

interface Running {
  relay: InProcessDaemon;
  /** Daemon.stop with the configured shutdownTimeout; the first call is the one that counts. */
  stop(timeoutMs?: number): Promise<void>;
}

async function startDaemon(t: TestContext, dir: string, upstreamPort: number, listeners?: Record<string, unknown>[]): Promise<Running> {
  const config = await testConfig({
    dir,
    upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: upstreamPort, security: 'none' } },
    users: [{ name: USER, passwordHash: await hashPassword(PASSWORD) }],
    ...(listeners ? { listeners } : {}),
  });
  (config.delivery as Record<string, unknown>).shutdownTimeout = SHUTDOWN_TIMEOUT;
  const relay = await startInProcess(config);
  let stopping: Promise<void> | undefined;
  const stop = (timeoutMs?: number) => (stopping ??= relay.daemon.stop(timeoutMs));
  // After a test that failed before its own stop, without waiting the 60 s.
  t.after(() => stop(0));
  return { relay, stop };
}

async function setup(t: TestContext, listeners?: Record<string, unknown>[]): Promise<Running & { dir: string; sink: Sink }> {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const sink = await startSink();
  t.after(() => sink.close());
  return { dir: dir.path, sink, ...(await startDaemon(t, dir.path, sink.port, listeners)) };
}

const message = (id: string) => `From: app@origin.test\r\nTo: user@dest.test\r\nSubject: ${id}\r\nMessage-ID: <${id}@origin.test>\r\n\r\nbody of ${id}\r\n`;

/** A session on the relay listener with MAIL FROM accepted. */
async function inTransaction(t: TestContext, relay: InProcessDaemon): Promise<RawSession> {
  const session = await RawSession.open(t, relay.port('relay'));
  assert.match(await session.command('EHLO app.test'), /^250/);
  assert.match(await session.command('MAIL FROM:<app@origin.test>'), /^250 /);
  return session;
}

/** A session on the relay listener in DATA, the message sent up to its last line. */
async function inData(t: TestContext, relay: InProcessDaemon, id: string): Promise<RawSession> {
  const session = await inTransaction(t, relay);
  assert.match(await session.command('RCPT TO:<user@dest.test>'), /^250 /);
  assert.match(await session.command('DATA'), /^354 /);
  session.write(message(id).slice(0, -2));
  return session;
}

/** An idle session on the relay listener: when it reads its 421, the stop has reached every session. */
async function idle(t: TestContext, relay: InProcessDaemon): Promise<RawSession> {
  const session = await RawSession.open(t, relay.port('relay'));
  assert.match(await session.command('EHLO app.test'), /^250/);
  return session;
}

const queuedAs = (reply: string) => /^250 2\.0\.0 Ok: queued as ([0-9A-Z]{22})$/.exec(reply)?.[1];

test('idle sessions, authenticated or not, get 421 4.3.2 at once and do not hold the stop for shutdownTimeout', TEST_TIMEOUT, async (t) => {
  const { relay, stop } = await setup(t);
  const greeted = await RawSession.open(t, relay.port('relay'));
  const afterEhlo = await idle(t, relay);
  const authenticated = await RawSession.open(t, relay.port('submission'));
  assert.match(await authenticated.command('EHLO app.test'), /^250/);
  assert.match(await authenticated.command(`AUTH PLAIN ${Buffer.from(`\0${USER}\0${PASSWORD}`).toString('base64')}`), /^235 /);
  const betweenMessages = await idle(t, relay);
  assert.match(await betweenMessages.command('MAIL FROM:<app@origin.test>'), /^250 /);
  assert.match(await betweenMessages.command('RCPT TO:<user@dest.test>'), /^250 /);
  assert.match(await betweenMessages.command('DATA'), /^354 /);
  assert.ok(queuedAs(await betweenMessages.command(`${message('before-stop')}.`)));

  await stop();

  for (const session of [greeted, afterEhlo, authenticated, betweenMessages]) {
    assert.equal(await session.lastLine(), SHUTTING_DOWN);
    await session.closed;
  }
});

test('a message in DATA when the stop begins is stored and answered 250, then 421; one after MAIL FROM may still be sent; both are delivered after the restart', TEST_TIMEOUT, async (t) => {
  const { dir, sink, relay, stop } = await setup(t);
  const inDataSession = await inData(t, relay, 'in-data');
  const afterMail = await inTransaction(t, relay);
  const signal = await idle(t, relay);

  const stopped = stop();
  assert.equal(await signal.lastLine(), SHUTTING_DOWN);

  inDataSession.write('\r\n.\r\n');
  const first = queuedAs(await inDataSession.lastLine());
  assert.ok(first, 'the message in DATA gets its 250 with a queue ID');
  assert.equal(await inDataSession.lastLine(), SHUTTING_DOWN);
  await inDataSession.closed;

  assert.match(await afterMail.command('RCPT TO:<user@dest.test>'), /^250 /);
  assert.match(await afterMail.command('DATA'), /^354 /);
  const second = queuedAs(await afterMail.command(`${message('after-mail')}.`));
  assert.ok(second, 'the transaction begun before the stop is finished');
  assert.equal(await afterMail.lastLine(), SHUTTING_DOWN);
  await afterMail.closed;

  await stopped;
  const queued = await readdir(join(dir, 'spool', 'queue'));
  assert.ok(queued.includes(`${first}.msg`) && queued.includes(`${second}.msg`), `both in the spool: ${queued.join(', ')}`);
  assert.equal(sink.messages.length, 0, 'no delivery starts during the stop');

  const restarted = await startDaemon(t, dir, sink.port);
  await sink.waitForMessages(2);
  assert.deepEqual(sink.messages.map((m) => m.messageId).sort(), ['<after-mail@origin.test>', '<in-data@origin.test>']);
  await restarted.stop();
});

test('during the stop, RSET and a refused message are answered and then 421; QUIT pipelined after the end of a message still gets 221', TEST_TIMEOUT, async (t) => {
  const listeners = [{ name: 'relay', role: 'relay', host: '127.0.0.1', port: await freePort(), networks: ['127.0.0.1/32'], maxMessageSize: '10KB' }];
  const { relay, stop } = await setup(t, listeners);
  const resetting = await inTransaction(t, relay);
  const quitting = await inData(t, relay, 'quit-after');
  const oversized = await inData(t, relay, 'oversized');
  const signal = await idle(t, relay);

  const stopped = stop();
  assert.equal(await signal.lastLine(), SHUTTING_DOWN);

  assert.equal(await resetting.command('RSET'), '250 2.0.0 Flushed');
  assert.equal(await resetting.lastLine(), SHUTTING_DOWN);
  await resetting.closed;

  // Refused while the client is still sending: smtp-server replies only at the end of the data.
  oversized.write('x'.repeat(12_000));
  await relay.waitForLog((l) => l.event === 'receive.failed');
  oversized.write('\r\n.\r\n');
  assert.match(await oversized.lastLine(), /^552 /);
  assert.equal(await oversized.lastLine(), SHUTTING_DOWN);
  await oversized.closed;

  quitting.write('\r\n.\r\nQUIT\r\n');
  assert.ok(queuedAs(await quitting.lastLine()));
  assert.match(await quitting.lastLine(), /^221 2\.0\.0 Bye$/);
  await quitting.closed;
  await stopped;
});

test('a client connected but not yet greeted when the stop begins gets the same 421 4.3.2, with no second enhanced status code', TEST_TIMEOUT, async (t) => {
  const { relay, stop } = await setup(t);
  const listener = relay.daemon.listeners.find((l) => l.config.name === 'relay')!;
  const accepted = new Promise<void>((resolve) => listener.server.server.once('connection', () => resolve()));
  const early = net.connect(relay.port('relay'), '127.0.0.1');
  t.after(() => early.destroy());
  early.on('error', () => {});
  let received = '';
  early.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
  const closed = new Promise<void>((resolve) => early.once('close', () => resolve()));
  await accepted;
  // smtp-server makes the session one setImmediate after taking the socket, and greets it 100 ms later.
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(listener.server.connections.size, 1);

  await stop();
  await closed;
  assert.equal(received, `${SHUTTING_DOWN}\r\n`);
});

test('a connection still owing its PROXY header does not hold the stop', TEST_TIMEOUT, async (t) => {
  const listeners = [{ name: 'relay', role: 'relay', host: '127.0.0.1', port: await freePort(), networks: ['192.0.2.0/24'], proxyProtocol: { from: ['127.0.0.1'] } }];
  const { relay, stop } = await setup(t, listeners);
  // Emitted after smtp-server's own handler has taken the socket (to wait for the header).
  const accepted = new Promise<void>((resolve) => relay.daemon.listeners[0]!.server.server.once('connection', () => resolve()));
  const silent = net.connect(relay.port('relay'), '127.0.0.1');
  t.after(() => silent.destroy());
  silent.on('error', () => {});
  const closed = new Promise<void>((resolve) => silent.once('close', () => resolve()));
  await accepted;

  await stop();
  await closed;
});
