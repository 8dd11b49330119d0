/**
 * What the listener does with input it must not accept as sent: oversized messages, too many recipients,
 * relay-trick addresses, protocol errors, early talkers, overlong lines, dropped connections, mail loops and
 * SMTP smuggling, and what it must keep intact: 8-bit bytes, and line endings normalised to CRLF. Raw
 * dialogs for byte-exact cases, nodemailer where a real client is the point.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import nodemailer from 'nodemailer';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { freePort, smtpDialog, smtpReplies, smtpReplyCodes } from '../helpers/net.js';
import { startSink, type Sink, type SinkMessage } from '../helpers/sink.js';

const MAX_SIZE = 10_000; // "10KB"

let dir: Awaited<ReturnType<typeof tempDir>>;
let sink: Sink;
let relay: InProcessDaemon;
let port: number;

before(async () => {
  dir = await tempDir();
  sink = await startSink();
  relay = await startInProcess(
    await testConfig({
      dir: dir.path,
      listeners: [
        { name: 'relay', role: 'relay', host: '127.0.0.1', port: await freePort(), networks: ['127.0.0.1/32'], maxMessageSize: '10KB', maxRecipients: 3 },
      ],
      upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' } },
    }),
  );
  port = relay.port('relay');
});

after(async () => {
  await relay?.stop();
  await sink?.close();
  await dir?.remove();
});

// ---------------------------------------------------------------------------------------------------------
// helpers

let serial = 0;
function uniqueRecipient(label: string): string {
  return `${label}-${++serial}@example.com`;
}

/** The raw bytes the sink got for a message, after our Received header (which must be the first field). */
function afterReceived(msg: SinkMessage): Buffer {
  const text = msg.raw.toString('latin1');
  const m = /^Received: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n/.exec(text);
  assert.ok(m, `no leading Received field:\n${text.slice(0, 300)}`);
  return msg.raw.subarray(Buffer.byteLength(m[0], 'latin1'));
}

/** Runs one whole transaction in a raw dialog; `data` is sent verbatim after the 354 (terminator included). */
function transaction(rcpts: string[], data: string, from = 'sender@example.com'): Promise<string> {
  return smtpDialog(port, ['EHLO client.test', `MAIL FROM:<${from}>`, ...rcpts.map((r) => `RCPT TO:<${r}>`), 'DATA', `RAW:${data}`, 'QUIT']);
}

async function rejections(reason: string, code: number): Promise<number> {
  const metric = await relay.daemon.registry.getSingleMetric('smarthost_smtp_rejections_total')!.get();
  return metric.values.find((v) => v.labels.listener === 'relay' && v.labels.reason === reason && v.labels.code === String(code))?.value ?? 0;
}

function queueIdOf(transcript: string): string {
  const m = /^250 2\.0\.0 Ok: queued as ([0-9A-Z]{22})\r?$/m.exec(transcript);
  assert.ok(m, `no queue ID in:\n${transcript}`);
  return m[1]!;
}

/**
 * Proves something was not delivered: sends a marker message after it, waits for the marker at the sink
 * (delivery is in order of acceptance here, one upstream, nothing deferred) and returns the recipients the
 * sink has seen by then.
 */
async function deliveredRecipientsAfterMarker(): Promise<string[]> {
  const marker = uniqueRecipient('marker');
  const t = await transaction([marker], 'Subject: marker\r\n\r\nmarker\r\n.\r\n');
  queueIdOf(t);
  await sink.waitForRecipient(marker);
  return sink.deliveredRecipients();
}

/** Waits until every message this daemon accepted has left the spool, then lists incoming/ and queue/. */
async function spoolContentsOnceSettled(): Promise<{ incoming: string[]; queue: string[] }> {
  const accepted = relay.logs().filter((l) => l.event === 'received').map((l) => l.queueId as string);
  for (const id of accepted) await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === id);
  const spool = join(dir.path, 'spool');
  return { incoming: await readdir(join(spool, 'incoming')), queue: await readdir(join(spool, 'queue')) };
}

