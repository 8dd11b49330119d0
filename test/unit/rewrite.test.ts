import { test } from 'node:test';
import assert from 'node:assert/strict';
import { simpleParser, type AddressObject } from 'mailparser';
import type { RewriteRule } from '../../src/config/schema.js';
import { formatField, formatMailbox, parseMailboxes, splitHeaderFields } from '../../src/rewrite/header-block.js';
import {
  editHeaderBlock,
  rewriteEnvelopeSender,
  rewriteFromMailboxes,
  type HeaderEdits,
  type SenderRewriteOptions,
} from '../../src/rewrite/sender.js';

function rule(match: string, to: string, o: Partial<RewriteRule> = {}): RewriteRule {
  return { match, to, apply: 'both', displayName: 'keep', replyToOriginal: true, ...o };
}

/** A header block from lines, CRLF after each (as the spool stores it, without the empty line). */
function block(...lines: string[]): Buffer {
  return Buffer.from(lines.map((l) => `${l}\r\n`).join(''), 'latin1');
}

/** The edits the planner would make for one envelope sender and these rules. */
function edits(sender: string, options: SenderRewriteOptions, extra: Partial<HeaderEdits> = {}): HeaderEdits {
  return { options, envelope: { original: sender, rewritten: rewriteEnvelopeSender(sender, options).address }, ...extra };
}

function lines(b: Buffer): string[] {
  return b.toString('latin1').split('\r\n').slice(0, -1);
}

/** The raw fields (continuation lines included) with this name, as text. */
function fieldsNamed(b: Buffer, name: string): string[] {
  return splitHeaderFields(b)
    .filter((f) => f.name === name.toLowerCase())
    .map((f) => f.raw.toString('utf8'));
}

/** An independent reading of the header block (mailparser, not our own parser). */
async function parsed(b: Buffer) {
  const mail = await simpleParser(Buffer.concat([b, Buffer.from('\r\nbody\r\n')]));
  const list = (v: AddressObject | AddressObject[] | undefined) =>
    (Array.isArray(v) ? v : v ? [v] : []).flatMap((o) => o.value).flatMap((a) => (a.group ? a.group : [a])).map((a) => ({ name: a.name, address: a.address }));
  return { from: list(mail.from), replyTo: list(mail.replyTo), headers: mail.headers };
}

/** Every line of a header block is a field start or a continuation that begins with white space. */
function assertWellFormed(b: Buffer): void {
  assert.ok(b.subarray(-2).equals(Buffer.from('\r\n')), 'ends with CRLF');
  for (const line of lines(b)) assert.match(line, /^([!-9;-~]+:|[ \t])/, `not a field or continuation: ${JSON.stringify(line)}`);
}

// ----- envelope sender -----

test('envelope: no rule matches, the sender stays', () => {
  assert.deepEqual(rewriteEnvelopeSender('a@x.test', { rules: [] }), { address: 'a@x.test' });
  assert.deepEqual(rewriteEnvelopeSender('a@x.test', { rules: [rule('b@x.test', 'c@x.test')] }), { address: 'a@x.test' });
});

test('envelope: the first matching rule wins and is named', () => {
  const rules = [rule('@other.test', 'no@x.test'), rule('scanner@printer.local', 'scans@contoso.com'), rule('@printer.local', 'printers@contoso.com')];
  assert.deepEqual(rewriteEnvelopeSender('scanner@printer.local', { rules }), { address: 'scans@contoso.com', rule: 1 });
  assert.deepEqual(rewriteEnvelopeSender('fax@printer.local', { rules }), { address: 'printers@contoso.com', rule: 2 });
  assert.deepEqual(rewriteEnvelopeSender('SCANNER@Printer.Local', { rules }), { address: 'scans@contoso.com', rule: 1 }, 'case ignored');
});

