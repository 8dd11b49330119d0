/**
 * 8-bit and UTF-8 mail from a listener to SMTP upstreams: BODY=8BITMIME where the upstream offers it (RFC 6152);
 * SMTPUTF8 for a UTF-8 local part where it offers SMTPUTF8, a permanent failure where it does not (RFC 6531 3.2),
 * never the address sent as raw UTF-8.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { type InProcessDaemon, sendRaw, startInProcess, tempDir, testConfig } from '../helpers/daemon.js';
import { smtpDialog, smtpReplyCodes } from '../helpers/net.js';
import { startSink, type Sink, type SinkMessage } from '../helpers/sink.js';

type Log = Record<string, unknown>;

/**
 * A daemon with two upstreams: `modern` (8BITMIME and SMTPUTF8) takes everything but @old.test, which goes to
 * `old` (neither).
 */
async function relay(t: TestContext): Promise<{ relay: InProcessDaemon; modern: Sink; old: Sink }> {
  const modern = await startSink();
  t.after(() => modern.close());
  const old = await startSink({ eightBitMime: false, smtputf8: false });
  t.after(() => old.close());
  const dir = await tempDir();
  t.after(() => dir.remove());
  const smtp = (sink: Sink) => ({ type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' });
  const config = await testConfig({
    dir: dir.path,
    upstreams: { modern: smtp(modern), old: smtp(old) },
    extra: { routing: { default: 'modern', routes: [{ name: 'old', match: { recipient: '@old.test' }, upstream: 'old' }] } },
  });
  const daemon = await startInProcess(config);
  t.after(() => daemon.stop());
  return { relay: daemon, modern, old };
}

const removed = (queueId: string) => (l: Log) => l.event === 'queue.removed' && l.queueId === queueId;
const delivery = (queueId: string, recipient: string) => (l: Log) => l.event === 'delivery' && l.queueId === queueId && l.recipient === recipient;

function byMessageId(sink: Sink, messageId: string): SinkMessage {
  const found = sink.messages.find((m) => m.messageId === messageId);
  assert.ok(found, `${messageId} reached the sink`);
  return found;
}

const EIGHT_BIT = Buffer.from('From: app@origin.test\r\nSubject: Gruss\r\nMessage-ID: <8bit@origin.test>\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n');
const ASCII = 'From: app@origin.test\r\nSubject: plain\r\nMessage-ID: <ascii@origin.test>\r\n\r\nhello\r\n';

test('an 8-bit message goes out with BODY=8BITMIME where the upstream offers 8BITMIME and as it is where not; an ASCII one with neither BODY nor SMTPUTF8', async (t) => {
  const { relay: daemon, modern, old } = await relay(t);
  const eightBit = await sendRaw(daemon, 'app@origin.test', ['bob@new.test', 'carl@old.test'], EIGHT_BIT);
  const ascii = await sendRaw(daemon, 'app@origin.test', ['bob@new.test'], ASCII);
  await daemon.waitForLog(removed(eightBit));
  await daemon.waitForLog(removed(ascii));

  const toModern = byMessageId(modern, '<8bit@origin.test>');
  assert.deepEqual(toModern.mailParameters, { BODY: '8BITMIME' });
  assert.ok(toModern.raw.includes(Buffer.from('Grüße aus Köln')), 'the 8-bit body as it was sent');
  // Converted to nothing, refused by nobody: what Postfix does with 8-bit mail it does not convert.
  const toOld = byMessageId(old, '<8bit@origin.test>');
  assert.deepEqual(toOld.mailParameters, {});
  assert.ok(toOld.raw.includes(Buffer.from('Grüße aus Köln')));
  assert.deepEqual(byMessageId(modern, '<ascii@origin.test>').mailParameters, {});
});

test('a UTF-8 local part goes out with SMTPUTF8 where the upstream offers it, and is bounced with 553 5.6.7 where not, never sent as raw UTF-8', async (t) => {
  const { relay: daemon, modern, old } = await relay(t);
  const queueId = await sendRaw(daemon, 'app@origin.test', ['jörg@new.test', 'jürgen@old.test'], ASCII);
  await daemon.waitForLog(removed(queueId));

  const sent = byMessageId(modern, '<ascii@origin.test>');
  assert.deepEqual(sent.wireRecipients, ['jörg@new.test']);
  assert.equal(sent.mailParameters.SMTPUTF8, true);

  const bounced = await daemon.waitForLog(delivery(queueId, 'jürgen@old.test'));
  assert.equal(bounced.result, 'bounced');
  assert.match(String(bounced.reply), /^553 5\.6\.7 SMTPUTF8 is required for the UTF-8 address <jürgen@old\.test>/);
  assert.equal(old.messages.length, 0, 'nothing reached the upstream without SMTPUTF8');
  const dsn = await modern.waitForRecipient('app@origin.test');
  assert.match(dsn.raw.toString('utf8'), /^Status: 5\.6\.7\r$/m);

  // The refusal left the pooled connection to `old` usable.
  const next = await sendRaw(daemon, 'app@origin.test', ['carl@old.test'], ASCII);
  assert.equal((await daemon.waitForLog(delivery(next, 'carl@old.test'))).result, 'delivered');
});

test('a message the client sent with SMTPUTF8 and UTF-8 header fields is bounced with 554 5.6.9 by an upstream without SMTPUTF8; sent without SMTPUTF8, it goes through as before', async (t) => {
  const { relay: daemon, old } = await relay(t);
  const send = (mailFrom: string, messageId: string) =>
    smtpDialog(daemon.port('relay'), ['EHLO client.test', mailFrom, 'RCPT TO:<carl@old.test>', 'DATA', `RAW:Subject: Grüße\r\nMessage-ID: ${messageId}\r\n\r\nbody\r\n.\r\n`, 'QUIT']);
  const declared = await send('MAIL FROM:<app@origin.test> SMTPUTF8', '<declared@origin.test>');
  assert.deepEqual(smtpReplyCodes(declared).slice(0, 6), [220, 250, 250, 250, 354, 250]);
  const queueId = /queued as ([0-9A-Z]{22})/.exec(declared)![1]!;
  const bounced = await daemon.waitForLog(delivery(queueId, 'carl@old.test'));
  assert.equal(bounced.result, 'bounced');
  assert.match(String(bounced.reply), /^554 5\.6\.9 /);

  // Raw UTF-8 in headers without SMTPUTF8 is long-standing practice; Postfix passes it on too.
  await send('MAIL FROM:<app@origin.test>', '<undeclared@origin.test>');
  await old.waitForMessages(1);
  assert.ok(byMessageId(old, '<undeclared@origin.test>').raw.includes(Buffer.from('Subject: Grüße')));

  // SMTPUTF8 on a MAIL that was refused (555 for its other parameter) does not carry over to the next MAIL.
  const refusedFirst = await smtpDialog(daemon.port('relay'), [
    'EHLO client.test',
    'MAIL FROM:<app@origin.test> SMTPUTF8 FOO=bar',
    'MAIL FROM:<app@origin.test>',
    'RCPT TO:<carl@old.test>',
    'DATA',
    'RAW:Subject: Grüße\r\nMessage-ID: <refused-first@origin.test>\r\n\r\nbody\r\n.\r\n',
    'QUIT',
  ]);
  assert.deepEqual(smtpReplyCodes(refusedFirst).slice(0, 7), [220, 250, 555, 250, 250, 354, 250]);
  await old.waitForMessages(2);
  assert.ok(byMessageId(old, '<refused-first@origin.test>').raw.includes(Buffer.from('Subject: Grüße')));
});
