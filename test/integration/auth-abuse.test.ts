/**
 * Password guessing and password exposure, beyond what relay-policy.test.ts covers (AUTH PLAIN guessing in one
 * session, parallel guesses, AUTH refused on a cleartext relay listener, AUTH advertised only inside STARTTLS):
 * guessing with AUTH LOGIN one connection at a time and with unknown user names is throttled per address; a
 * submission listener without TLS never takes a password; in clear, AUTH LOGIN is refused before the client is
 * asked for one, and credentials sent in clear anyway do not authenticate the session that goes on under TLS,
 * where AUTH is accepted. The password check itself: the failure counter's window and bounds with an injected
 * clock, and verifyPassword / LocalUsers refusing near misses and unknown users (no timing is measured).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { AuthFailureGuard } from '../../src/inbound/auth-guard.js';
import { hashPassword, verifyPassword } from '../../src/inbound/passwords.js';
import { LocalUsers } from '../../src/inbound/users.js';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { freePort, smtpDialog, smtpReplies, smtpReplyCodes } from '../helpers/net.js';
import { makeTestCertificate } from '../helpers/tls.js';

const USER = 'alice';
const PASSWORD = 'correct horse battery staple';
const b64 = (s: string): string => Buffer.from(s).toString('base64');
const PLAIN_OK = b64(`\0${USER}\0${PASSWORD}`);
const THROTTLED = '421 4.7.0 Too many failed authentication attempts, try again later';

let dir: Awaited<ReturnType<typeof tempDir>>;
let relay: InProcessDaemon;
let hash: string;

before(async () => {
  dir = await tempDir();
  hash = await hashPassword(PASSWORD);
  const cert = await makeTestCertificate();
  const listeners = [
    { name: 'guarded', role: 'submission', allowInsecureAuth: true, maxAuthFailures: 3 },
    // Submission without TLS and without allowInsecureAuth: nobody can ever log in here.
    { name: 'cleartext-submission', role: 'submission' },
    { name: 'starttls', role: 'submission', tls: { cert: cert.certPath, key: cert.keyPath } },
  ];
  for (const l of listeners) Object.assign(l, { host: '127.0.0.1', port: await freePort() });
  relay = await startInProcess(await testConfig({ dir: dir.path, listeners, users: [{ name: USER, passwordHash: hash }] }));
});

after(async () => {
  await relay?.stop();
  await dir?.remove();
});

/** The extension keywords of the EHLO reply (the second reply of a transcript). */
function ehloKeywords(transcript: string): string[] {
  return (smtpReplies(transcript)[1] ?? '').split('\r\n').slice(1).map((l) => l.slice(4));
}

// ---------------------------------------------------------------------------------------------------------
// throttling

test('AUTH LOGIN guesses one connection at a time: after maxAuthFailures the address gets 421, even with the right password', async () => {
  const port = relay.port('guarded');
  const from = { localAddress: '127.0.0.8' };
  for (let i = 0; i < 3; i++) {
    const t = await smtpDialog(port, ['EHLO guesser.test', 'AUTH LOGIN', b64(USER), b64(`guess ${i}`), 'QUIT'], from);
    assert.deepEqual(smtpReplyCodes(t), [220, 250, 334, 334, 535, 221], t);
  }
  const blocked = await smtpDialog(port, ['EHLO guesser.test', 'AUTH LOGIN', b64(USER), b64(PASSWORD), 'NOOP'], from);
  assert.deepEqual(smtpReplyCodes(blocked), [220, 250, 334, 334, 421], blocked);
  assert.equal(smtpReplies(blocked)[4], THROTTLED);

  // Per address: the next address logs in with AUTH LOGIN at once.
  const other = await smtpDialog(port, ['EHLO other.test', 'AUTH LOGIN', b64(USER), b64(PASSWORD), 'MAIL FROM:<sender@example.com>', 'QUIT'], { localAddress: '127.0.0.9' });
  assert.deepEqual(smtpReplyCodes(other), [220, 250, 334, 334, 235, 250, 221], other);
});

