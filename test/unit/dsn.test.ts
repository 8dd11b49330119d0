import { test } from 'node:test';
import assert from 'node:assert/strict';
import { simpleParser } from 'mailparser';
import { buildDsn } from '../../src/delivery/dsn.js';
import type { DsnInput } from '../../src/delivery/dsn.js';

const NOW = new Date('2025-06-03T12:34:56Z');
const ARRIVAL = new Date('2025-06-01T08:00:00Z');
const LAST_ATTEMPT = new Date('2025-06-03T12:30:00Z');
const ORIGINAL_HEADERS = 'From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: scan\r\n';

function input(overrides: Partial<DsnInput> = {}): DsnInput {
  return {
    reportingMta: 'smarthost.example',
    queueId: 'Q123ABC',
    arrivalDate: ARRIVAL,
    originalSender: 'alice@example.com',
    failed: [
      {
        recipient: 'bob@example.net',
        status: '5.1.1',
        diagnostic: '550 5.1.1 <bob@example.net>: user unknown',
        remoteMta: 'mx.example.net',
        lastAttemptAt: LAST_ATTEMPT,
      },
      { recipient: 'carol@example.org', status: '5.2.2', diagnostic: '552 5.2.2 mailbox full' },
    ],
    originalHeaders: Buffer.from(ORIGINAL_HEADERS),
    now: NOW,
    ...overrides,
  };
}

interface Part {
  headers: Map<string, string>;
  body: string;
}

/** Splits a header block into lower-cased name -> unfolded value; asserts no name repeats. */
function parseFields(block: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of block.replace(/\r\n[ \t]/g, ' ').split('\r\n')) {
    const m = /^([!-9;-~]+):[ \t]*(.*)$/.exec(line);
    assert.ok(m, `not a header field line: ${JSON.stringify(line)}`);
    const name = m[1]!.toLowerCase();
    assert.ok(!fields.has(name), `duplicate field ${name}`);
    fields.set(name, m[2]!);
  }
  return fields;
}

/** Independent raw MIME split: top headers, boundary and the parts between the delimiters. */
function splitRaw(raw: string): { top: Map<string, string>; boundary: string; parts: Part[] } {
  const headerEnd = raw.indexOf('\r\n\r\n');
  assert.ok(headerEnd > 0);
  const top = parseFields(raw.slice(0, headerEnd));
  const boundary = /;\s*boundary="([^"]+)"/.exec(top.get('content-type') ?? '')?.[1];
  assert.ok(boundary, 'no boundary parameter');
  const body = raw.slice(headerEnd + 4);
  const closing = `\r\n--${boundary}--\r\n`;
  assert.ok(body.endsWith(closing), 'message must end with the closing delimiter');
  const chunks = body.slice(0, -closing.length).split(`\r\n--${boundary}\r\n`);
  chunks.shift(); // preamble
  const parts = chunks.map((chunk) => {
    const end = chunk.indexOf('\r\n\r\n');
    assert.ok(end > 0, 'part without header/body separator');
    return { headers: parseFields(chunk.slice(0, end)), body: chunk.slice(end + 4) };
  });
  return { top, boundary, parts };
}

function deliveryStatusBlocks(raw: string): Map<string, string>[] {
  const part = splitRaw(raw).parts[1];
  assert.ok(part);
  return part.body.replace(/\r\n$/, '').split('\r\n\r\n').map(parseFields);
}

/** The notification's text with its wrapped lines joined again. */
function unwrap(text: string): string {
  return text.replace(/\r\n {4}/g, ' ');
}

