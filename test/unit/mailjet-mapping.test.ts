/**
 * The spooled MIME as Send API v3.1 Messages: every part, recipient and header where Mailjet expects it, the
 * envelope (never the headers) deciding who receives it, and the documented limits checked before a call.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { simpleParser, type ParsedMail } from 'mailparser';
import { LIMITS, limitProblem, mapDelivery, rawMimeReason, type MjMessage } from '../../src/upstreams/mailjet/mapping.js';
import { compose, PDF, PNG, richMessage } from '../helpers/mime.js';

const PARSE = { keepCidLinks: true, skipHtmlToText: true, skipTextToHtml: true, skipTextLinks: true, skipImageLinks: true, checksumAlgo: false } as const;

async function parse(raw: Buffer | string): Promise<ParsedMail> {
  return simpleParser(raw, PARSE);
}

function only<T>(list: T[]): T {
  assert.equal(list.length, 1, `expected exactly one item, got ${list.length}`);
  return list[0]!;
}

test('a multipart message with an inline image and an attachment maps every part where the Send API expects it', async () => {
  const parsed = await parse(await compose(richMessage()));
  // bob is named in To but not a recipient of this delivery; dave is a recipient no header names (Bcc).
  const mapped = mapDelivery(parsed, { queueId: 'Q1', sender: 'scans@contoso.test', recipients: ['alice@dest.test', 'carol@dest.test', 'dave@dest.test'] });
  const m = only(mapped.messages);

  assert.deepEqual(m.From, { Email: 'scans@contoso.test', Name: 'Scanner Floor 2' });
  assert.deepEqual(m.To, [{ Email: 'alice@dest.test', Name: 'Alice Example' }], 'only this delivery\'s To recipients, with their names');
  assert.deepEqual(m.Cc, [{ Email: 'carol@dest.test', Name: 'Carol' }]);
  assert.deepEqual(m.Bcc, [{ Email: 'dave@dest.test' }]);
  assert.deepEqual(m.ReplyTo, { Email: 'helpdesk@contoso.test' });
  assert.equal(m.Sender, undefined, 'no Sender header, no Sender property');
  assert.equal(m.Subject, 'Scan ready: Größe A4');
  assert.equal(m.TextPart?.trim(), 'Your scan is attached.\nLogo below.');
  assert.match(m.HTMLPart ?? '', /<img src="cid:logo@contoso\.test"/, 'the cid: link is kept, not turned into a data: URL');

  const inline = only(m.InlinedAttachments ?? []);
  assert.deepEqual({ ...inline, Base64Content: undefined }, { ContentType: 'image/png', Filename: 'logo.png', ContentID: 'logo@contoso.test', Base64Content: undefined });
  assert.deepEqual(Buffer.from(inline.Base64Content, 'base64'), PNG);
  const attachment = only(m.Attachments ?? []);
  assert.equal(attachment.ContentType, 'application/pdf');
  assert.equal(attachment.Filename, 'scan-0001.pdf');
  assert.deepEqual(Buffer.from(attachment.Base64Content, 'base64'), PDF);

  assert.equal(m.Headers?.['X-Tag'], 'invoice');
  assert.equal(m.Headers?.['X-Custom-Header'], 'custom value');
  assert.equal(m.Headers?.['In-Reply-To'], '<thread-1@contoso.test>');
  const names = Object.keys(m.Headers ?? {}).map((h) => h.toLowerCase());
  for (const refused of ['from', 'to', 'cc', 'subject', 'date', 'message-id', 'reply-to', 'mime-version', 'content-type']) {
    assert.ok(!names.includes(refused), `${refused} is not passed as a custom header`);
  }
  assert.equal(m.CustomID, 'Q1', 'the queue ID is the CustomID without an X-MJ-CustomID header');
  assert.equal(m.EventPayload, undefined, 'no tag header configured');

  assert.deepEqual(
    mapped.placements.map((p) => [p.recipient, p.field, p.index]),
    [
      ['alice@dest.test', 'To', 0],
      ['carol@dest.test', 'Cc', 0],
      ['dave@dest.test', 'Bcc', 0],
    ],
  );
});

test('X-MJ-CustomID and X-MJ-EventPayload become CustomID and EventPayload; the tag header fills EventPayload only when it is unset', async () => {
  const withIds = await parse(await compose(richMessage({ headers: { 'X-MJ-CustomID': 'invoice-4711', 'X-MJ-EventPayload': '{"order":4711}', 'X-Tag': 'invoice' } })));
  const m1 = only(mapDelivery(withIds, { queueId: 'Q2', sender: 's@x.test', recipients: ['alice@dest.test'], tagHeader: 'X-Tag' }).messages);
  assert.equal(m1.CustomID, 'invoice-4711');
  assert.equal(m1.EventPayload, '{"order":4711}');
  assert.ok(!Object.keys(m1.Headers ?? {}).some((h) => /^x-mj-/i.test(h)), 'X-MJ-* headers are Mailjet properties, not custom headers');

  const tagged = await parse(await compose(richMessage({ headers: { 'X-Tag': 'invoice' } })));
  const m2 = only(mapDelivery(tagged, { queueId: 'Q3', sender: 's@x.test', recipients: ['alice@dest.test'], tagHeader: 'x-tag' }).messages);
  assert.equal(m2.EventPayload, 'invoice');
  assert.equal(m2.CustomID, 'Q3');
});

test('Mailjet tracking and campaign headers become their properties', async () => {
  const parsed = await parse(await compose(richMessage({ headers: { 'X-Mailjet-Campaign': 'scans', 'X-Mailjet-TrackOpen': '0', 'X-Mailjet-TrackClick': '1' } })));
  const m = only(mapDelivery(parsed, { queueId: 'Q', sender: 's@x.test', recipients: ['alice@dest.test'] }).messages);
  assert.equal(m.CustomCampaign, 'scans');
  assert.equal(m.TrackOpens, 'disabled');
  assert.equal(m.TrackClicks, 'enabled');
});

test('a Bcc-only message goes as one message per recipient, each alone in To, so no hidden recipient sees another', async () => {
  const raw = 'From: app@origin.test\r\nTo: undisclosed-recipients:;\r\nSubject: hidden\r\n\r\nbody\r\n';
  const mapped = mapDelivery(await parse(raw), { queueId: 'Q', sender: 'app@origin.test', recipients: ['x@dest.test', 'y@dest.test'] });
  assert.equal(mapped.messages.length, 2);
  assert.deepEqual(
    mapped.messages.map((m) => [m.To, m.Cc, m.Bcc]),
    [
      [[{ Email: 'x@dest.test' }], undefined, undefined],
      [[{ Email: 'y@dest.test' }], undefined, undefined],
    ],
  );
  assert.deepEqual(
    mapped.placements.map((p) => [p.recipient, p.message, p.field, p.index]),
    [
      ['x@dest.test', 0, 'To', 0],
      ['y@dest.test', 1, 'To', 0],
    ],
  );
});

test('Cc-only recipients are shown in To (the Send API needs one), hidden ones stay in Bcc', async () => {
  const raw = 'From: app@origin.test\r\nTo: someone-else@dest.test\r\nCc: Cc Person <cc@dest.test>\r\nSubject: cc\r\n\r\nbody\r\n';
  const m = only(mapDelivery(await parse(raw), { queueId: 'Q', sender: 'app@origin.test', recipients: ['cc@dest.test', 'hidden@dest.test'] }).messages);
  assert.deepEqual(m.To, [{ Email: 'cc@dest.test', Name: 'Cc Person' }]);
  assert.equal(m.Cc, undefined);
  assert.deepEqual(m.Bcc, [{ Email: 'hidden@dest.test' }]);
});

test('header addresses match envelope recipients case-insensitively and across punycode', async () => {
  const raw = 'From: =?UTF-8?Q?J=C3=BCrgen?= <j@xn--mller-kva.test>\r\nTo: Alice <ALICE@Dest.Test>, <u@xn--bcher-kva.test>\r\nSubject: x\r\n\r\nbody\r\n';
  const m = only(mapDelivery(await parse(raw), { queueId: 'Q', sender: 'j@xn--mller-kva.test', recipients: ['alice@dest.test', 'u@bücher.test'] }).messages);
  assert.deepEqual(m.To, [{ Email: 'alice@dest.test', Name: 'Alice' }, { Email: 'u@bücher.test' }], 'the envelope form is what Mailjet gets');
  assert.deepEqual(m.From, { Email: 'j@xn--mller-kva.test', Name: 'Jürgen' }, 'From in ASCII form, display name decoded');
});

test('a message without From uses the envelope sender; one without a body gets a minimal text part (send-0003)', async () => {
  const parsed = await parse('To: a@dest.test\r\nSubject: scan\r\nContent-Type: application/pdf; name="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n');
  const m: MjMessage = only(mapDelivery(parsed, { queueId: 'Q', sender: 'printer@lan.test', recipients: ['a@dest.test'] }).messages);
  assert.deepEqual(m.From, { Email: 'printer@lan.test' });
  assert.equal(m.TextPart, ' ');
  assert.equal(m.HTMLPart, undefined);
  assert.equal(only(m.Attachments ?? []).Filename, 'scan.pdf');
});

test('a Sender header different from From becomes Sender; multiple custom headers of one name keep the first', async () => {
  const raw = 'From: boss@contoso.test\r\nSender: Assistant <assistant@contoso.test>\r\nTo: a@dest.test\r\nX-Dup: one\r\nX-Dup: two\r\nSubject: x\r\n\r\nbody\r\n';
  const m = only(mapDelivery(await parse(raw), { queueId: 'Q', sender: 'assistant@contoso.test', recipients: ['a@dest.test'] }).messages);
  assert.deepEqual(m.Sender, { Email: 'assistant@contoso.test', Name: 'Assistant' });
  assert.deepEqual(m.Headers, { 'X-Dup': 'one' });
});

test('limits: more than 50 recipients, more than 15 MB of attachments or a subject over 255 characters are refused before a call', async () => {
  const small = await parse(await compose(richMessage()));
  const fifty = Array.from({ length: LIMITS.recipients }, (_, i) => `r${i}@dest.test`);
  assert.equal(limitProblem(small, fifty), undefined, '50 recipients are fine');
  const tooMany = limitProblem(small, [...fifty, 'one-more@dest.test']);
  assert.deepEqual([tooMany?.code, tooMany?.enhanced], [550, '5.5.3']);
  assert.match(tooMany!.reason, /51 recipients/);

  const subject255 = await parse(await compose({ from: 'a@x.test', to: 'b@y.test', subject: 's'.repeat(255), text: 'x' }));
  assert.equal(limitProblem(subject255, ['b@y.test']), undefined);
  const subject256 = await parse(await compose({ from: 'a@x.test', to: 'b@y.test', subject: 's'.repeat(256), text: 'x' }));
  assert.deepEqual(limitProblem(subject256, ['b@y.test'])?.enhanced, '5.6.0');

  const big = Buffer.alloc(LIMITS.attachmentBytes + 1, 7);
  const heavy = await parse(await compose({ from: 'a@x.test', to: 'b@y.test', subject: 'big', text: 'x', attachments: [{ filename: 'big.bin', content: big }] }));
  const tooBig = limitProblem(heavy, ['b@y.test']);
  assert.deepEqual([tooBig?.code, tooBig?.enhanced], [552, '5.3.4']);
});

test('an S/MIME signed message is flagged as one the Send API would break', async () => {
  const raw = [
    'From: a@x.test',
    'To: b@y.test',
    'Subject: signed',
    'MIME-Version: 1.0',
    'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="b1"',
    '',
    '--b1',
    'Content-Type: text/plain',
    '',
    'signed text',
    '--b1',
    'Content-Type: application/pkcs7-signature; name=smime.p7s',
    'Content-Transfer-Encoding: base64',
    '',
    'MIAGCSqGSIb3DQEHAqCAMIACAQEx',
    '--b1--',
    '',
  ].join('\r\n');
  assert.match(rawMimeReason(await parse(raw)) ?? '', /multipart\/signed/);
  assert.equal(rawMimeReason(await parse(await compose(richMessage()))), undefined);
});