test('envelope: captures of wildcards and regular expressions fill the target', () => {
  assert.deepEqual(rewriteEnvelopeSender('scan@floor2.printer.local', { rules: [rule('*@*.printer.local', '$2-$1@contoso.com')] }), {
    address: 'floor2-scan@contoso.com',
    rule: 0,
  });
  assert.deepEqual(rewriteEnvelopeSender('invoice-77@erp.local', { rules: [rule('/^invoice-(\\d+)@erp\\.local$/', 'billing+$1@contoso.com')] }), {
    address: 'billing+77@contoso.com',
    rule: 0,
  });
});

test('envelope: header-only rules are skipped, envelope-only and both apply', () => {
  const rules = [rule('@printer.local', 'header@contoso.com', { apply: 'header' }), rule('@printer.local', 'envelope@contoso.com', { apply: 'envelope' })];
  assert.deepEqual(rewriteEnvelopeSender('a@printer.local', { rules }), { address: 'envelope@contoso.com', rule: 1 });
  assert.deepEqual(rewriteEnvelopeSender('a@printer.local', { rules: [rules[0]!] }), { address: 'a@printer.local' });
});

test('envelope: a forced central sender beats every rule', () => {
  const o = { rules: [rule('*', 'rule@contoso.com')], forcedSender: { address: 'central@contoso.com' } };
  assert.deepEqual(rewriteEnvelopeSender('a@printer.local', o), { address: 'central@contoso.com' });
});

test('envelope: the null sender of a bounce is never rewritten, not even by a catch-all or a forced sender', () => {
  assert.deepEqual(rewriteEnvelopeSender('', { rules: [rule('*', 'x@contoso.com'), rule('/.*/', 'y@contoso.com')] }), { address: '' });
  assert.deepEqual(rewriteEnvelopeSender('', { rules: [], forcedSender: { address: 'central@contoso.com' } }), { address: '' });
});

// ----- From mailboxes -----

test('From mailboxes: only matching ones are rewritten; header rules apply, envelope-only rules do not', () => {
  const from = [
    { name: 'Scanner', address: 'scanner@printer.local' },
    { name: 'Bob', address: 'bob@other.test' },
  ];
  const r = rewriteFromMailboxes(from, { rules: [rule('@other.test', 'nope@x.test', { apply: 'envelope' }), rule('scanner@printer.local', 'scans@contoso.com')] });
  assert.deepEqual(r, { from: [{ name: 'Scanner', address: 'scans@contoso.com' }, from[1]], changed: true, replyTo: from });
  assert.deepEqual(rewriteFromMailboxes(from, { rules: [rule('@nowhere.test', 'x@y.test')] }), { from, changed: false });
});

test('From mailboxes: a forced sender replaces every address, keeps names, asks for Reply-To', () => {
  const r = rewriteFromMailboxes([{ name: 'Scanner', address: 'scanner@printer.local' }], { rules: [], forcedSender: { address: 'central@contoso.com' } });
  assert.deepEqual(r, { from: [{ name: 'Scanner', address: 'central@contoso.com' }], changed: true, replyTo: [{ name: 'Scanner', address: 'scanner@printer.local' }] });
});

test('From mailboxes: a central sender with a name and a reply address sets both; the reply address holds even when From is already right', () => {
  const forcedSender = { address: 'invoices@contoso.com', name: 'Contoso Accounting', replyTo: 'accounting@contoso.com' };
  const r = rewriteFromMailboxes([{ name: 'ERP', address: 'erp@erp.local' }], { rules: [], forcedSender });
  assert.deepEqual(r, {
    from: [{ name: 'Contoso Accounting', address: 'invoices@contoso.com' }],
    changed: true,
    replyTo: [{ name: '', address: 'accounting@contoso.com' }],
  });
  const already = rewriteFromMailboxes([{ name: 'Contoso Accounting', address: 'invoices@contoso.com' }], { rules: [], forcedSender });
  assert.deepEqual(already, { from: [{ name: 'Contoso Accounting', address: 'invoices@contoso.com' }], changed: false, replyTo: [{ name: '', address: 'accounting@contoso.com' }] });
  // Only the name differs: that is a change too.
  const renamed = rewriteFromMailboxes([{ name: 'Old', address: 'invoices@contoso.com' }], { rules: [], forcedSender: { address: 'invoices@contoso.com', name: 'New' } });
  assert.deepEqual(renamed, { from: [{ name: 'New', address: 'invoices@contoso.com' }], changed: true, replyTo: [{ name: 'Old', address: 'invoices@contoso.com' }] });
});

