/**
 * The mailjet upstream against the local Send API fake, without a daemon: batching of concurrent deliveries
 * into one call, per-message and per-recipient outcomes, credentials that defer and alert (once), 429 with
 * Retry-After, sandbox mode, and the fallback for what the Send API cannot take.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log.js';
import { SmtpError } from '../../src/smtp-error.js';
import { postSend } from '../../src/upstreams/mailjet/api.js';
import type { MailjetUpstreamConfig } from '../../src/upstreams/mailjet/config.js';
import { MailjetUpstream } from '../../src/upstreams/mailjet/mailjet.js';
import type { DeliveryRequest, RecipientOutcome, Upstream } from '../../src/upstreams/upstream.js';
import { startMailjetFake, type MailjetFake } from '../fakes/mailjet.js';
import { freePort } from '../helpers/net.js';
import { compose, deliveryRequest, richMessage } from '../helpers/mime.js';

type Log = Record<string, unknown>;

/** A mailjet upstream config as the schema produces it. */
function mailjetConfig(fields: Record<string, unknown>): MailjetUpstreamConfig {
  const yaml = [
    'spool: { dir: /tmp/unused }',
    'listeners: [{ name: relay, role: relay, port: 2525 }]',
    `upstreams: { mj: ${JSON.stringify({ type: 'mailjet', apiKey: 'mj-public', secretKey: 'mj-secret', ...fields })} }`,
    'routing: { default: mj }',
  ].join('\n');
  const upstream = parseConfig(yaml).upstreams.mj;
  assert.equal(upstream?.type, 'mailjet');
  return upstream as MailjetUpstreamConfig;
}

function capturedLog(): { log: ReturnType<typeof createLogger>; lines: Log[] } {
  const lines: Log[] = [];
  const sink = new PassThrough();
  sink.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as Log);
  });
  return { log: createLogger('debug', sink), lines };
}

async function fakeFor(t: TestContext): Promise<MailjetFake> {
  const fake = await startMailjetFake();
  t.after(() => fake.close());
  return fake;
}

function upstreamFor(t: TestContext, fake: MailjetFake, fields: Record<string, unknown> = {}, options: ConstructorParameters<typeof MailjetUpstream>[2] = {}): MailjetUpstream {
  const upstream = new MailjetUpstream('mj', mailjetConfig({ baseUrl: fake.baseUrl, batch: { window: 0 }, ...fields }), options);
  t.after(() => upstream.close());
  return upstream;
}

function failed(outcome: RecipientOutcome | undefined): SmtpError {
  assert.ok(outcome && !outcome.delivered, `expected a failed outcome, got ${JSON.stringify(outcome)}`);
  return outcome.error;
}

test('concurrent deliveries share one Send API call and each gets its own outcomes', async (t) => {
  const fake = await fakeFor(t);
  // Flushed when the third delivery arrives: no waiting on the window.
  const upstream = upstreamFor(t, fake, { batch: { maxMessages: 3, window: '1m' } });
  const raws = await Promise.all(['one', 'two', 'three'].map((s) => compose({ from: 'app@origin.test', to: `${s}@dest.test`, subject: s, text: `body ${s}` })));
  const results = await Promise.all(raws.map((raw, i) => upstream.deliver(deliveryRequest(raw, [`${['one', 'two', 'three'][i]}@dest.test`], { queueId: `Q${i}` }))));

  assert.equal(fake.calls.length, 1, 'one call for three deliveries');
  assert.deepEqual(fake.calls[0]!.messages.map((m) => m.CustomID), ['Q0', 'Q1', 'Q2']);
  assert.deepEqual(
    results.map((r) => r.map((o) => [o.recipient, o.delivered])),
    [[['one@dest.test', true]], [['two@dest.test', true]], [['three@dest.test', true]]],
  );
  for (const [i, r] of results.entries()) {
    assert.ok(r[0]!.delivered);
    assert.match(r[0]!.reply, /^250 2\.0\.0 accepted by Mailjet \(MessageUUID [0-9a-f-]{36}, MessageID \d+\)$/);
    assert.equal(fake.accepted[i]!.message.Subject, ['one', 'two', 'three'][i]);
  }
});

