/**
 * ENHANCEDSTATUSCODES (RFC 2034): the listener advertises it, and every reply but the greeting, the EHLO reply
 * and 3xx carries exactly one enhanced status code (RFC 3463) of the reply's class: smarthost's own replies
 * their own (no second one from smtp-server in front), smtp-server's the one its table gives or, where that
 * is wrong for the situation, the one Postfix answers with. Raw dialogs on real sockets.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { hashPassword } from '../../src/inbound/passwords.js';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { freePort, smtpDialog, smtpReplies } from '../helpers/net.js';
import { startSink, type Sink } from '../helpers/sink.js';

const USER = 'scanner';
const PASSWORD = 'scanner password';
const plain = (password: string): string => Buffer.from(`\0${USER}\0${password}`).toString('base64');

let dir: Awaited<ReturnType<typeof tempDir>>;
let sink: Sink;
let relay: InProcessDaemon;

before(async () => {
  dir = await tempDir();
  sink = await startSink();
  relay = await startInProcess(
    await testConfig({
      dir: dir.path,
      listeners: [
        // 127.0.0.1 is outside its networks: it relays only after AUTH.
        { name: 'relay', role: 'relay', host: '127.0.0.1', port: await freePort(), networks: ['192.0.2.0/24'], allowInsecureAuth: true, maxMessageSize: '10KB' },
        { name: 'single', role: 'relay', host: '127.0.0.1', port: await freePort(), networks: ['127.0.0.1/32'], maxClients: 1 },
        { name: 'idle', role: 'relay', host: '127.0.0.1', port: await freePort(), networks: ['127.0.0.1/32'], socketTimeout: '300ms' },
      ],
      upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' } },
      extra: { users: [{ name: USER, passwordHash: await hashPassword(PASSWORD), allowedSenders: ['scanner@example.com'] }] },
    }),
  );
});

after(async () => {
  await relay?.stop();
  await sink?.close();
  await dir?.remove();
});

/** A reply RFC 2034 gives no enhanced status code: the greeting, the reply to EHLO or HELO, and 3xx. */
const EXEMPT = /^(?:220 smarthost\.test ESMTP|250-smarthost\.test |3\d\d[ -])/;
/** One enhanced status code of the reply's class, and no second one after it. */
const ONE_CODE = /^([245])\d\d ([245])\.\d{1,3}\.\d{1,3} (?![245]\.\d{1,3}\.\d{1,3}(?:\s|$))/;

function assertOneEnhancedCodeEach(transcript: string): void {
  for (const reply of smtpReplies(transcript)) {
    if (EXEMPT.test(reply)) continue;
    const m = ONE_CODE.exec(reply);
    assert.ok(m, `not exactly one enhanced status code: ${reply}\n${transcript}`);
    assert.equal(m[2], m[1], `enhanced status code of another class: ${reply}`);
  }
}

/** Reads a connection's replies line by line; for sessions a dialog cannot script (waiting, or closed by the server). */
function openSession(port: number): { socket: net.Socket; line(): Promise<string> } {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  let buffered = '';
  let closed = false;
  const waiting: { resolve(line: string): void; reject(err: Error): void }[] = [];
  const deliver = () => {
    let nl: number;
    while (waiting.length > 0 && (nl = buffered.indexOf('\r\n')) !== -1) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 2);
      waiting.shift()!.resolve(line);
    }
    if (closed) for (const w of waiting.splice(0)) w.reject(new Error(`connection closed without another line (left: ${JSON.stringify(buffered)})`));
  };
  socket.on('data', (chunk: Buffer) => ((buffered += chunk.toString('latin1')), deliver()));
  socket.on('close', () => ((closed = true), deliver()));
  return { socket, line: () => new Promise((resolve, reject) => (waiting.push({ resolve, reject }), deliver())) };
}

