import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { SmtpError } from '../../src/smtp-error.js';
import {
  InboundMessageTransform,
  MAX_RECEIVED_HEADERS,
  formatReceivedHeader,
} from '../../src/inbound/message-stream.js';
import type { ReceivedTrace } from '../../src/inbound/message-stream.js';

const TRACE: ReceivedTrace = {
  fromHelo: 'printer.lan',
  clientAddress: '192.0.2.10',
  clientHostname: 'printer.example.net',
  byHost: 'relay.example.com',
  protocol: 'ESMTP',
  queueId: 'Q1A2B3',
  recipient: 'bob@example.org',
  date: new Date('2025-06-03T12:34:56Z'),
};
const RECEIVED = formatReceivedHeader(TRACE);

async function run(
  chunks: Array<Buffer | string>,
  options?: { maxHeaderBytes?: number },
): Promise<{ out: Buffer; stream: InboundMessageTransform }> {
  const stream = new InboundMessageTransform(TRACE, options);
  const parts: Buffer[] = [];
  await Readable.from(chunks.map((c) => Buffer.from(c)))
    .pipe(stream)
    .forEach((chunk: Buffer) => void parts.push(chunk));
  return { out: Buffer.concat(parts), stream };
}

async function output(...chunks: Array<Buffer | string>): Promise<string> {
  return (await run(chunks)).out.toString('latin1');
}

function receivedHeaders(count: number): string {
  return Array.from({ length: count }, (_, i) => `Received: from h${i} by x; Tue, 3 Jun 2025 12:00:00 +0000\r\n`).join('');
}

test('bare LF becomes CRLF', async () => {
  assert.equal(await output('Subject: a\nX: b\n\nline 1\nline 2\n'), `${RECEIVED}Subject: a\r\nX: b\r\n\r\nline 1\r\nline 2\r\n`);
});

test('bare CR becomes CRLF', async () => {
  assert.equal(await output('Subject: a\rX: b\r\rline 1\rline 2\r'), `${RECEIVED}Subject: a\r\nX: b\r\n\r\nline 1\r\nline 2\r\n`);
});

test('CRLF, LF and CR mixed: output is the same at every chunk split point', async () => {
  const input = 'Subject: hi\r\nMessage-ID:\n <id@x>\r\rbody\r\n\r\nmore\rend\n\r\n.x\r';
  const expected = `${RECEIVED}Subject: hi\r\nMessage-ID:\r\n <id@x>\r\n\r\nbody\r\n\r\nmore\r\nend\r\n\r\n.x\r\n`;
  assert.equal(await output(input), expected);
  for (let i = 0; i <= input.length; i++) {
    assert.equal(await output(input.slice(0, i), input.slice(i)), expected, `split at ${i}`);
    for (let j = i; j <= input.length; j += 3) {
      assert.equal(await output(input.slice(0, i), input.slice(i, j), input.slice(j)), expected, `split at ${i},${j}`);
    }
  }
  assert.equal(await output(...input.split('')), expected, 'one byte per chunk');
});

test('header-only message (no separator, no final CRLF) is flushed at the end', async () => {
  const { out, stream } = await run(['Subject: only\r\nMessage-ID: <h@x>\r\nX-Last: yes']);
  assert.equal(out.toString(), `${RECEIVED}Subject: only\r\nMessage-ID: <h@x>\r\nX-Last: yes`);
  assert.equal(stream.headerBlock?.toString(), 'Subject: only\r\nMessage-ID: <h@x>\r\nX-Last: yes');
  assert.equal(stream.messageId, '<h@x>');
});

