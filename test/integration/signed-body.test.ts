/**
 * Header rewriting must leave the body of a signed message byte for byte as received: an S/MIME
 * multipart/signed message (signed here with openssl cms) and a DKIM-signed message (nodemailer) go
 * through a From rewrite; at the sink the body after the header block is identical, the S/MIME signature
 * still verifies with openssl, and the DKIM body hash still matches.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { startSink, type Sink, type SinkMessage } from '../helpers/sink.js';
import { makeTestCertificate } from '../helpers/tls.js';

const execFileAsync = promisify(execFile);

const REWRITE = [{ match: 'scanner@printer.local', to: 'scans@contoso.com', displayName: { set: 'Scan Service' } }];

async function relayWithRewrite(t: TestContext): Promise<{ relay: InProcessDaemon; sink: Sink; dir: string }> {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const sink = await startSink();
  t.after(() => sink.close());
  const relay = await startInProcess(
    await testConfig({ dir: dir.path, upstreams: { up: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' } }, extra: { rewrite: REWRITE } }),
  );
  t.after(() => relay.stop());
  return { relay, sink, dir: dir.path };
}

/** Sends through the relay listener and returns what the sink got, once the message has left the queue. */
async function sendRaw(relay: InProcessDaemon, sink: Sink, raw: Buffer): Promise<SinkMessage> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  let queueId: string;
  try {
    const info = await client.sendMail({ envelope: { from: 'scanner@printer.local', to: ['alice@contoso.com'] }, raw });
    const m = /^250 2\.0\.0 Ok: queued as ([0-9A-Z]{22})$/.exec(info.response);
    assert.ok(m, info.response);
    queueId = m[1]!;
  } finally {
    client.close();
  }
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === queueId);
  assert.equal(sink.messages.length, 1);
  return sink.messages[0]!;
}

function split(raw: Buffer): { header: Buffer; body: Buffer } {
  const end = raw.indexOf('\r\n\r\n');
  assert.notEqual(end, -1);
  return { header: raw.subarray(0, end + 2), body: raw.subarray(end + 4) };
}