test('EHLO advertises ENHANCEDSTATUSCODES, and a whole session gets one code per reply: smtp-server\'s corrected where wrong, ours never doubled', async () => {
  const t = await smtpDialog(relay.port('relay'), [
    'EHLO client.test',
    'MAIL FROM:<sender@example.com',
    'RCPT TO:<boss@example.org>',
    'MAIL FROM:<scanner@example.com>',
    `AUTH PLAIN ${plain('wrong')}`,
    `AUTH PLAIN ${plain(PASSWORD)}`,
    'MAIL FROM:<ceo@example.com>',
    'MAIL FROM:<scanner@example.com> SIZE=20000',
    'MAIL FROM:<scanner@example.com>',
    'RCPT TO:<>',
    'RCPT TO:<boss@example.org>',
    'DATA',
    'RAW:Subject: enhanced status codes\r\n\r\nhi\r\n.\r\n',
    'MAIL FROM:<scanner@example.com>',
    'RCPT TO:<boss@example.org>',
    'DATA',
    `RAW:${'Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n'.repeat(31)}Subject: loop\r\n\r\nhi\r\n.\r\n`,
    'RSET',
    'NOOP',
    'VRFY boss@example.org',
    'VRFY',
    'HELP',
    'FROBNICATE',
    'LHLO client.test',
    'QUIT',
  ]);
  const replies = smtpReplies(t);
  assert.match(replies[1]!, /^250-ENHANCEDSTATUSCODES$/m, t);
  assertOneEnhancedCodeEach(t);
  const queued = /^250 2\.0\.0 Ok: queued as [0-9A-Z]{22}$/;
  assert.match(replies[13]!, queued, t);
  replies[13] = '250 2.0.0 Ok: queued as ID';
  assert.deepEqual(replies.slice(2), [
    '501 5.1.7 Error: Bad sender address syntax',
    '503 5.5.1 Error: need MAIL command',
    '530 5.7.0 Authentication required',
    '535 5.7.8 Authentication credentials invalid',
    '235 2.7.0 Authentication successful',
    '553 5.7.1 Sender <ceo@example.com> is not allowed for user scanner (users[0].allowedSenders)',
    '552 5.3.4 Message size exceeds fixed maximum message size',
    '250 2.1.0 Accepted',
    '501 5.1.3 Error: Bad recipient address syntax',
    '250 2.1.5 Accepted',
    '354 End data with <CR><LF>.<CR><LF>',
    '250 2.0.0 Ok: queued as ID',
    '250 2.1.0 Accepted',
    '250 2.1.5 Accepted',
    '354 End data with <CR><LF>.<CR><LF>',
    '554 5.4.0 Too many Received headers: mail loop detected',
    '250 2.0.0 Flushed',
    '250 2.0.0 OK',
    // Nothing is verified: 2.1.5 (smtp-server's) would say the address is valid. Postfix: 252 2.0.0.
    '252 2.0.0 Try to send something. No promises though',
    '501 5.5.4 Error: Syntax: VRFY address',
    '214 2.0.0 See https://tools.ietf.org/html/rfc5321 for details',
    '500 5.5.2 Error: command not recognized',
    // LMTP's greeting, unknown to an SMTP listener: smtp-server would exempt its reply as it does EHLO's.
    '500 5.5.2 Error: command not recognized',
    '221 2.0.0 Bye',
  ], t);
});

test('the greeting and the replies to EHLO and HELO carry no enhanced status code', async () => {
  const t = await smtpDialog(relay.port('relay'), ['EHLO', 'EHLO client.test', 'HELO client.test', 'QUIT']);
  assert.deepEqual(smtpReplies(t).map((r) => r.split('\r\n')[0]), [
    '220 smarthost.test ESMTP smarthost',
    '501 Error: syntax: EHLO hostname',
    '250-smarthost.test Nice to meet you, [127.0.0.1]',
    '250 smarthost.test Nice to meet you, [127.0.0.1]',
    '221 2.0.0 Bye',
  ], t);
});

test('a session closed with 421 gets the code of its cause: too many errors 4.7.0, an HTTP request 4.7.0, an idle timeout 4.4.2', async () => {
  const errors = await smtpDialog(relay.port('relay'), ['EHLO client.test', ...Array.from({ length: 10 }, () => 'FROBNICATE')]);
  assert.equal(smtpReplies(errors).at(-1), '421 4.7.0 Error: too many unrecognized commands', errors);
  assertOneEnhancedCodeEach(errors);

  const http = await smtpDialog(relay.port('relay'), ['GET / HTTP/1.1']);
  assert.deepEqual(smtpReplies(http).slice(1), ['421 4.7.0 HTTP requests not allowed'], http);

  const idle = openSession(relay.port('idle'));
  assert.match(await idle.line(), /^220 /);
  assert.equal(await idle.line(), '421 4.4.2 Timeout - closing connection');
  idle.socket.destroy();
});

test('a connection over maxClients gets 421 4.3.2 in place of the greeting, and is counted', async () => {
  const metric = async () =>
    (await relay.daemon.registry.getSingleMetric('smarthost_smtp_rejections_total')!.get()).values.find(
      (v) => v.labels.listener === 'single' && v.labels.reason === 'max_clients' && v.labels.code === '421',
    )?.value ?? 0;
  const before = await metric();
  const first = openSession(relay.port('single'));
  assert.match(await first.line(), /^220 /);
  const second = openSession(relay.port('single'));
  assert.equal(await second.line(), '421 4.3.2 Too many connected clients, try again in a moment');
  second.socket.destroy();
  first.socket.destroy();
  assert.equal(await metric(), before + 1);
});

test('a session still in its transaction when shutdownTimeout ends is cut with 421 4.3.2, as the drain answers the others', async (t) => {
  const own = await tempDir();
  const daemon = await startInProcess(await testConfig({ dir: own.path }));
  let stopping: Promise<void> | undefined;
  const stop = (timeoutMs: number) => (stopping ??= daemon.daemon.stop(timeoutMs));
  const session = openSession(daemon.port('relay'));
  // Also after an assertion failed before the test's own stop.
  t.after(async () => (session.socket.destroy(), await stop(0), await own.remove()));
  assert.match(await session.line(), /^220 /);
  session.socket.write('HELO client.test\r\nMAIL FROM:<sender@example.com>\r\n');
  assert.match(await session.line(), /^250 /);
  assert.equal(await session.line(), '250 2.1.0 Accepted');
  const stopped = stop(100);
  assert.equal(await session.line(), '421 4.3.2 Server shutting down');
  await stopped;
});