test('message without headers streams as body, after the empty line that separates it from our Received field', async () => {
  for (const [input, expected] of <Array<[string, string]>>[
    ['\r\nbody only\r\n', '\r\nbody only\r\n'],
    ['Hello printer output\nline 2\n', '\r\nHello printer output\r\nline 2\r\n'],
    ['  indented first line\r\n', '\r\n  indented first line\r\n'],
    ['', ''],
  ]) {
    const { out, stream } = await run([input]);
    assert.equal(out.toString(), RECEIVED + expected);
    assert.equal(stream.headerBlock?.length, 0);
    assert.equal(stream.messageId, undefined);
  }
});

test('a line that is not a field ends the header section, and the empty line goes in before it', async () => {
  // Without it, the header From check at the end of DATA and the header rewrite at delivery (which looks for
  // the empty line) would disagree on where the header ends: a From after the junk line would be rewritten
  // without ever having been checked.
  const junk = 'Subject: c\r\njunk\r\nFrom: ceo-alias@printer.local\r\n\r\nbody\r\n';
  const expected = `${RECEIVED}Subject: c\r\n\r\njunk\r\nFrom: ceo-alias@printer.local\r\n\r\nbody\r\n`;
  for (let i = 0; i <= junk.length; i++) {
    const { out, stream } = await run([junk.slice(0, i), junk.slice(i)]);
    assert.equal(out.toString(), expected, `split at ${i}`);
    assert.equal(stream.headerBlock?.toString(), 'Subject: c\r\n');
  }
  const cron = await run(['Subject: nightly log\nline of output\nmore output\n']);
  assert.equal(cron.out.toString(), `${RECEIVED}Subject: nightly log\r\n\r\nline of output\r\nmore output\r\n`);
  const continuationFirst = await run([' x\r\nFrom: ceo-alias@printer.local\r\n\r\nbody\r\n']);
  assert.equal(continuationFirst.out.toString(), `${RECEIVED}\r\n x\r\nFrom: ceo-alias@printer.local\r\n\r\nbody\r\n`);
  assert.equal(continuationFirst.stream.headerBlock?.length, 0);
});

test('Bcc, Resent-Bcc, Content-Length and Return-Path fields are dropped on arrival, folded or not, in any case', async () => {
  const input =
    'Return-Path: <forged@x>\r\nFrom: app@printer.local\r\nBcc: boss@contoso.com,\r\n auditor@contoso.com\r\nTo: team@contoso.com\r\n' +
    'RESENT-BCC : hidden@contoso.com\r\nContent-Length: 12\r\nSubject: Bcc: not a field here\r\n\r\nBcc: body line stays\r\n';
  const expectedHeader = 'From: app@printer.local\r\nTo: team@contoso.com\r\nSubject: Bcc: not a field here\r\n';
  const expected = `${RECEIVED}${expectedHeader}\r\nBcc: body line stays\r\n`;
  for (let i = 0; i <= input.length; i += 7) {
    const { out, stream } = await run([input.slice(0, i), input.slice(i)]);
    assert.equal(out.toString(), expected, `split at ${i}`);
    assert.equal(stream.headerBlock?.toString(), expectedHeader);
    assert.equal(stream.bytesOut, Buffer.byteLength(expected));
  }
  // Only the header: the fields go, the rest stays, and nothing is inserted after it.
  assert.equal(await output('Subject: s\r\nBcc: a@b'), `${RECEIVED}Subject: s\r\n`);
});

test('the first empty line of the output always ends exactly the header block the transform reports', async () => {
  const lines = ['Subject: s', 'From: a@b', '\tfolded', ' folded', 'junk', 'Received: x', '', 'body', ': no name', 'X-Y : obsolete form'];
  const endings = ['\r\n', '\n', '\r'];
  let seed = 7;
  const next = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2147483648), seed % n);
  for (let round = 0; round < 400; round++) {
    const input = Array.from({ length: 1 + next(6) }, () => lines[next(lines.length)]! + endings[next(endings.length)]!).join('');
    const cut = next(input.length + 1);
    const { out, stream } = await run([input.slice(0, cut), input.slice(cut)]);
    const header = Buffer.concat([Buffer.from(RECEIVED), stream.headerBlock ?? Buffer.alloc(0)]);
    assert.ok(out.subarray(0, header.length).equals(header), JSON.stringify(input));
    const after = out.subarray(header.length).toString('latin1');
    assert.ok(after === '' || after.startsWith('\r\n'), `${JSON.stringify(input)}: header not followed by the empty line`);
    assert.equal(header.indexOf('\r\n\r\n'), -1, JSON.stringify(input));
  }
});