function headerValues(raw: Buffer, name: string): string[] {
  return split(raw)
    .header.toString('utf8')
    .replace(/\r\n(?=[ \t])/g, '')
    .split('\r\n')
    .filter((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`))
    .map((l) => l.slice(name.length + 1).trim());
}

/** Every bare LF becomes CRLF (openssl writes its own MIME lines with LF, the signed content with CRLF). */
function crlf(data: Buffer): Buffer {
  return Buffer.from(data.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
}

async function smimeVerifies(file: string): Promise<boolean> {
  try {
    const { stderr } = await execFileAsync('openssl', ['smime', '-verify', '-noverify', '-in', file, '-out', '/dev/null']);
    return /Verification successful/.test(stderr);
  } catch {
    return false;
  }
}

test('S/MIME multipart/signed through a From rewrite: body byte-identical, signature still verifies at the sink', async (t) => {
  const { relay, sink, dir } = await relayWithRewrite(t);
  const cert = await makeTestCertificate();

  // Signed content: text with lines a transport might touch, and a 1 MiB base64 attachment.
  const attachment = randomBytes(1024 * 1024)
    .toString('base64')
    .replace(/.{76}/g, '$&\r\n');
  const content =
    'Content-Type: multipart/mixed; boundary="inner"\r\n\r\n' +
    '--inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n' +
    'Scan attached.\r\nFrom: scanner@printer.local\r\n.leading dot\r\n..\r\n.\r\nGr\u00fc\u00dfe  \r\n\r\n' +
    '--inner\r\nContent-Type: application/pdf; name="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n' +
    `${attachment}\r\n--inner--\r\n`;
  const contentFile = join(dir, 'content.txt');
  const signedFile = join(dir, 'signed.eml');
  await writeFile(contentFile, content, 'utf8');
  await execFileAsync('openssl', [
    'cms', '-sign', '-in', contentFile, '-signer', cert.certPath, '-inkey', cert.keyPath,
    '-from', '"Scanner" <scanner@printer.local>', '-to', 'alice@contoso.com', '-subject', 'signed scan', '-out', signedFile,
  ]);
  const signed = crlf(await readFile(signedFile));
  await writeFile(signedFile, signed);
  assert.match(signed.toString('latin1'), /^Content-Type: multipart\/signed; protocol="application\/pkcs7-signature"/m);
  assert.match(signed.toString('latin1'), /^Content-Type: application\/pkcs7-signature/m);
  assert.ok(await smimeVerifies(signedFile), 'the message verifies before sending');

  const received = await sendRaw(relay, sink, signed);
  assert.equal(received.sender, 'scans@contoso.com');
  assert.deepEqual(headerValues(received.raw, 'From'), ['"Scan Service" <scans@contoso.com>'], 'the From really was rewritten');
  assert.deepEqual(headerValues(received.raw, 'X-Smarthost-Original-From'), ['"Scanner" <scanner@printer.local>']);
  assert.ok(split(received.raw).body.equals(split(signed).body), 'every byte after the header block is as sent');

  const atSink = join(dir, 'at-sink.eml');
  await writeFile(atSink, received.raw);
  assert.ok(await smimeVerifies(atSink), 'openssl smime -verify -noverify succeeds on the message as the sink got it');

  // The check can fail: one changed byte in the attachment breaks the signature.
  const tampered = Buffer.from(received.raw);
  const at = tampered.indexOf('\r\n\r\n', tampered.indexOf('name="scan.pdf"')) + 10;
  tampered[at] = tampered[at] === 0x41 ? 0x42 : 0x41;
  await writeFile(atSink, tampered);
  assert.equal(await smimeVerifies(atSink), false, 'a tampered body does not verify');
});

/** RFC 6376 3.4.4 relaxed body canonicalization, then SHA-256: the bh= of a c=*\/relaxed signature. */
function relaxedBodyHash(body: Buffer): string {
  const lines = body
    .toString('latin1')
    .split('\r\n')
    .map((l) => l.replace(/[ \t]+/g, ' ').replace(/ $/, ''));
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const canonical = lines.length > 0 ? `${lines.join('\r\n')}\r\n` : '';
  return createHash('sha256').update(Buffer.from(canonical, 'latin1')).digest('base64');
}

test('DKIM-signed message through a From rewrite: body byte-identical, the body hash (bh=) still matches', async (t) => {
  const { relay, sink } = await relayWithRewrite(t);
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signer = nodemailer.createTransport({
    streamTransport: true,
    buffer: true,
    newline: 'windows',
    dkim: { domainName: 'printer.local', keySelector: 'scan', privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() },
  });
  const info = await signer.sendMail({
    from: '"Scanner" <scanner@printer.local>',
    to: 'alice@contoso.com',
    subject: 'dkim signed scan',
    text: 'Scan attached.\r\nFrom: scanner@printer.local\r\n.leading dot\r\ntrailing   spaces   \r\n',
    attachments: [{ filename: 'scan.pdf', content: randomBytes(256 * 1024) }],
  });
  const signed = info.message as Buffer;
  const dkim = headerValues(signed, 'DKIM-Signature')[0];
  assert.ok(dkim, 'the message is DKIM-signed');
  assert.match(dkim, /c=[a-z]+\/relaxed;/);
  const bh = /bh=([A-Za-z0-9+/=]+)/.exec(dkim)?.[1];
  assert.equal(relaxedBodyHash(split(signed).body), bh, 'our canonicalization agrees with the signer');

  const received = await sendRaw(relay, sink, signed);
  assert.deepEqual(headerValues(received.raw, 'From'), ['"Scan Service" <scans@contoso.com>']);
  assert.deepEqual(headerValues(received.raw, 'DKIM-Signature'), [dkim], 'the signature header itself is kept as it was');
  assert.ok(split(received.raw).body.equals(split(signed).body), 'every byte after the header block is as sent');
  assert.equal(relaxedBodyHash(split(received.raw).body), bh);
  // The comparison can fail: a changed body gives another hash.
  assert.notEqual(relaxedBodyHash(Buffer.concat([split(received.raw).body, Buffer.from('x\r\n')])), bh);
});