/** Connects and writes `data` before the greeting; resolves with everything received until the server closes. */
function writeBeforeGreeting(data: string): Promise<string> {
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

function headerAndBody(subject: string, bodyBytes: number): string {
  const line = 'x'.repeat(76) + '\r\n';
  return `Subject: ${subject}\r\n\r\n${line.repeat(Math.ceil(bodyBytes / line.length))}`;
}

// ---------------------------------------------------------------------------------------------------------
// size and count limits

test('a message over maxMessageSize gets 552 5.3.4, is not delivered and leaves nothing in the spool', async () => {
  const rcpt = uniqueRecipient('oversized');
  const t = await transaction([rcpt], `${headerAndBody('too big', 2 * MAX_SIZE)}.\r\n`);
  const replies = smtpReplies(t);
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 250, 250, 354, 552, 221], t);
  assert.equal(replies[5], '552 5.3.4 Message size exceeds fixed maximum message size');

  const seen = await deliveredRecipientsAfterMarker();
  assert.ok(!seen.includes(rcpt), 'the oversized message must not be delivered');
  assert.deepEqual(await spoolContentsOnceSettled(), { incoming: [], queue: [] });
});

test('a message just under maxMessageSize is accepted', async () => {
  const rcpt = uniqueRecipient('fits');
  const data = headerAndBody('fits', MAX_SIZE - 400).slice(0, MAX_SIZE - 10);
  const t = await transaction([rcpt], `${data}\r\n.\r\n`);
  queueIdOf(t);
  await sink.waitForRecipient(rcpt);
});

test('a declared SIZE over the limit is refused with 552 5.3.4 at MAIL FROM, counted as message_size', async () => {
  const refusedBefore = await rejections('message_size', 552);
  const t = await smtpDialog(port, ['EHLO client.test', `MAIL FROM:<sender@example.com> SIZE=${MAX_SIZE + 1}`, `MAIL FROM:<sender@example.com> SIZE=${MAX_SIZE}`, 'QUIT']);
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 552, 250, 221]);
  assert.equal(smtpReplies(t)[2], '552 5.3.4 Message size exceeds fixed maximum message size');
  assert.match(smtpReplies(t)[1]!, /^250 SIZE 10000$/m, 'the limit is advertised');
  assert.equal(await rejections('message_size', 552), refusedBefore + 1);
});

test('more than maxRecipients: the 4th RCPT gets 452 4.5.3 (counted), one already accepted may be given again, and the first three are delivered', async () => {
  const refusedBefore = await rejections('too_many_recipients', 452);
  const rcpts = [1, 2, 3, 4].map(() => uniqueRecipient('many'));
  const t = await smtpDialog(port, ['EHLO client.test', 'MAIL FROM:<sender@example.com>', ...rcpts.map((r) => `RCPT TO:<${r}>`), `RCPT TO:<${rcpts[1]}>`, 'DATA', 'RAW:Subject: many\r\n\r\nhi\r\n.\r\n', 'QUIT']);
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 250, 250, 250, 250, 452, 250, 354, 250, 221], t);
  assert.equal(smtpReplies(t)[6], '452 4.5.3 Too many recipients');
  assert.equal(await rejections('too_many_recipients', 452), refusedBefore + 1);
  const msg = await sink.waitForRecipient(rcpts[0]!);
  assert.deepEqual(msg.recipients, rcpts.slice(0, 3));
  assert.ok(!sink.deliveredRecipients().includes(rcpts[3]!));
});

// ---------------------------------------------------------------------------------------------------------
// addresses

const TRICKS = ['<a@b@c>', '<@a:b@c>', '<a%b@c>', '<a!b>'];