test('a recipient Mailjet refuses bounces alone; the message\'s other recipients are deferred and go again without it', async (t) => {
  const fake = await fakeFor(t);
  fake.refuseRecipient('broken@dest.test', { code: 'mj-0013', message: '"broken@dest.test" is an invalid email address.' });
  const upstream = upstreamFor(t, fake);
  const raw = await compose({ from: 'app@origin.test', to: ['ok@dest.test', 'broken@dest.test'], subject: 'x', text: 'y' });
  const [ok, broken] = await upstream.deliver(deliveryRequest(raw, ['ok@dest.test', 'broken@dest.test']));
  assert.match(failed(broken).reply, /^550 5\.1\.3 Mailjet refused an address as invalid: mj-0013 "broken@dest\.test" is an invalid email address\. \(To\[1\]\.Email\)$/);
  const deferred = failed(ok);
  assert.equal(deferred.temporary, true);
  assert.match(deferred.message, /another recipient/);
  assert.equal(fake.accepted.length, 0, 'Mailjet sent nothing');

  const [again] = await upstream.deliver(deliveryRequest(raw, ['ok@dest.test']));
  assert.equal(again?.delivered, true, 'the retry without the refused recipient is accepted');
});

test('wrong keys defer every recipient with 4.7.0 and raise one alert, not one per call; a success clears it', async (t) => {
  const fake = await fakeFor(t);
  const { log, lines } = capturedLog();
  const upstream = upstreamFor(t, fake, { secretKey: 'wrong' }, { log });
  const raw = await compose({ from: 'app@origin.test', to: 'a@dest.test', subject: 'x', text: 'y' });
  for (let i = 0; i < 2; i++) {
    const [outcome] = await upstream.deliver(deliveryRequest(raw, ['a@dest.test']));
    const error = failed(outcome);
    assert.equal(error.reply.slice(0, 9), '451 4.7.0');
    assert.match(error.message, /mj-0015/);
  }
  const alerts = lines.filter((l) => l.event === 'upstream.alert');
  assert.equal(alerts.length, 1, 'the same failure is alerted once');
  assert.equal(alerts[0]!.level, 'error');
  assert.equal(alerts[0]!.upstream, 'mj');
  assert.ok(!JSON.stringify(lines).includes('wrong'), 'the secret key is never logged');
});

test('a suspended key (mj-0001) defers and alerts', async (t) => {
  const fake = await fakeFor(t);
  fake.suspended = true;
  const { log, lines } = capturedLog();
  const upstream = upstreamFor(t, fake, {}, { log });
  const [outcome] = await upstream.deliver(deliveryRequest(await compose({ from: 'a@o.test', to: 'a@dest.test', subject: 'x', text: 'y' }), ['a@dest.test']));
  assert.match(failed(outcome).reply, /^451 4\.7\.0 Mailjet API key is suspended: mj-0001 /);
  assert.equal(lines.filter((l) => l.event === 'upstream.alert').length, 1);
});

test('429 defers with the Retry-After Mailjet gave; 503 defers; both without an alert', async (t) => {
  const fake = await fakeFor(t);
  const { log, lines } = capturedLog();
  const upstream = upstreamFor(t, fake, {}, { log });
  const raw = await compose({ from: 'a@o.test', to: 'a@dest.test', subject: 'x', text: 'y' });
  fake.failNext(1, 429, { 'retry-after': '7' });
  fake.failNext(1, 503);
  const limited = failed((await upstream.deliver(deliveryRequest(raw, ['a@dest.test'])))[0]);
  assert.deepEqual([limited.code, limited.enhanced, limited.retryAfterMs], [451, '4.7.0', 7000]);
  const unavailable = failed((await upstream.deliver(deliveryRequest(raw, ['a@dest.test'])))[0]);
  assert.deepEqual([unavailable.temporary, unavailable.retryAfterMs], [true, undefined]);
  assert.match(unavailable.message, /HTTP 503/);
  assert.equal(lines.filter((l) => l.event === 'upstream.alert').length, 0);
  assert.equal((await upstream.deliver(deliveryRequest(raw, ['a@dest.test'])))[0]?.delivered, true);
});

test('sandbox mode: Mailjet validates, delivers nothing, and the reply says so', async (t) => {
  const fake = await fakeFor(t);
  const upstream = upstreamFor(t, fake, { sandboxMode: true });
  const [outcome] = await upstream.deliver(deliveryRequest(await compose(richMessage()), ['alice@dest.test']));
  assert.ok(outcome?.delivered);
  assert.match(outcome.reply, /sandbox mode, not delivered/);
  assert.equal(fake.calls[0]!.sandbox, true);
  assert.equal(fake.accepted.length, 0);
});

test('Mailjet unreachable: every recipient deferred with 4.4.1', async (t) => {
  const port = await freePort();
  const upstream = new MailjetUpstream('mj', mailjetConfig({ baseUrl: `http://127.0.0.1:${port}` }));
  t.after(() => upstream.close());
  const [outcome] = await upstream.deliver(deliveryRequest(await compose({ from: 'a@o.test', to: 'a@dest.test', subject: 'x', text: 'y' }), ['a@dest.test']));
  assert.match(failed(outcome).reply, /^451 4\.4\.1 cannot reach Mailjet at 127\.0\.0\.1:\d+: ECONNREFUSED/);
});

