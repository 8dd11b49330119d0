/**
 * Through smarthost into the local Mailjet Send API fake (test/fakes/mailjet.ts): a multipart message with an
 * inline image and an attachment arrives with every part, recipient and header where Mailjet expects it; a 429
 * defers for Retry-After and then delivers; a message over the Send API's limits goes through Mailjet's SMTP
 * relay (the mailjet-smtp preset, here a local sink requiring the API keys) or, without a fallback, bounces.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { startMailjetFake, type MailjetFake } from '../fakes/mailjet.js';
import { type InProcessDaemon, sendRaw, startInProcess, tempDir, testConfig } from '../helpers/daemon.js';
import { compose, PDF, PNG, richMessage } from '../helpers/mime.js';
import { startSink, type Sink } from '../helpers/sink.js';

type Log = Record<string, unknown>;

const KEYS = { apiKey: 'mj-public', secretKey: 'mj-secret' };

async function mailjetFake(t: TestContext): Promise<MailjetFake> {
  const fake = await startMailjetFake(KEYS);
  t.after(() => fake.close());
  return fake;
}

async function relay(t: TestContext, upstreams: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<InProcessDaemon> {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const daemon = await startInProcess(await testConfig({ dir: dir.path, upstreams, defaultUpstream: 'mj', retry: { initialDelay: '200ms', maxDelay: '1s' }, extra }));
  t.after(() => daemon.stop());
  return daemon;
}

function mailjetUpstream(fake: MailjetFake, fields: Record<string, unknown> = {}): Record<string, unknown> {
  return { type: 'mailjet', ...KEYS, baseUrl: fake.baseUrl, batch: { window: '0ms' }, ...fields };
}


const delivery = (queueId: string, result: string, recipient?: string) => (l: Log) =>
  l.event === 'delivery' && l.queueId === queueId && l.result === result && (recipient === undefined || l.recipient === recipient);

test('a multipart message with an inline image and an attachment arrives at Mailjet with every part, recipient and header', async (t) => {
  const fake = await mailjetFake(t);
  const daemon = await relay(t, { mj: mailjetUpstream(fake) }, { tags: { header: 'X-Tag', allowed: ['invoice', 'scan'] } });
  const raw = await compose(richMessage());
  // bob is in the To header but not in this envelope; dave is in no header (a Bcc).
  const recipients = ['alice@dest.test', 'carol@dest.test', 'dave@dest.test'];
  const queueId = await sendRaw(daemon, 'scans@contoso.test', recipients, raw);
  for (const r of recipients) await daemon.waitForLog(delivery(queueId, 'delivered', r));

  const [accepted] = await fake.waitForAccepted(1);
  assert.equal(fake.calls.length, 1);
  assert.equal(fake.calls[0]!.apiKey, KEYS.apiKey);
  const m = accepted!.message as Record<string, any>;
  assert.deepEqual(m.From, { Email: 'scans@contoso.test', Name: 'Scanner Floor 2' });
  assert.deepEqual(m.To, [{ Email: 'alice@dest.test', Name: 'Alice Example' }]);
  assert.deepEqual(m.Cc, [{ Email: 'carol@dest.test', Name: 'Carol' }]);
  assert.deepEqual(m.Bcc, [{ Email: 'dave@dest.test' }]);
  assert.deepEqual(m.ReplyTo, { Email: 'helpdesk@contoso.test' });
  assert.equal(m.Subject, 'Scan ready: Größe A4');
  assert.equal(m.TextPart.trim(), 'Your scan is attached.\nLogo below.');
  assert.equal(m.HTMLPart.trim(), '<p>Your scan is attached.</p><img src="cid:logo@contoso.test" alt="logo">');
  assert.equal(m.InlinedAttachments.length, 1);
  assert.equal(m.InlinedAttachments[0].ContentID, 'logo@contoso.test');
  assert.equal(m.InlinedAttachments[0].Filename, 'logo.png');
  assert.deepEqual(Buffer.from(m.InlinedAttachments[0].Base64Content, 'base64'), PNG);
  assert.equal(m.Attachments.length, 1);
  assert.deepEqual([m.Attachments[0].ContentType, m.Attachments[0].Filename], ['application/pdf', 'scan-0001.pdf']);
  assert.deepEqual(Buffer.from(m.Attachments[0].Base64Content, 'base64'), PDF);
  assert.equal(m.Headers['X-Custom-Header'], 'custom value');
  assert.equal(m.Headers['X-Tag'], 'invoice');
  assert.equal(m.Headers['In-Reply-To'], '<thread-1@contoso.test>');
  assert.ok(!Object.keys(m.Headers).some((h) => /^(received|message-id|date)$/i.test(h)), 'headers Mailjet refuses are not sent');
  assert.equal(m.CustomID, queueId, 'the queue ID leads from Mailjet\'s events back to the queue');
  assert.equal(m.EventPayload, 'invoice', 'the tag header is carried as EventPayload');

  const reply = String((await daemon.waitForLog(delivery(queueId, 'delivered', 'dave@dest.test'))).reply);
  assert.match(reply, /^250 2\.0\.0 accepted by Mailjet \(MessageUUID [0-9a-f-]{36}, MessageID \d+\)$/);
});

test('a 429 defers for the Retry-After Mailjet asks for, then the message is delivered', async (t) => {
  const fake = await mailjetFake(t);
  fake.failNext(1, 429, { 'retry-after': '1' });
  const daemon = await relay(t, { mj: mailjetUpstream(fake) });
  const queueId = await sendRaw(daemon, 'app@origin.test', ['a@dest.test'], await compose({ from: 'app@origin.test', to: 'a@dest.test', subject: 'rate limited', text: 'x' }));

  const deferred = await daemon.waitForLog(delivery(queueId, 'deferred'));
  assert.match(String(deferred.reply), /^451 4\.7\.0 Mailjet rate limit reached \(HTTP 429\)/);
  const wait = Date.parse(String(deferred.nextAttemptAt)) - Date.parse(String(deferred.time));
  assert.ok(wait >= 900, `the retry waits for Retry-After (1 s), not the 200 ms backoff: ${wait} ms`);
  await daemon.waitForLog(delivery(queueId, 'delivered', 'a@dest.test'));
  assert.deepEqual(fake.calls.map((c) => c.status), [429, 200]);
  assert.equal(fake.accepted.length, 1);
  assert.ok(!daemon.logs().some((l) => l.event === 'bounce.queued'), 'no DSN');
});

async function keyedSink(t: TestContext): Promise<Sink> {
  const sink = await startSink({ auth: { user: KEYS.apiKey, pass: KEYS.secretKey } });
  t.after(() => sink.close());
  return sink;
}

test('a message over the Send API limits goes through the mailjet-smtp relay as is, X-MJ headers included', async (t) => {
  const fake = await mailjetFake(t);
  const sink = await keyedSink(t);
  const daemon = await relay(t, {
    mj: mailjetUpstream(fake, { smtpFallback: 'mjrelay' }),
    // The preset with its host pointed at the local sink; by default in-v3.mailjet.com:587 with STARTTLS.
    mjrelay: { type: 'mailjet-smtp', ...KEYS, host: '127.0.0.1', port: sink.port, security: 'none' },
  });
  const recipients = Array.from({ length: 51 }, (_, i) => `r${i}@dest.test`);
  const raw = await compose({ from: 'app@origin.test', to: recipients, subject: 'to many', text: 'x', headers: { 'X-MJ-CustomID': 'bulk-1' }, messageId: '<bulk-1@origin.test>' });
  const queueId = await sendRaw(daemon, 'app@origin.test', recipients, raw);

  const [message] = await sink.waitForMessages(1);
  assert.deepEqual(message!.recipients, recipients, 'all 51 recipients in one SMTP transaction');
  assert.equal(message!.messageId, '<bulk-1@origin.test>');
  assert.match(message!.raw.toString('latin1'), /^X-MJ-CustomID: bulk-1\r$/im, 'X-MJ-* headers pass through the relay untouched');
  for (const r of recipients) await daemon.waitForLog(delivery(queueId, 'delivered', r));
  assert.equal(fake.calls.length, 0, 'the Send API was not called');
});

test('a message larger than 15 MB of attachments take as MIME goes through the relay on its size alone, unread', async (t) => {
  const fake = await mailjetFake(t);
  const sink = await keyedSink(t);
  const daemon = await relay(t, {
    mj: mailjetUpstream(fake, { smtpFallback: 'mjrelay' }),
    mjrelay: { type: 'mailjet-smtp', ...KEYS, host: '127.0.0.1', port: sink.port, security: 'none' },
  });
  // 16 MB of attachment, about 22 MB as MIME: over the limit, which parsing would have found after holding it all.
  const raw = await compose({ from: 'scans@contoso.test', to: 'a@dest.test', subject: 'scan', text: 'x', attachments: [{ filename: 'scan.pdf', content: Buffer.alloc(16_000_000, 7) }] });
  const queueId = await sendRaw(daemon, 'scans@contoso.test', ['a@dest.test'], raw);

  const fallback = await daemon.waitForLog((l) => l.event === 'mailjet.fallback' && l.queueId === queueId);
  assert.match(String(fallback.reason), /^a message of \d+ bytes, over the 20526316 that 15000000 bytes of attachments \(Mailjet's Send API limit\) take as MIME$/, 'decided on the size, not on the parsed attachments');
  const [message] = await sink.waitForMessages(1);
  assert.deepEqual(message!.recipients, ['a@dest.test']);
  assert.ok(message!.raw.length >= raw.length, 'the whole message went through the relay');
  await daemon.waitForLog(delivery(queueId, 'delivered', 'a@dest.test'));
  assert.equal(fake.calls.length, 0, 'the Send API was not called');
});

test('without a fallback, a message over the limits bounces with the reason, and the DSN itself goes through Mailjet', async (t) => {
  const fake = await mailjetFake(t);
  const daemon = await relay(t, { mj: mailjetUpstream(fake) });
  const queueId = await sendRaw(daemon, 'app@origin.test', ['a@dest.test'], await compose({ from: 'app@origin.test', to: 'a@dest.test', subject: 'S'.repeat(300), text: 'x' }));

  const bounced = await daemon.waitForLog(delivery(queueId, 'bounced', 'a@dest.test'));
  assert.match(String(bounced.reply), /^550 5\.6\.0 message exceeds a limit of Mailjet's Send API \(a subject of 300 characters, Mailjet's Send API takes at most 255\) and upstream mj has no smtpFallback$/);
  const { bounceId } = await daemon.waitForLog((l) => l.event === 'bounce.queued' && l.queueId === queueId);
  await daemon.waitForLog(delivery(String(bounceId), 'delivered', 'app@origin.test'));
  const [dsn] = await fake.waitForAccepted(1);
  const m = dsn!.message as Record<string, any>;
  assert.deepEqual(m.To, [{ Email: 'app@origin.test' }], 'the DSN goes to the envelope sender');
  assert.match(m.TextPart, /subject of 300 characters/, 'and explains why');
});