test(`${MAX_RECEIVED_HEADERS} Received headers pass`, async () => {
  const input = `${receivedHeaders(MAX_RECEIVED_HEADERS)}received-spf: pass\r\n\tReceived: folded\r\nSubject: x\r\n\r\nReceived: in body\r\n`;
  assert.equal(await output(input), RECEIVED + input);
});

test(`${MAX_RECEIVED_HEADERS + 1} Received headers are a mail loop (554 5.4.0)`, async () => {
  const input = `${receivedHeaders(MAX_RECEIVED_HEADERS)}RECEIVED : from last\r\nSubject: x\r\n\r\nbody\r\n`;
  await assert.rejects(run([input]), (err: unknown) => {
    assert.ok(err instanceof SmtpError);
    assert.equal(err.code, 554);
    assert.equal(err.enhanced, '5.4.0');
    return true;
  });
});

test('header block over maxHeaderBytes is refused (552 5.3.4); the body does not count', async () => {
  const header = `Subject: ${'x'.repeat(80)}\r\n`;
  await assert.rejects(run([header, header], { maxHeaderBytes: 100 }), { code: 552, enhanced: '5.3.4' });
  await assert.rejects(run([header + header + '\r\nbody'], { maxHeaderBytes: 100 }), { code: 552 });
  const ok = await run([header, '\r\n', 'b'.repeat(5000)], { maxHeaderBytes: header.length });
  assert.equal(ok.out.length, RECEIVED.length + header.length + 2 + 5000);
  assert.equal(ok.stream.headerBlock?.toString(), header);
});

test('our Received header comes first, in RFC 5321 form', async () => {
  const out = await output('Received: from older\r\nSubject: x\r\n\r\nbody\r\n');
  assert.ok(out.startsWith('Received: from printer.lan (printer.example.net [192.0.2.10])\r\n'));
  assert.match(RECEIVED, /^Received: from printer\.lan \(printer\.example\.net \[192\.0\.2\.10\]\)\r\n\tby relay\.example\.com \(smarthost\) with ESMTP id Q1A2B3\r\n\tfor <bob@example\.org>; \w{3}, \d{1,2} Jun 2025 \d\d:\d\d:\d\d [+-]\d{4}\r\n$/);
  assert.ok(out.indexOf('Received: from older') > RECEIVED.length - 1);
});

test('Received header: IPv6, TLS, no recipient, unknown hostname, sanitized HELO', () => {
  const header = formatReceivedHeader({
    ...TRACE,
    fromHelo: 'evil\r\nX-Injected: yes\u0000',
    clientAddress: '2001:db8::1',
    clientHostname: undefined,
    recipient: undefined,
    protocol: 'ESMTPS',
    tls: 'TLSv1.3 TLS_AES_256_GCM_SHA384',
  });
  assert.match(header, /^Received: from evilX-Injected: yes \(unknown \[IPv6:2001:db8::1\]\)\r\n\t\(using TLSv1\.3 TLS_AES_256_GCM_SHA384\)\r\n\tby relay\.example\.com \(smarthost\) with ESMTPS id Q1A2B3;\r\n\t\w{3}, /);
  assert.equal(header.split('\r\n').length, 5, 'no injected line breaks');
  assert.ok(formatReceivedHeader({ ...TRACE, clientAddress: '::ffff:192.0.2.7' }).includes('[192.0.2.7]'));
  const long = formatReceivedHeader({ ...TRACE, fromHelo: 'h'.repeat(400) });
  assert.ok(long.includes(`from ${'h'.repeat(255)}\r\n\t(printer.example.net`));
});