test('guessing user names counts like guessing passwords: unknown users are throttled after maxAuthFailures', async () => {
  const port = relay.port('guarded');
  const from = { localAddress: '127.0.0.10' };
  const names = ['root', 'admin', 'Alice', 'alice '];
  const t = await smtpDialog(port, ['EHLO enumerator.test', ...names.map((n) => `AUTH PLAIN ${b64(`\0${n}\0${PASSWORD}`)}`)], from);
  const replies = smtpReplies(t);
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 535, 535, 535, 421], t);
  assert.ok(replies.slice(2, 5).every((r) => r === '535 5.7.8 Authentication credentials invalid'), 'unknown names read like wrong passwords');
  const failures = relay.logs().filter((l) => l.event === 'smtp.auth_failed' && l.client === '127.0.0.10');
  assert.equal(failures.length, 3);
});

test('malformed or cancelled AUTH never authenticates the session', async () => {
  const t = await smtpDialog(
    relay.port('guarded'),
    ['EHLO client.test', 'AUTH PLAIN !!notbase64!!', 'AUTH LOGIN', '*', 'AUTH PLAIN', '*', `AUTH PLAIN ${b64(`${USER}\0${PASSWORD}`)}`, 'AUTH CRAM-MD5', 'MAIL FROM:<sender@example.com>', 'QUIT'],
    { localAddress: '127.0.0.11' },
  );
  const codes = smtpReplyCodes(t);
  assert.ok(!codes.includes(235), t);
  assert.equal(codes.at(-2), 530, `still unauthenticated:\n${t}`);
  assert.equal(codes.at(-1), 221);
});

// ---------------------------------------------------------------------------------------------------------
// no password in clear

test('a submission listener with neither TLS nor allowInsecureAuth: no AUTH offered, none taken (PLAIN or LOGIN), MAIL refused', async () => {
  const port = relay.port('cleartext-submission');
  const t = await smtpDialog(port, ['EHLO client.test', `AUTH PLAIN ${PLAIN_OK}`, 'AUTH LOGIN', 'RSET', 'EHLO client.test', 'AUTH LOGIN', 'MAIL FROM:<sender@example.com>', 'QUIT']);
  assert.ok(!ehloKeywords(t).some((k) => k.startsWith('AUTH')), `AUTH advertised:\n${t}`);
  const codes = smtpReplyCodes(t);
  for (const i of [2, 3, 6]) assert.ok(codes[i]! >= 500 && codes[i]! < 600, `AUTH must be refused, and AUTH LOGIN before it asks for a password (no 334):\n${t}`);
  assert.ok(!codes.includes(334) && !codes.includes(235), t);
  assert.equal(codes[7], 530, 'MAIL needs an authenticated session');
  assert.ok(!smtpReplies(t)[5]!.split('\r\n').some((l) => l.slice(4).startsWith('AUTH')), 'not advertised after RSET and a second EHLO either');
});