// ----- header block -----

const RECEIVED = ['Received: from printer (printer.lan [192.168.10.5])', '\tby smarthost.test with ESMTP id 01ABC;', '\tMon, 1 Jan 2024 10:00:00 +0000'];

test('From rewrite: exact output; trace headers on top; From replaced in place with Reply-To after it; other fields byte for byte', () => {
  const subject = 'Subject: Scan \xe9t\xe9  with  spaces\t'; // raw 8-bit bytes and odd spacing must survive
  const input = block(...RECEIVED, 'From: "Scanner 2nd floor" <scanner@printer.local>', 'To: alice@contoso.com', subject, 'X-Custom:value-without-space');
  const out = editHeaderBlock(input, edits('scanner@printer.local', { rules: [rule('scanner@printer.local', 'scans@contoso.com')] }));
  assert.deepEqual(lines(out), [
    'X-Smarthost-Original-Sender: <scanner@printer.local>',
    'X-Smarthost-Original-From: "Scanner 2nd floor" <scanner@printer.local>',
    ...RECEIVED,
    'From: "Scanner 2nd floor" <scans@contoso.com>',
    'Reply-To: "Scanner 2nd floor" <scanner@printer.local>',
    'To: alice@contoso.com',
    subject,
    'X-Custom:value-without-space',
  ]);
  // The untouched fields are the very same bytes, in the same order.
  const untouched = (b: Buffer) =>
    splitHeaderFields(b)
      .filter((f) => !['from', 'reply-to', 'x-smarthost-original-sender', 'x-smarthost-original-from'].includes(f.name))
      .map((f) => f.raw.toString('hex'));
  assert.deepEqual(untouched(out), untouched(input));
});

test('nothing to do: the block is returned unchanged (same bytes)', () => {
  const input = block(...RECEIVED, 'From: a@elsewhere.test', 'Subject: x');
  const out = editHeaderBlock(input, edits('a@elsewhere.test', { rules: [rule('@printer.local', 'x@contoso.com')] }));
  assert.ok(out.equals(input));
});