test('top-level headers and multipart/report structure', async () => {
  const dsn = buildDsn(input());
  const raw = dsn.toString('latin1');
  const { top, boundary, parts } = splitRaw(raw);

  assert.equal(top.get('from'), 'Mail Delivery System <MAILER-DAEMON@smarthost.example>');
  assert.equal(top.get('to'), '<alice@example.com>');
  assert.equal(top.get('subject'), 'Undelivered Mail Returned to Sender');
  assert.equal(top.get('date'), 'Tue, 03 Jun 2025 12:34:56 +0000');
  assert.match(top.get('message-id') ?? '', /^<[0-9a-f]{16,}@smarthost\.example>$/);
  assert.equal(top.get('auto-submitted'), 'auto-replied');
  assert.equal(top.get('mime-version'), '1.0');
  assert.match(top.get('content-type') ?? '', /^multipart\/report;\s*report-type=delivery-status;/);

  assert.deepEqual(
    parts.map((p) => p.headers.get('content-type')),
    ['text/plain; charset=utf-8', 'message/delivery-status', 'text/rfc822-headers'],
  );
  for (const p of parts) assert.ok(!p.body.includes(boundary), 'boundary occurs in content');
  assert.match(parts[0]!.body, /^This is the mail system at host smarthost\.example\./);
  assert.match(unwrap(parts[0]!.body), /<bob@example\.net>: host mx\.example\.net said: 550 5\.1\.1 <bob@example\.net>: user unknown/);
  assert.match(parts[0]!.body, /<carol@example\.org>: 552 5\.2\.2 mailbox full/);
  assert.equal(parts[2]!.body, ORIGINAL_HEADERS);

  const parsed = await simpleParser(dsn);
  const ct = parsed.headers.get('content-type') as { value: string; params: Record<string, string> };
  assert.equal(ct.value, 'multipart/report');
  assert.equal(ct.params['report-type'], 'delivery-status');
  assert.equal(ct.params['boundary'], boundary);
  assert.equal(parsed.subject, 'Undelivered Mail Returned to Sender');
  assert.equal(parsed.date?.toISOString(), NOW.toISOString());
  assert.equal(parsed.from?.value[0]?.address, 'MAILER-DAEMON@smarthost.example');
  const to = Array.isArray(parsed.to) ? parsed.to[0] : parsed.to;
  assert.equal(to?.value[0]?.address, 'alice@example.com');
  assert.equal(parsed.headers.get('auto-submitted'), 'auto-replied');
  assert.match(parsed.text ?? '', /This is the mail system at host smarthost\.example/);
  assert.match(parsed.text ?? '', /Reporting-MTA: dns; smarthost\.example/);
  const headersPart = parsed.attachments.find((a) => a.contentType === 'text/rfc822-headers');
  assert.ok(headersPart, 'mailparser did not find the text/rfc822-headers part');
  assert.equal(headersPart.content.toString('latin1'), ORIGINAL_HEADERS);
});

test('delivery-status carries per-message and per-recipient fields for every failed recipient', () => {
  const [perMessage, bob, carol, ...rest] = deliveryStatusBlocks(buildDsn(input()).toString('latin1'));
  assert.equal(rest.length, 0);
  assert.deepEqual(
    perMessage,
    new Map([
      ['reporting-mta', 'dns; smarthost.example'],
      ['x-smarthost-queue-id', 'Q123ABC'],
      ['arrival-date', 'Sun, 01 Jun 2025 08:00:00 +0000'],
    ]),
  );
  assert.deepEqual(
    bob,
    new Map([
      ['final-recipient', 'rfc822; bob@example.net'],
      ['action', 'failed'],
      ['status', '5.1.1'],
      ['remote-mta', 'dns; mx.example.net'],
      ['diagnostic-code', 'smtp; 550 5.1.1 <bob@example.net>: user unknown'],
      ['last-attempt-date', 'Tue, 03 Jun 2025 12:30:00 +0000'],
    ]),
  );
  assert.deepEqual(
    carol,
    new Map([
      ['final-recipient', 'rfc822; carol@example.org'],
      ['action', 'failed'],
      ['status', '5.2.2'],
      ['diagnostic-code', 'smtp; 552 5.2.2 mailbox full'],
    ]),
  );
});

test('uses CRLF everywhere, even when the original headers use bare LF or CR', () => {
  const dsn = buildDsn(input({ originalHeaders: Buffer.from('Subject: a\nX-Folded: one\n two\rTo: b@example.net\n') }));
  const raw = dsn.toString('latin1');
  assert.doesNotMatch(raw, /(?<!\r)\n/, 'bare LF');
  assert.doesNotMatch(raw, /\r(?!\n)/, 'bare CR');
  assert.equal(splitRaw(raw).parts[2]!.body, 'Subject: a\r\nX-Folded: one\r\n two\r\nTo: b@example.net\r\n');
});

test('a diagnostic with CRLF cannot inject a header and is kept as one ASCII line', async () => {
  const failed = [{ recipient: 'bob@example.net', status: '5.7.1', diagnostic: '550 5.7.1 denied\r\nBcc: evil@x\nX-Evil: 1 — ü' }];
  const dsn = buildDsn(input({ failed }));
  const raw = dsn.toString('latin1');

  assert.doesNotMatch(raw, /^(Bcc|X-Evil):/im);
  const [, rcpt] = deliveryStatusBlocks(raw);
  assert.equal(rcpt?.get('diagnostic-code'), 'smtp; 550 5.7.1 denied Bcc: evil@x X-Evil: 1 ? ?');
  assert.ok(!rcpt?.has('bcc'));
  assert.doesNotMatch(raw, /[^\x00-\x7f]/, 'non-ASCII byte in output');

  const parsed = await simpleParser(dsn);
  assert.equal(parsed.bcc, undefined);
  assert.ok(!parsed.headers.has('bcc'));
  assert.ok(!parsed.headers.has('x-evil'));
});

