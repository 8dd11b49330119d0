/**
 * Who may relay through which listener: network trust, AUTH (PLAIN and LOGIN, plain and over TLS), the
 * AUTH failure throttle, TLS policy (STARTTLS, implicit TLS, minimum version) and the per-address
 * connection limit. Real sockets on loopback; nodemailer and swaks as clients, raw dialogs where the
 * exact bytes matter.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import net from 'node:net';
import { after, before, test, type TestContext } from 'node:test';
import tls from 'node:tls';
import nodemailer from 'nodemailer';
import { hashPassword } from '../../src/inbound/passwords.js';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { freePort, smtpDialog, smtpReplies, smtpReplyCodes } from '../helpers/net.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { makeTestCertificate } from '../helpers/tls.js';

const USER = 'alice';
const PASSWORD = 'correct horse battery staple';
const PLAIN_OK = Buffer.from(`\0${USER}\0${PASSWORD}`).toString('base64');
const PLAIN_BAD = Buffer.from(`\0${USER}\0wrong password`).toString('base64');
const b64 = (s: string): string => Buffer.from(s).toString('base64');

/** What the installed swaks can do: undefined when it is missing, else its `--support` report. */
const SWAKS_SUPPORT = (() => {
  try {
    return execFileSync('swaks', ['--support'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    return undefined;
  }
})();

let dir: Awaited<ReturnType<typeof tempDir>>;
let sink: Sink;
let relay: InProcessDaemon;

before(async () => {
  dir = await tempDir();
  sink = await startSink();
  const cert = await makeTestCertificate();
  const tlsFiles = { cert: cert.certPath, key: cert.keyPath };
  const trusted = ['127.0.0.1/32'];
  const listeners = [
    { name: 'relay', role: 'relay', networks: trusted, allowInsecureAuth: true, maxAuthFailures: 3 },
    { name: 'submission', role: 'submission', allowInsecureAuth: true, maxAuthFailures: 3 },
    // Neither TLS nor allowInsecureAuth: nobody may send a password here.
    { name: 'relay-cleartext', role: 'relay', networks: trusted },
    { name: 'starttls', role: 'submission', tls: tlsFiles },
    { name: 'smtps', role: 'submission', tls: { ...tlsFiles, implicit: true } },
    { name: 'tls13', role: 'relay', networks: trusted, tls: { ...tlsFiles, minVersion: 'TLSv1.3' } },
    { name: 'limited', role: 'relay', networks: trusted, maxConnectionsPerIp: 2 },
  ];
  for (const l of listeners) Object.assign(l, { host: '127.0.0.1', port: await freePort() });
  relay = await startInProcess(
    await testConfig({
      dir: dir.path,
      listeners,
      users: [{ name: USER, passwordHash: await hashPassword(PASSWORD) }],
      upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' } },
    }),
  );
});

after(async () => {
  await relay?.stop();
  await sink?.close();
  await dir?.remove();
});

// ---------------------------------------------------------------------------------------------------------
// helpers

let serial = 0;
/** A recipient address no other test uses, so a test can find its own message at the sink. */
function uniqueRecipient(label: string): string {
  return `${label}-${++serial}@example.com`;
}

function rawMessage(subject: string): string {
  return `From: sender@example.com\r\nSubject: ${subject}\r\nMessage-ID: <${subject}@relay-policy.test>\r\n\r\nbody of ${subject}\r\n`;
}

type ClientOptions = Parameters<typeof nodemailer.createTransport>[0] & object;

function client(listener: string, options: Record<string, unknown> = {}) {
  return nodemailer.createTransport({
    host: '127.0.0.1',
    port: relay.port(listener),
    secure: false,
    ignoreTLS: true,
    // Deliberately short: a refused session must fail fast, not hang the test.
    connectionTimeout: 5000,
    greetingTimeout: 5000,
    socketTimeout: 5000,
    ...options,
  } as ClientOptions);
}

async function send(listener: string, recipient: string, options: Record<string, unknown> = {}) {
  const transport = client(listener, options);
  try {
    return await transport.sendMail({ envelope: { from: 'sender@example.com', to: [recipient] }, raw: rawMessage(recipient.split('@')[0]!) });
  } finally {
    transport.close();
  }
}

interface SwaksResult {
  exitCode: number;
  output: string;
}

function swaks(args: string[]): Promise<SwaksResult> {
  return new Promise((resolve) => {
    execFile('swaks', ['--server', '127.0.0.1', '--timeout', '10', ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? Number((err as { code?: unknown }).code ?? 1) : 0;
      resolve({ exitCode: Number.isFinite(code) ? code : 1, output: `${stdout}${stderr}` });
    });
  });
}

function skipWithoutSwaks(t: TestContext, feature?: 'TLS'): boolean {
  if (SWAKS_SUPPORT === undefined) {
    t.skip('swaks is not installed (apt-get install swaks)');
    return true;
  }
  if (feature && !new RegExp(`^=== ${feature} supported`, 'm').test(SWAKS_SUPPORT)) {
    t.skip(`this swaks has no ${feature} support (needs libnet-ssleay-perl)`);
    return true;
  }
  return false;
}

/** The reply lines of an EHLO reply in a transcript (the one after the greeting). */
function ehloKeywords(transcript: string): string[] {
  const ehlo = smtpReplies(transcript)[1] ?? '';
  return ehlo.split('\r\n').slice(1).map((l) => l.slice(4));
}

/**
 * EHLO, STARTTLS, TLS handshake, EHLO again: returns the extension keywords advertised inside TLS.
 * Written out by hand so the second EHLO reply is read exactly as the server sent it.
 */
async function ehloInsideStartTls(port: number): Promise<string[]> {
  const socket = net.connect({ host: '127.0.0.1', port });
  const reader = lineReader(socket);
  try {
    assert.match(await reader.reply(), /^220 /);
    socket.write('EHLO client.test\r\n');
    assert.match(await reader.reply(), /^250 /m);
    socket.write('STARTTLS\r\n');
    assert.match(await reader.reply(), /^220 /);
    reader.detach();
    const secure = tls.connect({ socket, rejectUnauthorized: false, servername: 'localhost' });
    await new Promise<void>((resolve, reject) => secure.once('secureConnect', resolve).once('error', reject));
    const inner = lineReader(secure);
    secure.write('EHLO client.test\r\n');
    const reply = await inner.reply();
    secure.write('QUIT\r\n');
    secure.end();
    return reply.split('\r\n').slice(1).map((l) => l.slice(4));
  } finally {
    socket.destroy();
  }
}

/** Reads complete SMTP replies from a socket, one at a time. */
function lineReader(socket: net.Socket) {
  let buffer = '';
  let waiting: (() => void) | undefined;
  const onData = (chunk: Buffer) => {
    buffer += chunk.toString('latin1');
    waiting?.();
  };
  socket.on('data', onData);
  const takeReply = (): string | undefined => {
    const m = /^(?:\d{3}-[^\r\n]*\r\n)*\d{3}(?: [^\r\n]*)?\r\n/.exec(buffer);
    if (!m) return undefined;
    buffer = buffer.slice(m[0].length);
    return m[0].replace(/\r\n$/, '');
  };
  return {
    reply(timeoutMs = 5000): Promise<string> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no complete reply within ${timeoutMs} ms; got ${JSON.stringify(buffer)}`)), timeoutMs);
        const check = () => {
          const r = takeReply();
          if (r === undefined) return;
          clearTimeout(timer);
          waiting = undefined;
          resolve(r);
        };
        waiting = check;
        socket.once('close', () => {
          clearTimeout(timer);
          reject(new Error(`connection closed; got ${JSON.stringify(buffer)}`));
        });
        check();
      });
    },
    detach(): void {
      socket.off('data', onData);
    },
  };
}

/** Connects, writes `data` at once and resolves with everything received until the server closes. */
function writeUntilClosed(port: number, data: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => socket.write(data));
    let received = '';
    const timer = setTimeout(() => (socket.destroy(), reject(new Error(`server kept the connection open; got ${JSON.stringify(received)}`))), 5000);
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('error', () => {});
    socket.on('close', () => (clearTimeout(timer), resolve(received)));
  });
}

/** Opens a connection and resolves with it and the first reply the server sends (greeting or refusal). */
function connectForFirstReply(port: number): Promise<{ socket: net.Socket; first: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let data = '';
    socket.setEncoding('latin1');
    socket.on('error', reject);
    socket.on('data', (chunk: string) => {
      data += chunk;
      const nl = data.indexOf('\r\n');
      if (nl !== -1) resolve({ socket, first: data.slice(0, nl) });
    });
    socket.on('close', () => reject(new Error(`closed without a reply; got ${JSON.stringify(data)}`)));
  });
}

// ---------------------------------------------------------------------------------------------------------
// network trust on the relay role

test('relay role: a client in the allowed network sends without AUTH (nodemailer)', async () => {
  const rcpt = uniqueRecipient('trusted-nodemailer');
  const info = await send('relay', rcpt);
  assert.match(info.response, /^250 2\.0\.0 Ok: queued as [0-9A-Z]{22}$/);
  const msg = await sink.waitForRecipient(rcpt);
  assert.equal(msg.sender, 'sender@example.com');
  assert.match(msg.raw.toString('latin1'), /^Received: from [^\r\n]*\[127\.0\.0\.1\]/);
  assert.match(msg.raw.toString('latin1'), /with ESMTP id /, 'unauthenticated, cleartext: plain ESMTP');
});

test('relay role: a client in the allowed network sends without AUTH (swaks)', async (t) => {
  if (skipWithoutSwaks(t)) return;
  const rcpt = uniqueRecipient('trusted-swaks');
  const r = await swaks(['--port', String(relay.port('relay')), '--from', 'sender@example.com', '--to', rcpt, '--h-Subject', 'swaks trusted']);
  assert.equal(r.exitCode, 0, r.output);
  assert.match(r.output, /<- {2}250 2\.0\.0 Ok: queued as [0-9A-Z]{22}/);
  const msg = await sink.waitForRecipient(rcpt);
  assert.match(msg.raw.toString('latin1'), /\r\nSubject: swaks trusted\r\n/);
});

test('relay role: a client outside the allowed network gets 530 5.7.0 at MAIL FROM (raw dialog)', async () => {
  const transcript = await smtpDialog(
    relay.port('relay'),
    ['EHLO outsider.test', 'MAIL FROM:<sender@example.com>', 'RCPT TO:<someone@example.com>', 'QUIT'],
    { localAddress: '127.0.0.2' },
  );
  const replies = smtpReplies(transcript);
  assert.deepEqual(smtpReplyCodes(transcript), [220, 250, 530, 503, 221]);
  assert.equal(replies[2], '530 5.7.0 Authentication required');
  const refused = await relay.waitForLog((l) => l.event === 'smtp.refused' && l.client === '127.0.0.2' && l.listener === 'relay');
  assert.equal(refused.reason, 'authentication required');
});

test('relay role: a client outside the allowed network is refused (nodemailer, localAddress 127.0.0.2)', async () => {
  const rcpt = uniqueRecipient('outsider-nodemailer');
  await assert.rejects(send('relay', rcpt, { localAddress: '127.0.0.2' }), (err: { responseCode?: number; response?: string }) => {
    assert.equal(err.responseCode, 530);
    assert.match(err.response ?? '', /^530 5\.7\.0 /);
    return true;
  });
});

test('relay role: a client outside the allowed network is refused (swaks --local-interface 127.0.0.2)', async (t) => {
  if (skipWithoutSwaks(t)) return;
  const r = await swaks(['--port', String(relay.port('relay')), '--local-interface', '127.0.0.2', '--from', 'sender@example.com', '--to', uniqueRecipient('outsider-swaks')]);
  assert.notEqual(r.exitCode, 0, r.output);
  assert.match(r.output, /<\*\* {1}530 5\.7\.0 Authentication required/);
});

test('relay role: the same outside client relays once authenticated (nodemailer)', async () => {
  const rcpt = uniqueRecipient('outsider-auth-nodemailer');
  const info = await send('relay', rcpt, { localAddress: '127.0.0.2', auth: { user: USER, pass: PASSWORD } });
  assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
  const msg = await sink.waitForRecipient(rcpt);
  assert.match(msg.raw.toString('latin1'), /\[127\.0\.0\.2\]\)[^]*with ESMTPA id /);
  const received = await relay.waitForLog((l) => l.event === 'received' && Array.isArray(l.recipients) && (l.recipients as string[]).includes(rcpt));
  assert.equal(received.user, USER);
  assert.equal(received.client, '127.0.0.2');
});

test('relay role: the same outside client relays once authenticated (swaks)', async (t) => {
  if (skipWithoutSwaks(t)) return;
  const rcpt = uniqueRecipient('outsider-auth-swaks');
  const r = await swaks([
    '--port', String(relay.port('relay')), '--local-interface', '127.0.0.2',
    '--auth', 'LOGIN', '--auth-user', USER, '--auth-password', PASSWORD,
    '--from', 'sender@example.com', '--to', rcpt,
  ]);
  assert.equal(r.exitCode, 0, r.output);
  assert.match(r.output, /<- {2}235 /);
  await sink.waitForRecipient(rcpt);
});

// ---------------------------------------------------------------------------------------------------------
// submission role and AUTH

test('submission role: MAIL without AUTH is refused with 530 even from 127.0.0.1', async () => {
  const transcript = await smtpDialog(relay.port('submission'), ['EHLO client.test', 'MAIL FROM:<sender@example.com>', 'QUIT']);
  assert.deepEqual(smtpReplyCodes(transcript), [220, 250, 530, 221]);
  assert.equal(smtpReplies(transcript)[2], '530 5.7.0 Authentication required');
  await assert.rejects(send('submission', uniqueRecipient('submission-noauth')), { responseCode: 530 });
});

for (const listener of ['relay', 'submission']) {
  test(`${listener} role: AUTH PLAIN and AUTH LOGIN both succeed (raw dialog)`, async () => {
    const plain = await smtpDialog(
      relay.port(listener),
      ['EHLO client.test', `AUTH PLAIN ${PLAIN_OK}`, 'MAIL FROM:<sender@example.com>', 'QUIT'],
      { localAddress: '127.0.0.2' },
    );
    assert.deepEqual(smtpReplyCodes(plain), [220, 250, 235, 250, 221]);
    assert.match(ehloKeywords(plain).join('\n'), /^AUTH PLAIN LOGIN$/m);

    const login = await smtpDialog(
      relay.port(listener),
      ['EHLO client.test', 'AUTH LOGIN', b64(USER), b64(PASSWORD), 'MAIL FROM:<sender@example.com>', 'QUIT'],
      { localAddress: '127.0.0.2' },
    );
    assert.deepEqual(smtpReplyCodes(login), [220, 250, 334, 334, 235, 250, 221]);
  });

  for (const method of ['PLAIN', 'LOGIN']) {
    test(`${listener} role: nodemailer sends with AUTH ${method} from outside the trusted network`, async () => {
      const rcpt = uniqueRecipient(`${listener}-${method.toLowerCase()}`);
      const info = await send(listener, rcpt, { localAddress: '127.0.0.2', auth: { user: USER, pass: PASSWORD }, authMethod: method });
      assert.match(info.response, /^250 2\.0\.0 /);
      const msg = await sink.waitForRecipient(rcpt);
      assert.match(msg.raw.toString('latin1'), /with ESMTPA id /);
    });
  }
}

test('a wrong password gets 535 5.7.8 and the session may try again', async () => {
  const transcript = await smtpDialog(
    relay.port('submission'),
    ['EHLO client.test', `AUTH PLAIN ${PLAIN_BAD}`, 'AUTH LOGIN', b64('nobody'), b64(PASSWORD), `AUTH PLAIN ${PLAIN_OK}`, 'QUIT'],
    { localAddress: '127.0.0.5' },
  );
  const replies = smtpReplies(transcript);
  assert.deepEqual(smtpReplyCodes(transcript), [220, 250, 535, 334, 334, 535, 235, 221]);
  assert.equal(replies[2], '535 5.7.8 Authentication credentials invalid');
  assert.equal(replies[5], '535 5.7.8 Authentication credentials invalid', 'an unknown user reads like a wrong password');
  await assert.rejects(send('submission', uniqueRecipient('bad-pass'), { auth: { user: USER, pass: 'nope' }, localAddress: '127.0.0.5' }), {
    responseCode: 535,
  });
});

test('after maxAuthFailures failures from one address AUTH gets 421 4.7.0 there, while another address still authenticates', async () => {
  const port = relay.port('submission');
  const guessing = await smtpDialog(
    port,
    ['EHLO guesser.test', `AUTH PLAIN ${PLAIN_BAD}`, `AUTH PLAIN ${PLAIN_BAD}`, `AUTH PLAIN ${PLAIN_BAD}`, `AUTH PLAIN ${PLAIN_OK}`, 'NOOP'],
    { localAddress: '127.0.0.6' },
  );
  const codes = smtpReplyCodes(guessing);
  assert.deepEqual(codes.slice(0, 6), [220, 250, 535, 535, 535, 421], guessing);
  assert.equal(smtpReplies(guessing)[5], '421 4.7.0 Too many failed authentication attempts, try again later');
  assert.equal(codes.length, 6, 'the connection is closed after the 421, NOOP is not answered');

  // A new connection from the same address is still throttled, even with the right password.
  const again = await smtpDialog(port, ['EHLO guesser.test', `AUTH PLAIN ${PLAIN_OK}`], { localAddress: '127.0.0.6' });
  assert.deepEqual(smtpReplyCodes(again), [220, 250, 421]);

  // Another address is not affected.
  const other = await smtpDialog(port, ['EHLO other.test', `AUTH PLAIN ${PLAIN_OK}`, 'MAIL FROM:<sender@example.com>', 'QUIT'], { localAddress: '127.0.0.3' });
  assert.deepEqual(smtpReplyCodes(other), [220, 250, 235, 250, 221]);
  const rcpt = uniqueRecipient('after-lockout');
  await send('submission', rcpt, { localAddress: '127.0.0.3', auth: { user: USER, pass: PASSWORD } });
  await sink.waitForRecipient(rcpt);
});

test('parallel AUTH attempts from one address cannot outrun maxAuthFailures', async () => {
  // Six connections guess at once; password checks are slow (scrypt), so a throttle that only counts
  // finished attempts would let all six through to a 535.
  const dialogs = await Promise.all(
    Array.from({ length: 6 }, () => smtpDialog(relay.port('submission'), ['EHLO guesser.test', `AUTH PLAIN ${PLAIN_BAD}`], { localAddress: '127.0.0.7' })),
  );
  const authCodes = dialogs.map((t) => smtpReplyCodes(t)[2]);
  assert.equal(authCodes.filter((c) => c === 535).length, 3, `AUTH replies: ${authCodes.join(', ')}`);
  assert.equal(authCodes.filter((c) => c === 421).length, 3, `AUTH replies: ${authCodes.join(', ')}`);
});

test('a listener with neither TLS nor allowInsecureAuth never takes a password in clear', async () => {
  const transcript = await smtpDialog(
    relay.port('relay-cleartext'),
    ['EHLO client.test', `AUTH PLAIN ${PLAIN_OK}`, 'MAIL FROM:<sender@example.com>', 'QUIT'],
    { localAddress: '127.0.0.2' },
  );
  assert.ok(!ehloKeywords(transcript).some((k) => k.startsWith('AUTH')), `AUTH advertised:\n${transcript}`);
  const codes = smtpReplyCodes(transcript);
  assert.equal(smtpReplies(transcript)[2], '538 5.7.11 Encryption required for requested authentication mechanism', 'RFC 4954, not 500 "command not recognized"');
  assert.equal(codes[3], 530, 'still unauthenticated, so MAIL is refused');
  assert.equal(await rejections('relay-cleartext', 'auth_without_tls', 538), 1);
});

// ---------------------------------------------------------------------------------------------------------
// TLS

async function rejections(listener: string, reason: string, code: number): Promise<number> {
  const metric = await relay.daemon.registry.getSingleMetric('smarthost_smtp_rejections_total')!.get();
  return metric.values.find((v) => v.labels.listener === listener && v.labels.reason === reason && v.labels.code === String(code))?.value ?? 0;
}

test('a client that sends AUTH before STARTTLS again and again is not cut off as sending unknown commands, and STARTTLS still follows', async () => {
  const refusedBefore = await rejections('starttls', 'auth_without_tls', 530);
  const attempts = Array.from({ length: 12 }, () => `AUTH PLAIN ${PLAIN_OK}`);
  const t = await smtpDialog(relay.port('starttls'), ['EHLO printer.test', ...attempts, 'STARTTLS']);
  assert.deepEqual(smtpReplyCodes(t), [220, 250, ...attempts.map(() => 530), 220], t);
  assert.equal(await rejections('starttls', 'auth_without_tls', 530), refusedBefore + 12);
});

test('STARTTLS listener without allowInsecureAuth: AUTH only after STARTTLS', async () => {
  const port = relay.port('starttls');
  const before = await smtpDialog(port, ['EHLO client.test', `AUTH PLAIN ${PLAIN_OK}`, 'QUIT']);
  const keywords = ehloKeywords(before);
  assert.ok(keywords.includes('STARTTLS'), before);
  assert.ok(!keywords.some((k) => k.startsWith('AUTH')), `AUTH advertised before STARTTLS:\n${before}`);
  assert.equal(smtpReplies(before)[2], '530 5.7.0 Must issue a STARTTLS command first', 'RFC 3207, not 500 "command not recognized"');

  const inside = await ehloInsideStartTls(port);
  assert.ok(inside.includes('AUTH PLAIN LOGIN'), `no AUTH after STARTTLS: ${inside.join(' | ')}`);
  assert.ok(!inside.includes('STARTTLS'));
});

test('STARTTLS listener: nodemailer with requireTLS authenticates and sends', async () => {
  const rcpt = uniqueRecipient('starttls');
  const info = await send('starttls', rcpt, {
    ignoreTLS: false,
    requireTLS: true,
    tls: { rejectUnauthorized: false },
    auth: { user: USER, pass: PASSWORD },
  });
  assert.match(info.response, /^250 2\.0\.0 /);
  const raw = (await sink.waitForRecipient(rcpt)).raw.toString('latin1');
  assert.match(raw, /\(using TLSv1\.[23] [A-Z0-9_-]+\)/);
  assert.match(raw, /with ESMTPSA id /);
});

test('STARTTLS listener: swaks with --tls authenticates and sends', async (t) => {
  if (skipWithoutSwaks(t, 'TLS')) return;
  const rcpt = uniqueRecipient('starttls-swaks');
  const r = await swaks([
    '--port', String(relay.port('starttls')), '--tls',
    '--auth', 'PLAIN', '--auth-user', USER, '--auth-password', PASSWORD,
    '--from', 'sender@example.com', '--to', rcpt,
  ]);
  assert.equal(r.exitCode, 0, r.output);
  await sink.waitForRecipient(rcpt);
});

test('implicit TLS listener: nodemailer with secure: true authenticates and sends', async () => {
  const rcpt = uniqueRecipient('smtps');
  const info = await send('smtps', rcpt, { secure: true, tls: { rejectUnauthorized: false }, auth: { user: USER, pass: PASSWORD } });
  assert.match(info.response, /^250 2\.0\.0 /);
  const raw = (await sink.waitForRecipient(rcpt)).raw.toString('latin1');
  assert.match(raw, /with ESMTPSA id /);
  // A cleartext client on the implicit TLS port never sees a greeting: its EHLO fails the handshake.
  const cleartext = await writeUntilClosed(relay.port('smtps'), 'EHLO client.test\r\n');
  assert.doesNotMatch(cleartext, /^220/m);
});

test('minVersion TLSv1.3: a client limited to TLS 1.2 cannot connect, a TLS 1.3 client can', async () => {
  const refused = uniqueRecipient('tls12');
  await assert.rejects(send('tls13', refused, { ignoreTLS: false, requireTLS: true, tls: { rejectUnauthorized: false, maxVersion: 'TLSv1.2' } }));
  const failure = await relay.waitForLog((l) => l.event === 'smtp.error' && l.listener === 'tls13');
  assert.ok(failure, 'the handshake failure is logged');

  const accepted = uniqueRecipient('tls13');
  await send('tls13', accepted, { ignoreTLS: false, requireTLS: true, tls: { rejectUnauthorized: false } });
  const raw = (await sink.waitForRecipient(accepted)).raw.toString('latin1');
  assert.match(raw, /\(using TLSv1\.3 /);
  assert.ok(!sink.deliveredRecipients().includes(refused), 'nothing was relayed for the TLS 1.2 client');
});

// ---------------------------------------------------------------------------------------------------------
// connection limits

test('maxConnectionsPerIp 2: the third concurrent connection gets 421 4.7.0, a slot frees up on close', async () => {
  const port = relay.port('limited');
  const first = await connectForFirstReply(port);
  const second = await connectForFirstReply(port);
  try {
    assert.match(first.first, /^220 /);
    assert.match(second.first, /^220 /);
    const third = await connectForFirstReply(port);
    third.socket.destroy();
    assert.equal(third.first, '421 4.7.0 Too many connections from your address, try again later');

    // Another address has its own allowance.
    const elsewhere = await smtpDialog(port, ['QUIT'], { localAddress: '127.0.0.2' });
    assert.deepEqual(smtpReplyCodes(elsewhere), [220, 221]);
  } finally {
    first.socket.destroy();
    second.socket.destroy();
  }
  // Once the server has seen a close, the address gets a slot again. The server notices the close
  // asynchronously, so try a bounded number of times; each attempt waits for a complete reply.
  let greeting = '';
  for (let attempt = 0; attempt < 50 && !greeting.startsWith('220'); attempt++) {
    const next = await connectForFirstReply(port);
    next.socket.destroy();
    greeting = next.first;
  }
  assert.match(greeting, /^220 /, 'closed connections must give their slot back');
});