test('a Bcc-only message goes as its per-recipient copies in calls of at most batch.maxBytes; a failed call defers the copies not sent yet', async (t) => {
  const fake = await fakeFor(t);
  // Each copy carries the 400 kB attachment (533 kB as base64): two would not fit into 1 MB.
  const upstream = upstreamFor(t, fake, { batch: { window: 0, maxBytes: '1MB' } });
  const raw = await compose({ from: 'scans@contoso.test', to: 'undisclosed-recipients:;', subject: 'scan', text: 'x', attachments: [{ filename: 'scan.pdf', content: Buffer.alloc(400_000, 7) }] });
  const recipients = ['r0@dest.test', 'r1@dest.test', 'r2@dest.test'];

  const outcomes = await upstream.deliver(deliveryRequest(raw, recipients));
  assert.deepEqual(outcomes.map((o) => [o.recipient, o.delivered]), recipients.map((r) => [r, true]));
  assert.deepEqual(fake.calls.map((c) => c.messages.map((m) => (m.To as { Email: string }[])[0]!.Email)), recipients.map((r) => [r]), 'one copy per call');
  for (const call of fake.calls) assert.ok(Buffer.byteLength(JSON.stringify({ Messages: call.messages })) <= 1_000_000, 'no call over batch.maxBytes');

  fake.failNext(1, 503);
  const deferred = await upstream.deliver(deliveryRequest(raw, recipients));
  for (const outcome of deferred) assert.match(failed(outcome).reply, /^451 .*HTTP 503/);
  assert.equal(fake.calls.length, recipients.length + 1, 'the copies after the failed call were not sent');
});

test('a Send API request too large to build is refused for good (552), not deferred to fail the same way again', async (t) => {
  const fake = await fakeFor(t);
  const config = mailjetConfig({ baseUrl: fake.baseUrl });
  // What JSON.stringify throws past V8's longest string, without building one.
  const unbuildable = { From: { Email: 'a@o.test' }, To: [{ Email: 'b@dest.test' }], toJSON: () => { throw new RangeError('Invalid string length'); } };
  const answer = await postSend(config, [unbuildable]);
  assert.ok('error' in answer, 'an error for the call');
  assert.match(answer.error.reply, /^552 5\.3\.4 message too large for a Send API request: Invalid string length$/);
  assert.equal(fake.calls.length, 0, 'nothing was sent');
});

/** An upstream that records what it was asked to deliver. */
function recordingUpstream(): Upstream & { requests: DeliveryRequest[] } {
  const requests: DeliveryRequest[] = [];
  return {
    name: 'relay',
    requests,
    async deliver(request) {
      requests.push(request);
      return request.recipients.map((recipient) => ({ recipient, delivered: true, reply: '250 2.0.0 via relay' }));
    },
    async close() {},
  };
}

test('over a Send API limit: through the SMTP fallback when there is one, else bounced with the reason; Mailjet is not called', async (t) => {
  const fake = await fakeFor(t);
  const raw = await compose({ from: 'a@o.test', to: 'a@dest.test', subject: 'S'.repeat(300), text: 'y' });

  const fallback = recordingUpstream();
  const withFallback = upstreamFor(t, fake, {}, { fallback });
  const [viaRelay] = await withFallback.deliver(deliveryRequest(raw, ['a@dest.test']));
  assert.deepEqual(viaRelay, { recipient: 'a@dest.test', delivered: true, reply: '250 2.0.0 via relay' });
  assert.equal(fallback.requests.length, 1);

  const withoutFallback = upstreamFor(t, fake);
  const error = failed((await withoutFallback.deliver(deliveryRequest(raw, ['a@dest.test'])))[0]);
  assert.match(error.reply, /^550 5\.6\.0 message exceeds a limit of Mailjet's Send API \(a subject of 300 characters, Mailjet's Send API takes at most 255\) and upstream mj has no smtpFallback$/);
  assert.equal(fake.calls.length, 0, 'no call was made');
});

test('a signed message goes through the fallback untouched; without one it still goes through the Send API', async (t) => {
  const fake = await fakeFor(t);
  const raw = Buffer.from(
    'From: a@o.test\r\nTo: b@dest.test\r\nSubject: signed\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--b1\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\r\n--b1--\r\n',
  );
  const fallback = recordingUpstream();
  await upstreamFor(t, fake, {}, { fallback }).deliver(deliveryRequest(raw, ['b@dest.test']));
  assert.equal(fallback.requests.length, 1);
  assert.equal(fake.calls.length, 0);
  const [outcome] = await upstreamFor(t, fake).deliver(deliveryRequest(raw, ['b@dest.test']));
  assert.equal(outcome?.delivered, true);
  assert.equal(fake.calls.length, 1);
});
