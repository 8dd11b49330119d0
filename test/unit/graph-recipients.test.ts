import assert from 'node:assert/strict';
import { test } from 'node:test';
import { simpleParser, type AddressObject } from 'mailparser';
import { addressKey, exactRecipientHeaders, planRecipients, splitMessage } from '../../src/upstreams/graph/recipients.js';

/** The recipients mailparser (not our parser) reads from a header block: what Graph would deliver to. */
async function headerRecipients(block: Buffer): Promise<{ to: string[]; cc: string[]; bcc: string[] }> {
  const parsed = await simpleParser(Buffer.concat([block, Buffer.from('\r\nbody\r\n')]));
  type Entry = AddressObject['value'][number];
  const flat = (e: Entry): string[] => (e.group ? e.group.flatMap(flat) : e.address ? [e.address] : []);
  const list = (v: AddressObject | AddressObject[] | undefined) => (v === undefined ? [] : Array.isArray(v) ? v : [v]).flatMap((o) => o.value.flatMap(flat));
  return { to: list(parsed.to), cc: list(parsed.cc), bcc: list(parsed.bcc) };
}

const header = (lines: string[]) => Buffer.from(lines.map((l) => `${l}\r\n`).join(''));

test('a Bcc-only envelope recipient is added in Bcc; To and Cc stay byte for byte when all of theirs are recipients', async () => {
  const block = header(['From: app@origin.test', 'To: "Alice A." <alice@dest.test>', 'Cc: bob@dest.test', 'Subject: report']);
  const exact = exactRecipientHeaders(block, ['alice@dest.test', 'bob@dest.test', 'hidden@dest.test']);
  const text = exact.block.toString();
  assert.match(text, /^To: "Alice A\." <alice@dest\.test>\r$/m, 'To untouched');
  assert.match(text, /^Cc: bob@dest\.test\r$/m, 'Cc untouched');
  assert.match(text, /^Bcc: <hidden@dest\.test>\r$/m);
  assert.deepEqual(await headerRecipients(exact.block), { to: ['alice@dest.test'], cc: ['bob@dest.test'], bcc: ['hidden@dest.test'] });
});

test('header recipients routed elsewhere (not in this delivery) are dropped; the display names of the rest are kept', async () => {
  const block = header(['To: "Alice" <alice@dest.test>, "Carol (other route)" <carol@elsewhere.test>', 'Cc: dave@elsewhere.test', 'Subject: x']);
  const exact = exactRecipientHeaders(block, ['alice@dest.test']);
  const got = await headerRecipients(exact.block);
  assert.deepEqual(got, { to: ['alice@dest.test'], cc: [], bcc: [] });
  assert.match(exact.block.toString(), /^To: "Alice" <alice@dest\.test>\r$/m);
  assert.doesNotMatch(exact.block.toString(), /carol|dave|^Cc:/im, 'nothing of the other route is left');
});

test('exactly the envelope recipients, no more and no fewer, whatever the headers say', async () => {
  const cases: { lines: string[]; envelope: string[] }[] = [
    { lines: ['To: a@x.test, b@x.test', 'Cc: c@x.test'], envelope: ['b@x.test', 'd@x.test'] },
    { lines: ['To: undisclosed-recipients:;'], envelope: ['a@x.test', 'b@x.test'] },
    { lines: ['Subject: no recipient headers at all'], envelope: ['a@x.test'] },
    { lines: ['To: Team: a@x.test, b@x.test;', 'Bcc: old@x.test, a@x.test'], envelope: ['a@x.test', 'old@x.test'] },
    { lines: ['To: a@x.test', 'To: b@x.test', 'Cc: a@x.test'], envelope: ['a@x.test', 'b@x.test'] },
  ];
  for (const c of cases) {
    const exact = exactRecipientHeaders(header(c.lines), c.envelope);
    const got = await headerRecipients(exact.block);
    const all = [...got.to, ...got.cc, ...got.bcc];
    assert.deepEqual([...all].sort(), [...c.envelope].sort(), `${c.lines.join(' | ')} -> ${all.join(', ')}`);
    assert.equal(new Set(all).size, all.length, 'nobody twice');
  }
});

test('a Bcc header already in the message is replaced, never passed on with its old addresses', async () => {
  const exact = exactRecipientHeaders(header(['To: a@x.test', 'Bcc: secret@elsewhere.test']), ['a@x.test']);
  assert.doesNotMatch(exact.block.toString(), /secret@elsewhere|^Bcc:/im);
});

test('addresses match without regard to case and with the domain in punycode or Unicode', () => {
  assert.equal(addressKey('Alice@Dest.TEST'), 'alice@dest.test');
  assert.equal(addressKey('jörg@bücher.example'), addressKey('jörg@xn--bcher-kva.example'));
  const plan = planRecipients({ to: [{ name: 'Jörg', address: 'Jörg@BÜCHER.example' }], cc: [] }, ['jörg@xn--bcher-kva.example']);
  assert.deepEqual(plan, { to: [{ name: 'Jörg', address: 'jörg@xn--bcher-kva.example' }], cc: [], bcc: [] }, 'the envelope spelling is what Graph gets');
});

test('a rewritten To keeps an encoded display name readable', async () => {
  const block = header(['To: =?UTF-8?Q?J=C3=B6rg?= <j@x.test>, other@y.test']);
  const exact = exactRecipientHeaders(block, ['j@x.test']);
  const parsed = await simpleParser(Buffer.concat([exact.block, Buffer.from('\r\n')]));
  const to = parsed.to as AddressObject;
  assert.equal(to.value[0]!.name, 'Jörg');
  assert.equal(to.value.length, 1);
});

test('only the header block changes: the body after the blank line is the same bytes', () => {
  const body = Buffer.from('To: not-a-header@x.test\r\n\r\nbinary \x00\xff stays\r\n', 'latin1');
  const message = Buffer.concat([header(['To: a@x.test, b@y.test', 'Subject: s']), Buffer.from('\r\n'), body]);
  const { header: h, body: b } = splitMessage(message);
  assert.ok(b.equals(body));
  const exact = exactRecipientHeaders(h, ['a@x.test']);
  const out = Buffer.concat([exact.block, Buffer.from('\r\n'), b]);
  assert.ok(out.subarray(out.length - body.length).equals(body));
  assert.match(out.toString('latin1'), /^To: <a@x\.test>\r\nSubject: s\r\n\r\nTo: not-a-header/);
});