for (const path of TRICKS) {
  test(`${path} is refused with 5xx as sender (at MAIL) and as recipient (at RCPT)`, async () => {
    const asSender = await smtpDialog(port, ['EHLO client.test', `MAIL FROM:${path}`, 'QUIT']);
    const senderCode = smtpReplyCodes(asSender)[2]!;
    assert.ok(senderCode >= 500 && senderCode < 600, `MAIL FROM:${path} must be refused:\n${asSender}`);

    const asRecipient = await smtpDialog(port, ['EHLO client.test', 'MAIL FROM:<sender@example.com>', `RCPT TO:${path}`, 'DATA', 'QUIT']);
    const codes = smtpReplyCodes(asRecipient);
    assert.equal(codes[2], 250, 'MAIL itself is fine');
    assert.ok(codes[3]! >= 500 && codes[3]! < 600, `RCPT TO:${path} must be refused:\n${asRecipient}`);
    assert.equal(codes[4], 503, 'no valid recipient, so DATA is out of sequence');
  });
}

test('<> is refused as recipient with 501 but accepted as the null sender', async () => {
  const t = await smtpDialog(port, ['EHLO client.test', 'MAIL FROM:<>', 'RCPT TO:<>', 'RCPT TO:<ok@example.com>', 'RSET', 'QUIT']);
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 250, 501, 250, 250, 221]);
});

test('routing tricks that parse as addresses get the documented 553 5.1.7 / 5.1.3', async () => {
  const t = await smtpDialog(port, ['EHLO client.test', 'MAIL FROM:<a%b@c.example>', 'MAIL FROM:<sender@example.com>', 'RCPT TO:<"a%b"@c.example>', 'RCPT TO:<a%b@c.example>', 'QUIT']);
  const replies = smtpReplies(t);
  assert.match(replies[2]!, /^553 5\.1\.7 Bad sender address: percent-hack/);
  assert.match(replies[4]!, /^553 5\.1\.3 Bad recipient address: quoted local part hides routing/);
  assert.match(replies[5]!, /^553 5\.1\.3 Bad recipient address: percent-hack/);
  const routed = smtpReplies(await smtpDialog(port, ['EHLO client.test', 'MAIL FROM:<@relay.example:a@c.example>', 'MAIL FROM:<>', 'RCPT TO:<@r1.example,@r2.example:b@c.example>', 'QUIT']));
  assert.match(routed[2]!, /^553 5\.1\.7 Bad sender address: source routes/);
  assert.match(routed[4]!, /^553 5\.1\.3 Bad recipient address: source routes/);
});

// ---------------------------------------------------------------------------------------------------------
// protocol errors

test('an unknown command gets a 500-class reply and the session goes on', async () => {
  const rcpt = uniqueRecipient('after-unknown');
  const t = await smtpDialog(port, ['EHLO client.test', 'FROBNICATE now', 'MAIL FROM:<sender@example.com>', `RCPT TO:<${rcpt}>`, 'DATA', 'RAW:Subject: after unknown\r\n\r\nhi\r\n.\r\n', 'QUIT']);
  const codes = smtpReplyCodes(t);
  assert.ok(codes[2]! >= 500 && codes[2]! < 510, t);
  assert.deepEqual(codes.slice(3), [250, 250, 354, 250, 221]);
  await sink.waitForRecipient(rcpt);
});

test('malformed MAIL FROM syntax gets 501', async () => {
  const t = await smtpDialog(port, ['EHLO client.test', 'MAIL FROM:sender@example.com', 'MAIL FROM <sender@example.com>', 'MAIL FROM:<sender@example.com', 'MAIL FROM:<sender@example.com> BODY', 'QUIT']);
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 501, 501, 501, 501, 221]);
});