/** Reads complete SMTP replies from a socket, one at a time (bounded by the socket's own life). */
function replyReader(socket: net.Socket | tls.TLSSocket) {
  let buffer = '';
  let wake: (() => void) | undefined;
  let closed = false;
  socket.on('data', (chunk: Buffer) => ((buffer += chunk.toString('latin1')), wake?.()));
  socket.on('close', () => ((closed = true), wake?.()));
  return {
    async reply(): Promise<string> {
      for (;;) {
        const m = /^(?:\d{3}-[^\r\n]*\r\n)*\d{3}(?: [^\r\n]*)?\r\n/.exec(buffer);
        if (m) {
          buffer = buffer.slice(m[0].length);
          return m[0].replace(/\r\n$/, '');
        }
        if (closed) throw new Error(`connection closed; got ${JSON.stringify(buffer)}`);
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
  };
}

/** Sends `clear` in clear, STARTTLS, then `inside` under TLS; one reply per line. Returns both lists of replies. */
async function startTlsDialog(port: number, clear: string[], inside: string[]): Promise<{ clear: string[]; inside: string[] }> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.12' });
  socket.on('error', () => {});
  const timer = setTimeout(() => socket.destroy(), 10_000);
  try {
    const plain = replyReader(socket);
    const replies = { clear: [await plain.reply()], inside: [] as string[] };
    for (const line of [...clear, 'STARTTLS']) {
      socket.write(`${line}\r\n`);
      replies.clear.push(await plain.reply());
    }
    assert.match(replies.clear.at(-1)!, /^220 /);
    socket.removeAllListeners('data');
    const secure = tls.connect({ socket, rejectUnauthorized: false, servername: 'localhost' });
    secure.on('error', () => {});
    await new Promise<void>((resolve, reject) => (secure.once('secureConnect', resolve), secure.once('close', () => reject(new Error('TLS handshake failed')))));
    const encrypted = replyReader(secure);
    for (const line of inside) {
      secure.write(`${line}\r\n`);
      replies.inside.push(await encrypted.reply());
    }
    secure.destroy();
    return replies;
  } finally {
    clearTimeout(timer);
    socket.destroy();
  }
}

test('STARTTLS listener: in clear AUTH LOGIN is refused before any 334 and correct credentials do not log in; inside TLS both methods work', async () => {
  const port = relay.port('starttls');
  const r = await startTlsDialog(
    port,
    ['EHLO client.test', 'AUTH LOGIN', `AUTH PLAIN ${PLAIN_OK}`, `AUTH LOGIN ${b64(USER)}`],
    ['EHLO client.test', 'MAIL FROM:<sender@example.com>', 'AUTH LOGIN', b64(USER), b64(PASSWORD), 'MAIL FROM:<sender@example.com>', 'RCPT TO:<rcpt@example.com>', 'DATA', 'Subject: after STARTTLS\r\n\r\nhello\r\n.', 'QUIT'],
  );
  for (const reply of r.clear.slice(2, 5)) assert.match(reply, /^5\d\d /, `AUTH in clear must be refused outright: ${r.clear.join(' | ')}`);
  const ehlo = r.inside[0]!.split('\r\n').map((l) => l.slice(4));
  assert.ok(ehlo.includes('AUTH PLAIN LOGIN'), `AUTH offered inside TLS: ${ehlo.join(' | ')}`);
  const codes = r.inside.map((reply) => Number(reply.slice(0, 3)));
  assert.deepEqual(codes, [250, 530, 334, 334, 235, 250, 250, 354, 250, 221], r.inside.join('\n'));
  assert.match(r.inside[8]!, /^250 2\.0\.0 Ok: queued as [0-9A-Z]{22}$/);
  const received = await relay.waitForLog((l) => l.event === 'received' && l.listener === 'starttls');
  assert.equal(received.user, USER);

  const plain = await startTlsDialog(port, ['EHLO client.test'], ['EHLO client.test', `AUTH PLAIN ${PLAIN_OK}`, 'MAIL FROM:<sender@example.com>', 'QUIT']);
  assert.deepEqual(plain.inside.map((reply) => Number(reply.slice(0, 3))), [250, 235, 250, 221], plain.inside.join('\n'));
});

test('inside TLS, MAIL FROM takes AUTH=<> (AUTH is offered there) but refuses REQUIRETLS, which the listener does not offer, with 555 5.5.4', async () => {
  const r = await startTlsDialog(
    relay.port('starttls'),
    ['EHLO client.test'],
    ['EHLO client.test', `AUTH PLAIN ${PLAIN_OK}`, 'MAIL FROM:<sender@example.com> REQUIRETLS', 'MAIL FROM:<sender@example.com> AUTH=<> SIZE=100', 'QUIT'],
  );
  assert.ok(!r.inside[0]!.split('\r\n').some((l) => l.slice(4) === 'REQUIRETLS'), r.inside[0]);
  assert.deepEqual(r.inside.map((reply) => Number(reply.slice(0, 3))), [250, 235, 555, 250, 221], r.inside.join('\n'));
  assert.equal(r.inside[2], '555 5.5.4 Unsupported parameter REQUIRETLS');
});

// ---------------------------------------------------------------------------------------------------------
// the failure counter and the password check

test('AuthFailureGuard: failures count per address within the window, and a success takes back only its own', () => {
  let now = 1_000_000;
  const guard = new AuthFailureGuard(3, 10_000, () => now);
  for (let i = 0; i < 3; i++) guard.recordFailure('192.0.2.1');
  assert.equal(guard.isBlocked('192.0.2.1'), true);
  assert.equal(guard.isBlocked('192.0.2.2'), false, 'another address is not affected');

  now += 10_001;
  assert.equal(guard.isBlocked('192.0.2.1'), false, 'failures older than the window no longer count');

  guard.recordFailure('192.0.2.1');
  guard.recordFailure('192.0.2.1');
  guard.recordFailure('192.0.2.1'); // counted before the check...
  guard.forgive('192.0.2.1'); // ...which then succeeded
  assert.equal(guard.isBlocked('192.0.2.1'), false);
  guard.recordFailure('192.0.2.1');
  assert.equal(guard.isBlocked('192.0.2.1'), true, 'a success does not wipe earlier failures');
});

test('AuthFailureGuard: the table is bounded, the least recently failing address is forgotten first', () => {
  const now = 1_000_000;
  const guard = new AuthFailureGuard(1, 10_000, () => now, 3);
  for (const a of ['a', 'b', 'c']) guard.recordFailure(a);
  guard.recordFailure('a'); // a failed again: now the most recent
  guard.recordFailure('d'); // over the bound: b goes
  assert.deepEqual(['a', 'b', 'c', 'd'].map((x) => guard.isBlocked(x)), [true, false, true, true]);
});

test('verifyPassword refuses a wrong password of the same length and of another length; a truncated key never matches', async () => {
  const h = await hashPassword('Secret-123');
  assert.equal(await verifyPassword('Secret-123', h), true);
  assert.equal(await verifyPassword('Secret-124', h), false, 'same length, last character differs');
  assert.equal(await verifyPassword('secret-123', h), false, 'same length, case differs');
  assert.equal(await verifyPassword('Secret-12', h), false, 'shorter');
  assert.equal(await verifyPassword('Secret-1234', h), false, 'longer');
  assert.equal(await verifyPassword('Secret-123'.repeat(100), h), false, 'much longer');
  // A stored key of another length (a damaged hash) is refused without comparing (timingSafeEqual would throw).
  const key = h.slice(h.lastIndexOf('$') + 1);
  const short = `${h.slice(0, h.lastIndexOf('$') + 1)}${Buffer.from(key, 'base64').subarray(0, 16).toString('base64').replace(/=+$/, '')}`;
  assert.equal(await verifyPassword('Secret-123', short), false);
});

test('LocalUsers.authenticate: unknown, differently spelled and prototype-named users are refused like wrong passwords', async () => {
  const users = new LocalUsers([{ name: USER, passwordHash: hash }]);
  assert.equal(await users.authenticate(USER, PASSWORD), true);
  assert.equal(await users.authenticate(USER, `${PASSWORD} `), false);
  for (const name of ['bob', 'Alice', 'alice ', '', '__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
    assert.equal(await users.authenticate(name, PASSWORD), false, `user ${JSON.stringify(name)}`);
    assert.equal(await users.authenticate(name, ''), false, `user ${JSON.stringify(name)} with an empty password`);
  }
  assert.equal(await new LocalUsers([]).authenticate(USER, PASSWORD), false, 'no users at all');
});
