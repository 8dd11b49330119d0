import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { RewriteRule } from '../../src/config/schema.js';
import { HeaderRewriteStream } from '../../src/rewrite/rewrite-stream.js';
import { editHeaderBlock, type HeaderEdits } from '../../src/rewrite/sender.js';
import { SmtpError } from '../../src/smtp-error.js';

const RULE: RewriteRule = { match: 'scanner@printer.local', to: 'scans@contoso.com', apply: 'both', displayName: 'keep', replyToOriginal: true };
const EDITS: HeaderEdits = { options: { rules: [RULE] }, envelope: { original: 'scanner@printer.local', rewritten: 'scans@contoso.com' } };

const HEADER = Buffer.from(
  'Received: from printer (printer.lan [192.168.10.5])\r\n\tby smarthost.test; Mon, 1 Jan 2024 10:00:00 +0000\r\n' +
    'From: "Scanner" <scanner@printer.local>\r\nTo: alice@contoso.com\r\nSubject: scan\r\n' +
    'Content-Type: multipart/mixed; boundary="b1"\r\n',
  'latin1',
);
// The body holds what a careless rewriter would touch: a From line, empty lines, 8-bit and NUL bytes, a lone CR.
const BODY = Buffer.concat([
  Buffer.from('\r\n--b1\r\nContent-Type: text/plain\r\n\r\nFrom: scanner@printer.local\r\nReply-To: x@y\r\n\r\n\r\n', 'latin1'),
  Buffer.from([0x00, 0xff, 0xe9, 0x0d, 0x41, 0x0a, 0x0d, 0x0a]),
  Buffer.from('--b1--\r\n', 'latin1'),
]);
const MESSAGE = Buffer.concat([HEADER, BODY]);
const EXPECTED = Buffer.concat([editHeaderBlock(HEADER, EDITS), BODY]);

async function run(chunks: Buffer[], edits: HeaderEdits = EDITS): Promise<Buffer> {
  const out: Buffer[] = [];
  const stream = new HeaderRewriteStream(edits);
  stream.on('data', (c: Buffer) => out.push(c));
  await pipeline(Readable.from(chunks, { objectMode: false }), stream);
  return Buffer.concat(out);
}

function chunked(data: Buffer, size: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) chunks.push(data.subarray(i, i + size));
  return chunks;
}

test('the expected output really rewrites the header (so the comparisons below can fail)', () => {
  assert.ok(!EXPECTED.equals(MESSAGE));
  assert.match(EXPECTED.toString('latin1'), /^From: "Scanner" <scans@contoso\.com>\r$/m);
  assert.ok(EXPECTED.subarray(EXPECTED.length - BODY.length).equals(BODY));
});

test('fixed chunk sizes, from 1 byte to the whole message: identical output', async () => {
  for (const size of [1, 2, 3, 4, 5, 7, 13, 64, 100, HEADER.length, HEADER.length + 1, MESSAGE.length]) {
    const out = await run(chunked(MESSAGE, size));
    assert.ok(out.equals(EXPECTED), `chunk size ${size}: ${JSON.stringify(out.toString('latin1').slice(0, 400))}`);
  }
});

test('every split point (two chunks), and the end of the header split across three chunks at every offset', async () => {
  for (let i = 0; i <= MESSAGE.length; i++) {
    const out = await run([MESSAGE.subarray(0, i), MESSAGE.subarray(i)]);
    assert.ok(out.equals(EXPECTED), `split at ${i}`);
  }
  // The empty line is at HEADER.length-2 .. HEADER.length+2; cut it into pieces of every shape.
  const end = HEADER.length;
  for (let a = end - 4; a <= end + 2; a++) {
    for (let b = a; b <= end + 4; b++) {
      const out = await run([MESSAGE.subarray(0, a), MESSAGE.subarray(a, b), MESSAGE.subarray(b)]);
      assert.ok(out.equals(EXPECTED), `split at ${a} and ${b}`);
    }
  }
});

test('random chunkings (seeded): identical output, body bytes identical', async () => {
  let seed = 42;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (let round = 0; round < 300; round++) {
    const chunks: Buffer[] = [];
    for (let i = 0; i < MESSAGE.length; ) {
      const n = 1 + Math.floor(random() * 40);
      chunks.push(MESSAGE.subarray(i, i + n));
      i += n;
    }
    const out = await run(chunks);
    assert.ok(out.equals(EXPECTED), `round ${round}`);
    assert.ok(out.subarray(out.indexOf('\r\n\r\n') + 2).equals(BODY), 'body after the header block is byte-identical');
  }
});

test('a message with nothing to rewrite passes through unchanged in any chunking', async () => {
  const edits: HeaderEdits = { options: { rules: [] }, envelope: { original: 'a@x.test', rewritten: 'a@x.test' } };
  for (const size of [1, 3, 17, MESSAGE.length]) assert.ok((await run(chunked(MESSAGE, size), edits)).equals(MESSAGE), `size ${size}`);
});

test('header only, without the empty line: still rewritten; a missing final CRLF is supplied', async () => {
  const expected = editHeaderBlock(HEADER, EDITS);
  for (const size of [1, 5, HEADER.length]) assert.ok((await run(chunked(HEADER, size))).equals(expected), `size ${size}`);
  const unterminated = HEADER.subarray(0, -2);
  assert.ok((await run(chunked(unterminated, 3))).equals(expected));
  assert.ok((await run([])).equals(editHeaderBlock(Buffer.alloc(0), EDITS)), 'an empty message is an empty header block');
});

test('large body streams through: output starts before the input ends, body hash identical', async () => {
  const chunk = Buffer.alloc(64 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31 + 7) & 0xff;
  const chunks = 1024; // 64 MiB of body
  const stream = new HeaderRewriteStream(EDITS);
  // The header block and the first body chunk go in; rewritten output is available before anything else is written.
  stream.write(Buffer.concat([HEADER, Buffer.from('\r\n')]));
  stream.write(chunk);
  const first = stream.read() as Buffer | null;
  assert.ok(first, 'output is available while the input is still open');
  const head = Buffer.concat([editHeaderBlock(HEADER, EDITS), Buffer.from('\r\n')]);
  assert.ok(first.equals(Buffer.concat([head, chunk])), 'rewritten header, then the body chunk as written');

  const inHash = createHash('sha256').update(chunk);
  const outHash = createHash('sha256').update(first.subarray(head.length));
  let outBytes = first.length - head.length;
  let maxBuffered = 0;
  stream.on('data', (c: Buffer) => {
    outHash.update(c);
    outBytes += c.length;
  });
  for (let i = 1; i < chunks; i++) {
    inHash.update(chunk);
    if (!stream.write(chunk)) await new Promise((resolve) => stream.once('drain', resolve));
    maxBuffered = Math.max(maxBuffered, stream.writableLength + stream.readableLength);
  }
  stream.end();
  await new Promise((resolve, reject) => stream.once('end', resolve).once('error', reject));
  assert.equal(outBytes, chunks * chunk.length);
  assert.equal(outHash.digest('hex'), inHash.digest('hex'));
  assert.ok(maxBuffered <= 1024 * 1024, `held at most ~1 MiB at once, held ${maxBuffered}`);
});

test('a header block without end beyond 1 MiB fails with 554 5.6.0 instead of growing without bound', async () => {
  const line = Buffer.from(`X-Filler: ${'x'.repeat(990)}\r\n`);
  const chunks = Array.from({ length: 1100 }, () => line);
  await assert.rejects(run(chunks), (err: unknown) => err instanceof SmtpError && err.code === 554 && err.enhanced === '5.6.0');
});