test('a MAIL FROM or RCPT TO parameter of an extension the listener does not offer gets 555 5.5.4 and is counted; the offered ones are taken', async () => {
  const refusedBefore = await rejections('unsupported_parameter', 555);
  const rcpt = uniqueRecipient('offered-parameters');
  const t = await smtpDialog(port, [
    'EHLO client.test',
    'MAIL FROM:<sender@example.com> FOO=bar',
    'MAIL FROM:<sender@example.com> RET=HDRS ENVID=abc',
    'MAIL FROM:<sender@example.com> REQUIRETLS',
    // AUTH is not offered on this listener (no TLS, no allowInsecureAuth), so neither is its parameter.
    'MAIL FROM:<sender@example.com> AUTH=<>',
    'MAIL FROM:<sender@example.com> SIZE=100 BODY=8BITMIME SMTPUTF8',
    `RCPT TO:<${rcpt}> NOTIFY=NEVER`,
    `RCPT TO:<${rcpt}> XYZ=1`,
    `RCPT TO:<${rcpt}>`,
    'DATA',
    'RAW:Subject: offered parameters\r\n\r\nhi\r\n.\r\n',
    'QUIT',
  ]);
  const replies = smtpReplies(t);
  assert.deepEqual(replies.slice(2, 10), [
    '555 5.5.4 Unsupported parameter FOO',
    '555 5.5.4 Unsupported parameter RET',
    // smtp-server refuses REQUIRETLS in clear itself; inside TLS it reaches the listener (auth-abuse.test.ts).
    '530 5.7.0 REQUIRETLS not permitted on non-TLS connections',
    '555 5.5.4 Unsupported parameter AUTH',
    '250 2.1.0 Accepted',
    '555 5.5.4 Unsupported parameter NOTIFY',
    '555 5.5.4 Unsupported parameter XYZ',
    '250 2.1.5 Accepted',
  ], t);
  queueIdOf(t);
  assert.equal(await rejections('unsupported_parameter', 555), refusedBefore + 5);
});

test('a client that talks before the greeting gets 421 and no greeting', async () => {
  const received = await writeBeforeGreeting('EHLO hasty.test\r\n');
  assert.match(received, /^421 /);
  assert.doesNotMatch(received, /^220/m);
});

test('a 10,000-character command line gets an error reply and the session goes on', async () => {
  const long = 'a'.repeat(10_000);
  const t = await smtpDialog(port, ['EHLO client.test', `MAIL FROM:<${long}@example.com>`, `X${long}`, 'NOOP', 'QUIT']);
  const codes = smtpReplyCodes(t);
  assert.equal(codes[2], 501, t.slice(0, 500));
  assert.ok(codes[3]! >= 500 && codes[3]! < 510);
  assert.deepEqual(codes.slice(4), [250, 221]);
});

test('a command line beyond the parser limit closes that session only; the daemon keeps serving', async () => {
  const t = await smtpDialog(port, ['EHLO client.test', `RAW:NOOP ${'a'.repeat(100_000)}\r\n`, 'NOOP']);
  assert.match(t, /^421 /m);
  const rcpt = uniqueRecipient('after-long-line');
  queueIdOf(await transaction([rcpt], 'Subject: still here\r\n\r\nhi\r\n.\r\n'));
  await sink.waitForRecipient(rcpt);
});

// ---------------------------------------------------------------------------------------------------------
// message content

test('8-bit body bytes arrive at the sink unchanged (nodemailer)', async () => {
  const rcpt = uniqueRecipient('eight-bit');
  const raw = Buffer.concat([
    Buffer.from('Subject: latin-1\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'),
    Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x0d, 0x0a, 0x80, 0xff, 0xa0, 0x0d, 0x0a]),
    Buffer.from('UTF-8 too: caf\u00e9 \u2603\r\n', 'utf8'),
  ]);
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  try {
    await transport.sendMail({ envelope: { from: 'sender@example.com', to: [rcpt] }, raw });
  } finally {
    transport.close();
  }
  assert.ok(afterReceived(await sink.waitForRecipient(rcpt)).equals(raw), 'bytes changed on the way');
});