test('no line exceeds 998 octets with the longest recipient, remote MTA and diagnostic, and each stays whole', () => {
  const recipient = `${'a'.repeat(900 - '@example.net'.length)}@example.net`;
  const remoteMta = `${'mx-'.repeat(300)}example.net`.slice(-900);
  // Words, then one token longer than a wrapped line may be, 900 characters in all (the most that is kept).
  const diagnostic = `550 5.7.1 ${'Message rejected by policy. '.repeat(24)}ref=${'0123456789'.repeat(20)}`.padEnd(900, 'x');
  assert.deepEqual([recipient.length, remoteMta.length, diagnostic.length], [900, 900, 900]);
  const raw = buildDsn(input({ reportingMta: 'r'.repeat(900), failed: [{ recipient, status: '5.7.1', diagnostic, remoteMta }] })).toString('latin1');

  const lengths = raw.split('\r\n').map((line) => line.length);
  assert.ok(Math.max(...lengths) <= 998, `longest line: ${Math.max(...lengths)} octets`);
  const [, report] = deliveryStatusBlocks(raw);
  assert.equal(report?.get('final-recipient'), `rfc822; ${recipient}`);
  assert.equal(report?.get('remote-mta'), `dns; ${remoteMta}`);
  assert.equal(report?.get('diagnostic-code'), `smtp; ${diagnostic}`);
  assert.ok(unwrap(splitRaw(raw).parts[0]!.body).includes(`<${recipient}>: host ${remoteMta} said: ${diagnostic}\r\n`), 'the whole line, unwrapped');
});

test('a malformed status falls back to 5.0.0', () => {
  const statuses = ['5.1.1', '4.4.7', 'bogus', '5.1', '2.0.0', '5.1.1\r\nX: y', '6.0.0', '5.1234.1'];
  const failed = statuses.map((status, i) => ({ recipient: `r${i}@example.net`, status, diagnostic: '550 no' }));
  const blocks = deliveryStatusBlocks(buildDsn(input({ failed })).toString('latin1')).slice(1);
  assert.deepEqual(
    blocks.map((b) => b.get('status')),
    ['5.1.1', '4.4.7', '5.0.0', '5.0.0', '5.0.0', '5.0.0', '5.0.0', '5.0.0'],
  );
});

test('huge original headers are truncated at a header boundary within 64 KiB', () => {
  let original = '';
  for (let i = 0; original.length < 200 * 1024; i++) {
    original += `X-Filler-${i}: ${'a'.repeat(70)}\r\n\t${'b'.repeat(60)}\r\n`; // every field folded once
  }
  const body = splitRaw(buildDsn(input({ originalHeaders: Buffer.from(original) })).toString('latin1')).parts[2]!.body;

  assert.ok(body.length <= 64 * 1024, `part is ${body.length} bytes`);
  assert.ok(body.length > 60 * 1024, 'truncated far more than needed');
  assert.ok(original.startsWith(body), 'truncated part is not a prefix of the original');
  assert.ok(body.endsWith('\r\n'));
  assert.match(body, /^X-Filler-0: /);
  // The next original line starts a new field, so no field was cut between its folded lines.
  assert.match(original.slice(body.length), /^X-Filler-\d+: /);
  assert.doesNotMatch(original.slice(body.length), /^X-Filler-0: /);
});

test('small original headers pass through byte for byte, 8-bit included', () => {
  const original = Buffer.concat([Buffer.from('Subject: '), Buffer.from('Grüße', 'utf8'), Buffer.from('\r\nTo: b@example.net')]);
  const dsn = buildDsn(input({ originalHeaders: original }));
  const start = dsn.indexOf(original);
  assert.ok(start > 0, 'original header bytes not found unchanged');
  assert.ok(dsn.subarray(start + original.length).toString('latin1').startsWith('\r\n\r\n--'));
  const part = splitRaw(dsn.toString('latin1')).parts[2]!;
  assert.equal(part.headers.get('content-transfer-encoding'), '8bit');
});

test('Message-ID: the given one is used, otherwise a fresh one each time', () => {
  const given = splitRaw(buildDsn(input({ messageId: '<fixed@smarthost.example>' })).toString('latin1')).top;
  assert.equal(given.get('message-id'), '<fixed@smarthost.example>');
  const a = splitRaw(buildDsn(input()).toString('latin1'));
  const b = splitRaw(buildDsn(input()).toString('latin1'));
  assert.notEqual(a.top.get('message-id'), b.top.get('message-id'));
  assert.notEqual(a.boundary, b.boundary);
});

test('refuses to address a DSN to the null sender or report no recipients', () => {
  assert.throws(() => buildDsn(input({ originalSender: '' })), /null sender/);
  assert.throws(() => buildDsn(input({ failed: [] })), /at least one/);
});