test('Message-ID is extracted, also when folded', async () => {
  const folded = await run(['To: a@b\r\nMessage-Id:\r\n \t<abc.123@example.com>\r\nSubject: x\r\n\r\nMessage-ID: <body@x>\r\n']);
  assert.equal(folded.stream.messageId, '<abc.123@example.com>');
  const plain = await run(['message-id: <p@x>\nSubject: y\n\nbody\n']);
  assert.equal(plain.stream.messageId, '<p@x>');
  assert.equal(plain.stream.headerBlock?.toString(), 'message-id: <p@x>\r\nSubject: y\r\n');
});

test('8-bit bytes pass through untouched', async () => {
  const header = Buffer.concat([Buffer.from('Subject: '), Buffer.from([0xe9, 0xff, 0x80]), Buffer.from('\r\n\r\n')]);
  const body = Buffer.concat([Buffer.from('Grüße 用户 '), Buffer.from([0x00, 0xfe, 0xc3, 0x28, 0x0d, 0x0a])]);
  const { out, stream } = await run([header, body]);
  assert.deepEqual(out, Buffer.concat([Buffer.from(RECEIVED), header, body]));
  assert.equal(stream.bytesOut, out.length);
});

test('eightBit says whether any stored byte is above 127 (in a late body chunk, or only in our Received field); eightBitHeader only for the client\'s header fields', async () => {
  const ascii = await run(['Subject: plain\r\n\r\n', 'body\r\n']);
  assert.equal(ascii.stream.eightBit, false);
  assert.equal(ascii.stream.eightBitHeader, false);

  const lateBody = await run(['Subject: plain\r\n\r\n', 'a'.repeat(70_000), '\r\nGrüße\r\n']);
  assert.equal(lateBody.stream.eightBit, true);
  assert.equal(lateBody.stream.eightBitHeader, false);

  const header = await run(['Subject: Grüße\r\n\r\n', 'body\r\n']);
  assert.equal(header.stream.eightBit, true);
  assert.equal(header.stream.eightBitHeader, true);

  // "for <jörg@example.org>" in the Received field we write.
  const stream = new InboundMessageTransform({ ...TRACE, recipient: 'jörg@example.org' });
  await Readable.from([Buffer.from('Subject: plain\r\n\r\nbody\r\n')]).pipe(stream).forEach(() => {});
  assert.equal(stream.eightBit, true);
  assert.equal(stream.eightBitHeader, false);
});

test('large body streams through in many chunks before the input ends', async () => {
  const stream = new InboundMessageTransform(TRACE);
  const expected = createHash('sha256');
  const actual = createHash('sha256');
  let received = 0;
  stream.on('data', (chunk: Buffer) => {
    received += chunk.length;
    actual.update(chunk);
  });
  const header = 'Subject: big\r\n\r\n';
  expected.update(RECEIVED + header);
  stream.write(header);
  const lfLine = Buffer.from(`${'0123456789'.repeat(7)}\n`);
  const crlfLine = Buffer.from(`${'0123456789'.repeat(7)}\r\n`);
  const chunk = Buffer.concat(Array.from({ length: 200 }, () => lfLine));
  const normalized = Buffer.concat(Array.from({ length: 200 }, () => crlfLine));
  for (let i = 0; i < 2000; i++) {
    if (!stream.write(chunk)) await once(stream, 'drain');
    expected.update(normalized);
    if (i === 10) assert.ok(received > RECEIVED.length + header.length, 'body emitted before end');
  }
  stream.end();
  await once(stream, 'end');
  assert.equal(received, RECEIVED.length + header.length + 2000 * normalized.length);
  assert.equal(stream.bytesOut, received);
  assert.equal(actual.digest('hex'), expected.digest('hex'));
});