test('bare LF and bare CR line endings in the data arrive as CRLF', async () => {
  const rcpt = uniqueRecipient('bare-lf');
  const t = await transaction([rcpt], 'Subject: bare lf\nX-Mixed: yes\r\n\nline one\nline two\rline three\r\n.\r\n');
  queueIdOf(t);
  const body = afterReceived(await sink.waitForRecipient(rcpt)).toString('latin1');
  assert.equal(body, 'Subject: bare lf\r\nX-Mixed: yes\r\n\r\nline one\r\nline two\r\nline three\r\n');
});

test('a client that disconnects mid-DATA: nothing delivered, nothing left in the spool, the daemon keeps serving', async () => {
  const rcpt = uniqueRecipient('dropped');
  // The dialog ends (and the socket is destroyed) right after the partial message: no terminator.
  const t = await smtpDialog(port, ['EHLO client.test', 'MAIL FROM:<sender@example.com>', `RCPT TO:<${rcpt}>`, 'DATA', `RAW:${headerAndBody('cut short', 4000)}`]);
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 250, 250, 354]);
  const failed = await relay.waitForLog((l) => l.event === 'receive.failed' && typeof l.reply === 'string' && l.reply.startsWith('451 4.4.2'));
  assert.equal(failed.listener, 'relay');

  const seen = await deliveredRecipientsAfterMarker();
  assert.ok(!seen.includes(rcpt), 'the partial message must not be delivered');
  assert.deepEqual(await spoolContentsOnceSettled(), { incoming: [], queue: [] });
});

function receivedHeaders(n: number): string {
  return Array.from({ length: n }, (_, i) => `Received: from hop${i}.example by hop${i + 1}.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n`).join('');
}

test('31 Received headers: 554 5.4.0 (mail loop), not delivered; 30 are accepted', async () => {
  const looping = uniqueRecipient('loop-31');
  const t31 = await transaction([looping], `${receivedHeaders(31)}Subject: loop\r\n\r\nround and round\r\n.\r\n`);
  assert.deepEqual(smtpReplyCodes(t31), [220, 250, 250, 250, 354, 554, 221], t31);
  assert.equal(smtpReplies(t31)[5], '554 5.4.0 Too many Received headers: mail loop detected');

  const ok = uniqueRecipient('loop-30');
  const t30 = await transaction([ok], `${receivedHeaders(30)}Subject: long path\r\n\r\nstill fine\r\n.\r\n`);
  queueIdOf(t30);
  const raw = (await sink.waitForRecipient(ok)).raw.toString('latin1');
  assert.equal(raw.match(/^Received:/gm)?.length, 31, 'the 30 hops plus ours');
  assert.ok(!sink.deliveredRecipients().includes(looping), 'the looping message was delivered');
});

test('SMTP smuggling: <LF>.<CRLF> does not end the data; the sink gets one message with the rest as body text', async () => {
  const rcpt = uniqueRecipient('smuggle-outer');
  const victim = uniqueRecipient('smuggle-victim');
  const data =
    'Subject: outer\r\n\r\nfirst part\n.\r\n' +
    `MAIL FROM:<evil@x.example>\r\nRCPT TO:<${victim}>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n` +
    '.\r\n';
  const t = await smtpDialog(port, ['EHLO client.test', 'MAIL FROM:<sender@example.com>', `RCPT TO:<${rcpt}>`, 'DATA', `RAW:${data}`, 'QUIT']);
  // One reply for the whole data, then QUIT: nothing inside the data was taken as a command.
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 250, 250, 354, 250, 221], t);

  const msg = await sink.waitForRecipient(rcpt);
  await deliveredRecipientsAfterMarker();
  assert.equal(sink.messages.filter((m) => m.recipients.includes(victim) || m.sender === 'evil@x.example').length, 0);
  assert.equal(sink.messages.filter((m) => m.recipients.includes(rcpt)).length, 1);
  const body = afterReceived(msg).toString('latin1');
  assert.equal(
    body,
    'Subject: outer\r\n\r\nfirst part\r\n.\r\n' +
      `MAIL FROM:<evil@x.example>\r\nRCPT TO:<${victim}>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n`,
  );
});