test('folded From: parsed across continuation lines, original kept with its folding in the trace header', async () => {
  const input = block('From: "Scanner"', '\t<scanner@printer.local>', 'Subject: x');
  const out = editHeaderBlock(input, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com')] }));
  assert.deepEqual(fieldsNamed(out, 'X-Smarthost-Original-From'), ['X-Smarthost-Original-From: "Scanner"\r\n\t<scanner@printer.local>\r\n']);
  assert.deepEqual(fieldsNamed(out, 'From'), ['From: "Scanner" <scans@contoso.com>\r\n']);
  assert.deepEqual((await parsed(out)).from, [{ name: 'Scanner', address: 'scans@contoso.com' }]);
  assertWellFormed(out);
});

test('encoded-word display name: decoded for derive and keep, re-encoded on output', async () => {
  const input = block('From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?=', ' <scanner@printer.local>', 'Subject: x');
  for (const displayName of ['keep', 'derive'] as const) {
    const out = editHeaderBlock(input, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com', { displayName })] }));
    const from = fieldsNamed(out, 'From')[0]!;
    assert.match(from, /^From: =\?UTF-8\?Q\?J=C3=BCrgen_M=C3=BCller\?= <scans@contoso\.com>\r\n$/, displayName);
    // eslint-disable-next-line no-control-regex
    assert.doesNotMatch(out.toString('latin1'), /[^\x00-\x7f]/, 'output header is 7-bit');
    assert.deepEqual((await parsed(out)).from, [{ name: 'Jürgen Müller', address: 'scans@contoso.com' }]);
    assert.deepEqual((await parsed(out)).replyTo, [{ name: 'Jürgen Müller', address: 'scanner@printer.local' }]);
  }
  // base64 encoded words too
  assert.deepEqual(parseMailboxes('=?UTF-8?B?SsO8cmdlbg==?= <a@b.test>'), [{ name: 'Jürgen', address: 'a@b.test' }]);
});

test('display name: keep, derive and set', async () => {
  const named = block('From: Scanner <scanner@printer.local>');
  const bare = block('From: scanner@printer.local');
  const name = async (input: Buffer, displayName: RewriteRule['displayName']) => {
    const out = editHeaderBlock(input, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com', { displayName })] }));
    return (await parsed(out)).from;
  };
  assert.deepEqual(await name(named, 'keep'), [{ name: 'Scanner', address: 'scans@contoso.com' }]);
  assert.deepEqual(await name(bare, 'keep'), [{ name: '', address: 'scans@contoso.com' }], 'keep: no name stays no name');
  assert.deepEqual(await name(named, 'derive'), [{ name: 'Scanner', address: 'scans@contoso.com' }]);
  assert.deepEqual(await name(bare, 'derive'), [{ name: 'scanner@printer.local', address: 'scans@contoso.com' }], 'derive: from the original address');
  assert.deepEqual(await name(named, { set: 'Scan Service' }), [{ name: 'Scan Service', address: 'scans@contoso.com' }]);
  assert.deepEqual(await name(bare, { set: 'Müller "Scans", Inc.' }), [{ name: 'Müller "Scans", Inc.', address: 'scans@contoso.com' }]);
  assert.deepEqual(await name(bare, { set: 'O\'Brien, "the" \\ scanner' }), [{ name: 'O\'Brien, "the" \\ scanner', address: 'scans@contoso.com' }]);
});

test('a display name can never inject a header line', async () => {
  // An encoded word hiding CR LF decodes to a name with a line break; on output it must be encoded again.
  const input = block('From: =?UTF-8?Q?Evil=0D=0ABcc:_victim@x.test?= <scanner@printer.local>');
  const out = editHeaderBlock(input, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com', { displayName: 'derive' })] }));
  assertWellFormed(out);
  assert.deepEqual(fieldsNamed(out, 'Bcc'), []);
  assert.equal(splitHeaderFields(out).filter((f) => /^bcc/i.test(f.raw.toString('latin1'))).length, 0);
  assert.equal((await parsed(out)).headers.has('bcc'), false);
});

test('group syntax: members are rewritten, the group is flattened, an empty group gets no From', async () => {
  const input = block('From: Scanners: "Scan" <scanner@printer.local>, other@x.test;', 'Subject: x');
  const out = editHeaderBlock(input, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com')] }));
  assert.deepEqual((await parsed(out)).from, [
    { name: 'Scan', address: 'scans@contoso.com' },
    { name: '', address: 'other@x.test' },
  ]);
  assert.deepEqual(fieldsNamed(out, 'X-Smarthost-Original-From'), ['X-Smarthost-Original-From: Scanners: "Scan" <scanner@printer.local>, other@x.test;\r\n']);
  assertWellFormed(out);

  // "undisclosed:;" has no mailbox to rewrite; a From exists, so none is added either. Only the envelope trace.
  const empty = block('From: undisclosed-senders:;', 'Subject: x');
  const out2 = editHeaderBlock(empty, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com')] }));
  assert.deepEqual(lines(out2), ['X-Smarthost-Original-Sender: <scanner@printer.local>', 'From: undisclosed-senders:;', 'Subject: x']);
});

test('several From addresses: only the matching ones are rewritten', async () => {
  const input = block('From: "A" <a@printer.local>, "B" <b@other.test>, c@printer.local', 'Subject: x');
  const out = editHeaderBlock(input, edits('a@printer.local', { rules: [rule('*@printer.local', '$1.scans@contoso.com')] }));
  assert.deepEqual((await parsed(out)).from, [
    { name: 'A', address: 'a.scans@contoso.com' },
    { name: 'B', address: 'b@other.test' },
    { name: '', address: 'c.scans@contoso.com' },
  ]);
  assert.equal(fieldsNamed(out, 'From').length, 1);
});

test('several From fields are merged into one rewritten From, each original kept in a trace header', async () => {
  const input = block('From: a@printer.local', 'Subject: x', 'From: b@other.test');
  const out = editHeaderBlock(input, edits('a@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com')] }));
  assert.deepEqual(lines(out).filter((l) => /^(From|X-Smarthost-Original-From|Subject):/.test(l)), [
    'X-Smarthost-Original-From: a@printer.local',
    'X-Smarthost-Original-From: b@other.test',
    'From: <scans@contoso.com>, <b@other.test>',
    'Subject: x',
  ]);
});

test('missing From: the rewritten envelope sender becomes the From; without a rewrite nothing is added', () => {
  const input = block(...RECEIVED, 'Subject: no from');
  const out = editHeaderBlock(input, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com')] }));
  assert.deepEqual(lines(out), ['X-Smarthost-Original-Sender: <scanner@printer.local>', ...RECEIVED, 'Subject: no from', 'From: <scans@contoso.com>']);
  assert.deepEqual(fieldsNamed(out, 'Reply-To'), [], 'no Reply-To: there is no original From to answer');

  assert.ok(editHeaderBlock(input, edits('scanner@printer.local', { rules: [] })).equals(input));
  // A header-only rule does not change the envelope, so there is nothing to put in a From.
  assert.ok(editHeaderBlock(input, edits('scanner@printer.local', { rules: [rule('@printer.local', 'x@contoso.com', { apply: 'header' })] })).equals(input));
  // A forced sender counts as a rewrite.
  const forced = editHeaderBlock(input, edits('scanner@printer.local', { rules: [], forcedSender: { address: 'central@contoso.com' } }));
  assert.deepEqual(fieldsNamed(forced, 'From'), ['From: <central@contoso.com>\r\n']);
});

test('Reply-To: an existing one is kept and no second is added; otherwise added only with replyToOriginal', () => {
  const withReplyTo = block('From: scanner@printer.local', 'Reply-To: "Helpdesk"  <help@contoso.com>', 'Subject: x');
  const out = editHeaderBlock(withReplyTo, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com')] }));
  assert.deepEqual(fieldsNamed(out, 'Reply-To'), ['Reply-To: "Helpdesk"  <help@contoso.com>\r\n']);
  // Case of the field name does not matter.
  const lower = block('From: scanner@printer.local', 'reply-to: help@contoso.com');
  assert.equal(lines(editHeaderBlock(lower, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com')] }))).filter((l) => /^reply-to:/i.test(l)).length, 1);

  const without = block('From: scanner@printer.local', 'Subject: x');
  const added = editHeaderBlock(without, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com')] }));
  assert.deepEqual(fieldsNamed(added, 'Reply-To'), ['Reply-To: <scanner@printer.local>\r\n']);
  const off = editHeaderBlock(without, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com', { replyToOriginal: false })] }));
  assert.deepEqual(fieldsNamed(off, 'Reply-To'), []);
  assert.deepEqual(fieldsNamed(off, 'From'), ['From: <scans@contoso.com>\r\n']);
});

test('apply: envelope leaves the From alone, header leaves the envelope alone, both does both', () => {
  const input = block('From: Scanner <scanner@printer.local>', 'Subject: x');
  const run = (apply: RewriteRule['apply']) => {
    const o = { rules: [rule('scanner@printer.local', 'scans@contoso.com', { apply })] };
    const e = edits('scanner@printer.local', o);
    return { envelope: e.envelope.rewritten, out: editHeaderBlock(input, e) };
  };
  const envelope = run('envelope');
  assert.equal(envelope.envelope, 'scans@contoso.com');
  assert.deepEqual(lines(envelope.out), ['X-Smarthost-Original-Sender: <scanner@printer.local>', 'From: Scanner <scanner@printer.local>', 'Subject: x']);

  const header = run('header');
  assert.equal(header.envelope, 'scanner@printer.local');
  assert.deepEqual(lines(header.out), [
    'X-Smarthost-Original-From: Scanner <scanner@printer.local>',
    'From: "Scanner" <scans@contoso.com>',
    'Reply-To: "Scanner" <scanner@printer.local>',
    'Subject: x',
  ]);

  const both = run('both');
  assert.equal(both.envelope, 'scans@contoso.com');
  assert.deepEqual(lines(both.out), [
    'X-Smarthost-Original-Sender: <scanner@printer.local>',
    'X-Smarthost-Original-From: Scanner <scanner@printer.local>',
    'From: "Scanner" <scans@contoso.com>',
    'Reply-To: "Scanner" <scanner@printer.local>',
    'Subject: x',
  ]);
});

test('envelope and header rules are chosen independently, each by its own first match', () => {
  const rules = [rule('@printer.local', 'header@contoso.com', { apply: 'header' }), rule('@printer.local', 'envelope@contoso.com', { apply: 'envelope' })];
  const e = edits('a@printer.local', { rules });
  assert.equal(e.envelope.rewritten, 'envelope@contoso.com');
  assert.deepEqual(fieldsNamed(editHeaderBlock(block('From: a@printer.local'), e), 'From'), ['From: <header@contoso.com>\r\n']);
});

test('forced central sender: envelope and From replaced, original name kept, Reply-To to the original', async () => {
  const input = block('From: "Scanner" <scanner@printer.local>', 'Subject: x');
  const out = editHeaderBlock(input, edits('scanner@printer.local', { rules: [rule('@printer.local', 'rule@contoso.com')], forcedSender: { address: 'central@contoso.com' } }));
  const p = await parsed(out);
  assert.deepEqual(p.from, [{ name: 'Scanner', address: 'central@contoso.com' }]);
  assert.deepEqual(p.replyTo, [{ name: 'Scanner', address: 'scanner@printer.local' }]);
  assert.deepEqual(fieldsNamed(out, 'X-Smarthost-Original-Sender'), ['X-Smarthost-Original-Sender: <scanner@printer.local>\r\n']);
});

test('central sender with a name and a reply address: exact header block, an existing Reply-To kept, a message without From gets both', () => {
  const forcedSender = { address: 'invoices@contoso.com', name: 'Contoso Accounting', replyTo: 'accounting@contoso.com' };
  const input = block('From: "ERP" <erp@erp.local>', 'Subject: x');
  assert.deepEqual(lines(editHeaderBlock(input, edits('erp@erp.local', { rules: [], forcedSender }))), [
    'X-Smarthost-Original-Sender: <erp@erp.local>',
    'X-Smarthost-Original-From: "ERP" <erp@erp.local>',
    'From: "Contoso Accounting" <invoices@contoso.com>',
    'Reply-To: <accounting@contoso.com>',
    'Subject: x',
  ]);
  const withReplyTo = block('From: erp@erp.local', 'Reply-To: customer-service@contoso.com', 'Subject: x');
  assert.deepEqual(fieldsNamed(editHeaderBlock(withReplyTo, edits('erp@erp.local', { rules: [], forcedSender })), 'Reply-To'), ['Reply-To: customer-service@contoso.com\r\n']);
  // From already as configured: only the reply address is added, every other field keeps its bytes.
  const already = block('From: "Contoso Accounting" <invoices@contoso.com>', 'Subject: x');
  assert.deepEqual(lines(editHeaderBlock(already, edits('invoices@contoso.com', { rules: [], forcedSender }))), [
    'Reply-To: <accounting@contoso.com>',
    'From: "Contoso Accounting" <invoices@contoso.com>',
    'Subject: x',
  ]);
  const noFrom = block('Subject: x');
  assert.deepEqual(lines(editHeaderBlock(noFrom, edits('erp@erp.local', { rules: [], forcedSender }))), [
    'X-Smarthost-Original-Sender: <erp@erp.local>',
    'Subject: x',
    'From: "Contoso Accounting" <invoices@contoso.com>',
    'Reply-To: <accounting@contoso.com>',
  ]);
  // A non-ASCII name is encoded, so the field stays 7-bit.
  const umlaut = editHeaderBlock(input, edits('erp@erp.local', { rules: [], forcedSender: { address: 'invoices@contoso.com', name: 'Buchhaltung Müller' } }));
  assert.match(fieldsNamed(umlaut, 'From')[0]!, /^From: =\?UTF-8\?Q\?Buchhaltung_M=C3=BCller\?= <invoices@contoso\.com>\r\n$/);
});

test('test mode: the original recipients are listed, folded when long, nothing else changes without rules', () => {
  const input = block('From: a@x.test', 'Subject: x');
  const out = editHeaderBlock(input, { options: { rules: [] }, envelope: { original: 'a@x.test', rewritten: 'a@x.test' }, originalRecipients: ['r1@contoso.com', 'r2@partner.test'] });
  assert.deepEqual(lines(out), ['X-Smarthost-Original-Recipients: r1@contoso.com, r2@partner.test', 'From: a@x.test', 'Subject: x']);

  const many = Array.from({ length: 12 }, (_, i) => `recipient-number-${i}@contoso.example.com`);
  const long = editHeaderBlock(input, { options: { rules: [] }, envelope: { original: 'a@x.test', rewritten: 'a@x.test' }, originalRecipients: many });
  assertWellFormed(long);
  for (const l of lines(long)) assert.ok(l.length <= 78, `line of ${l.length}: ${l}`);
  const value = fieldsNamed(long, 'X-Smarthost-Original-Recipients')[0]!.replace(/\r\n(?=[ \t])/g, '').replace(/^[^:]+:\s*/, '').trim();
  assert.deepEqual(value.split(/,\s*/), many);
});

test('long rewritten From lines are folded with white space leading the continuation (regression)', async () => {
  const input = block('From: "Scanner on the second floor next to the coffee machine" <scanner@printer.local>');
  const out = editHeaderBlock(input, edits('scanner@printer.local', { rules: [rule('@printer.local', 'scans-second-floor@accounting.contoso.example.com')] }));
  assertWellFormed(out);
  assert.deepEqual((await parsed(out)).from, [{ name: 'Scanner on the second floor next to the coffee machine', address: 'scans-second-floor@accounting.contoso.example.com' }]);
  const longName = 'Jürgen Müller aus der Buchhaltung im zweiten Stock neben der Kaffeemaschine';
  const encoded = editHeaderBlock(block('From: x@printer.local'), edits('x@printer.local', { rules: [rule('@printer.local', 'scans@contoso.com', { displayName: { set: longName } })] }));
  assertWellFormed(encoded);
  assert.deepEqual((await parsed(encoded)).from, [{ name: longName, address: 'scans@contoso.com' }]);
});

test('formatMailbox and formatField', () => {
  assert.equal(formatMailbox({ name: '', address: 'a@b.test' }), '<a@b.test>');
  assert.equal(formatMailbox({ name: 'A "B" \\C', address: 'a@b.test' }), '"A \\"B\\" \\\\C" <a@b.test>');
  assert.match(formatMailbox({ name: 'Jürgen', address: 'a@b.test' }), /^=\?UTF-8\?Q\?J=C3=BCrgen\?= <a@b\.test>$/);
  assert.equal(formatField('Reply-To', '<a@b.test>').toString(), 'Reply-To: <a@b.test>\r\n');
});

test('splitHeaderFields keeps every byte, continuation lines with their field', () => {
  const input = block('A: 1', ' 2', '\t3', 'b:x', 'C : y');
  const fields = splitHeaderFields(input);
  assert.deepEqual(
    fields.map((f) => [f.name, f.raw.toString()]),
    [
      ['a', 'A: 1\r\n 2\r\n\t3\r\n'],
      ['b', 'b:x\r\n'],
      ['c', 'C : y\r\n'],
    ],
  );
  assert.ok(Buffer.concat(fields.map((f) => f.raw)).equals(input));
});
