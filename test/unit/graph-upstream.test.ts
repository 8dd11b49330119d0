/**
 * The graph upstream against the Graph fake, with a static token source: MIME and draft paths, recipients,
 * byte-identical attachments, throttling, Send As, 401 refresh, per-mailbox concurrency, probe.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { simpleParser } from 'mailparser';
import type { SmtpError } from '../../src/smtp-error.js';
import type { GraphUpstreamConfig } from '../../src/upstreams/graph/config.js';
import { GraphUpstream } from '../../src/upstreams/graph/graph.js';
import type { TokenSource } from '../../src/upstreams/oauth/token-source.js';
import type { ProbeStep, RecipientOutcome } from '../../src/upstreams/upstream.js';
import { FAKE_REQUEST_LIMIT, startGraphFake, type GraphFake, type GraphFakeOptions } from '../fakes/graph.js';
import { buildMessage, jwtWithRoles, requestFor, scanBytes, sha256, StaticTokens } from '../helpers/graph-mail.js';
import { freePort } from '../helpers/net.js';

const MAILBOX = 'scans@contoso.test';
const TOKEN = 'valid-token';

async function fakeFor(t: TestContext, options: GraphFakeOptions = { tokens: [TOKEN] }): Promise<GraphFake> {
  const fake = await startGraphFake(options);
  t.after(() => fake.close());
  return fake;
}

function upstreamFor(t: TestContext, baseUrl: string, tokens: TokenSource = new StaticTokens(TOKEN), config: Partial<GraphUpstreamConfig> = {}): GraphUpstream {
  const upstream = new GraphUpstream(
    'graph',
    { type: 'graph', app: 'test', mailbox: MAILBOX, saveToSentItems: true, maxConcurrentPerMailbox: 4, maxConcurrency: 16, timeout: 10_000, graphBaseUrl: baseUrl, ...config },
    { tokens },
  );
  t.after(() => upstream.close());
  return upstream;
}

function failure(o: RecipientOutcome | undefined): SmtpError {
  assert.ok(o, 'an outcome');
  if (o.delivered) assert.fail(`${o.recipient} was delivered: ${o.reply}`);
  return o.error;
}

function assertAllDelivered(outcomes: RecipientOutcome[], recipients: string[]): void {
  assert.deepEqual(
    outcomes.map((o) => [o.recipient, o.delivered ? 'delivered' : o.error.reply]),
    recipients.map((r) => [r, 'delivered']),
  );
}

test('a small message goes as base64 MIME to sendMail: To kept, Bcc-only recipient added, other route dropped, body untouched', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl);
  const raw = await buildMessage({ to: ['alice@dest.test', 'carol@elsewhere.test'], cc: 'bob@dest.test', text: 'scan attached\r\n', attachments: [{ filename: 'a.pdf', content: scanBytes(50_000) }] });
  const envelope = ['alice@dest.test', 'bob@dest.test', 'hidden@dest.test'];
  assertAllDelivered(await graph.deliver(requestFor(raw, envelope)), envelope);

  assert.equal(fake.deliveries.length, 1);
  const d = fake.deliveries[0]!;
  assert.equal(d.via, 'mime');
  assert.equal(d.mailbox, MAILBOX);
  assert.deepEqual({ to: d.to, cc: d.cc, bcc: d.bcc }, { to: ['alice@dest.test'], cc: ['bob@dest.test'], bcc: ['hidden@dest.test'] });
  assert.equal(d.savedToSentItems, true);
  const bodyAt = (m: Buffer) => m.subarray(m.indexOf('\r\n\r\n') + 4);
  assert.ok(bodyAt(d.mime!).equals(bodyAt(raw)), 'the body bytes are the spooled ones');
  const sent = fake.requests.find((r) => r.path.endsWith('/sendMail'))!;
  assert.equal(sent.path, `/v1.0/users/${encodeURIComponent(MAILBOX)}/sendMail`);
  assert.ok(sent.authorization);
});

test('saveToSentItems false: a MIME draft marked delete-after-submit, then sent; no draft left behind', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl, undefined, { saveToSentItems: false });
  const raw = await buildMessage({ to: 'alice@dest.test', text: 'x' });
  assertAllDelivered(await graph.deliver(requestFor(raw, ['alice@dest.test'])), ['alice@dest.test']);
  assert.equal(fake.deliveries[0]!.via, 'mime-draft');
  assert.equal(fake.deliveries[0]!.savedToSentItems, false);
  assert.deepEqual(fake.deliveries[0]!.recipients, ['alice@dest.test']);
  assert.equal(fake.drafts.size, 0);
});

test('a large message goes through a draft: small attachments in it, large ones by upload session, all byte-identical', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl, undefined, { saveToSentItems: false });
  const big = scanBytes(9 * 1024 * 1024 + 123);
  const mid = scanBytes(3_050_000);
  const small = scanBytes(200_000);
  const logo = scanBytes(30_000);
  const raw = await buildMessage({
    to: ['alice@dest.test', 'carol@elsewhere.test'],
    subject: 'Größerer Scan',
    html: '<p>Scan</p><img src="cid:logo@contoso">',
    headers: { 'X-Scanner-Id': 'floor-2', 'In-Reply-To': '<x@y>' },
    messageId: '<big-1@contoso.test>',
    attachments: [
      { filename: 'scan.pdf', content: big, contentType: 'application/pdf' },
      { filename: 'mid.pdf', content: mid },
      { filename: 'small.txt', content: small, contentType: 'text/plain' },
      { filename: 'logo.png', content: logo, contentType: 'image/png', cid: 'logo@contoso' },
    ],
  });
  const req = requestFor(raw, ['alice@dest.test', 'hidden@dest.test']);
  assertAllDelivered(await graph.deliver(req), ['alice@dest.test', 'hidden@dest.test']);

  const d = fake.deliveries[0]!;
  assert.equal(d.via, 'draft');
  assert.deepEqual({ to: d.to, cc: d.cc, bcc: d.bcc }, { to: ['alice@dest.test'], cc: [], bcc: ['hidden@dest.test'] });
  assert.equal(d.subject, 'Größerer Scan');
  assert.equal(d.savedToSentItems, false);
  assert.equal((d.message!.body as { contentType: string }).contentType, 'html');
  assert.equal(d.message!.internetMessageId, '<big-1@contoso.test>');
  const custom = d.message!.internetMessageHeaders as { name: string; value: string }[];
  assert.deepEqual(custom.map((h) => [h.name.toLowerCase(), h.value]), [['x-scanner-id', 'floor-2']], 'x- headers only (no In-Reply-To)');
  const byName = new Map(d.attachments.map((a) => [a.name, a]));
  assert.equal(sha256(byName.get('scan.pdf')!.content), sha256(big));
  assert.equal(byName.get('scan.pdf')!.via, 'upload');
  assert.equal(byName.get('scan.pdf')!.contentType, 'application/pdf');
  assert.equal(sha256(byName.get('mid.pdf')!.content), sha256(mid));
  assert.equal(byName.get('mid.pdf')!.via, 'upload');
  assert.equal(sha256(byName.get('small.txt')!.content), sha256(small));
  assert.equal(byName.get('small.txt')!.via, 'draft');
  assert.deepEqual([byName.get('logo.png')!.isInline, byName.get('logo.png')!.contentId], [true, 'logo@contoso']);
  assert.equal(sha256(byName.get('logo.png')!.content), sha256(logo));
  assert.equal(byName.get('scan.pdf')!.isInline, false);

  const puts = fake.requests.filter((r) => r.method === 'PUT');
  assert.equal(puts.length, Math.ceil(big.length / (12 * 320 * 1024)) + 1, 'scan.pdf in ranges, mid.pdf in one');
  assert.ok(puts.every((p) => !p.authorization), 'upload URLs get no Authorization header');
  assert.equal(fake.oversizedRequests, 0);
  assert.ok(fake.maxRequestBytes <= FAKE_REQUEST_LIMIT, `largest request ${fake.maxRequestBytes}`);
  assert.equal(fake.drafts.size, 0, 'the draft was sent, none left');
  assert.equal(req.opened, 2, 'read twice: plan, then upload (never the MIME path for a message this size)');
});

test('attachments near 3,000,000 bytes: POSTed while the whole request fits 4,000,000 bytes, long names counted; just under 3,000,000 by upload session', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl);
  // 2,999,800 bytes are 3,999,736 in base64: with a short name the POST fits, with a long one it does not.
  const fits = scanBytes(2_999_800);
  const longName = `${'Prüfbericht Größenänderung '.repeat(12)}.pdf`;
  const named = scanBytes(2_999_800);
  // 2,999,990 bytes are 3,999,988 in base64: no JSON around them fits.
  const near = scanBytes(2_999_990);
  const raw = await buildMessage({
    to: 'alice@dest.test',
    text: 'three scans',
    attachments: [
      { filename: 'fits.pdf', content: fits },
      { filename: longName, content: named },
      { filename: 'near.pdf', content: near },
    ],
  });
  assertAllDelivered(await graph.deliver(requestFor(raw, ['alice@dest.test'])), ['alice@dest.test']);

  const byName = new Map(fake.deliveries[0]!.attachments.map((a) => [a.name, a]));
  assert.deepEqual(
    [...byName].map(([name, a]) => [name, a.via, sha256(a.content)]),
    [
      ['fits.pdf', 'post', sha256(fits)],
      [longName, 'upload', sha256(named)],
      ['near.pdf', 'upload', sha256(near)],
    ],
  );
  assert.equal(fake.oversizedRequests, 0, 'no request passed 4,000,000 bytes (413)');
  const post = fake.requests.find((r) => r.method === 'POST' && r.path.endsWith('/attachments'))!;
  assert.ok(post.bodyBytes > 3_999_800, `fits.pdf's POST of ${post.bodyBytes} bytes is near the limit, not kept far below it`);
});

test('429 with Retry-After defers for that long; the draft of a failed large send is deleted', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl);
  const raw = await buildMessage({ to: 'alice@dest.test', attachments: [{ filename: 'scan.pdf', content: scanBytes(5_000_000) }] });
  // The draft is created, then its upload session is throttled.
  fake.throttle(MAILBOX, { after: 1, retryAfterSeconds: 17 });
  const error = failure((await graph.deliver(requestFor(raw, ['alice@dest.test'])))[0]);
  assert.deepEqual(fake.requests.map((r) => `${r.method} ${r.path.split('/').slice(-1)[0]} ${r.status}`).slice(0, 3), [
    'POST messages 201',
    'POST createUploadSession 429',
    `DELETE ${fake.requests[2]!.path.split('/').pop()} 204`,
  ]);
  assert.match(error.reply, /^451 4\.4\.5 Graph 429 ApplicationThrottled: Application is over its MailboxConcurrency limit\./);
  assert.equal(error.retryAfterMs, 17_000);
  assert.equal(fake.drafts.size, 0, 'the half-built draft was deleted');
  assert.equal(fake.deliveries.length, 0);
  // Once the mailbox is no longer throttled the retry goes through.
  assertAllDelivered(await graph.deliver(requestFor(raw, ['alice@dest.test'])), ['alice@dest.test']);
  assert.equal(fake.deliveries.length, 1);
});

test('503 with Retry-After defers; ErrorSendAsDenied bounces with Graph\'s text', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl);
  const raw = await buildMessage({ to: 'alice@dest.test', text: 'x' });
  fake.throttle(MAILBOX, { status: 503, retryAfterSeconds: 4 });
  const unavailable = failure((await graph.deliver(requestFor(raw, ['alice@dest.test'])))[0]);
  assert.match(unavailable.reply, /^451 4\.3\.2 Graph 503 /);
  assert.equal(unavailable.retryAfterMs, 4000);

  fake.denySendAs(MAILBOX);
  const outcomes = await graph.deliver(requestFor(raw, ['alice@dest.test', 'bob@dest.test']));
  for (const o of outcomes) {
    assert.ok(!o.delivered);
    assert.equal(o.error.temporary, false);
    assert.match(o.error.reply, /^550 5\.7\.60 Graph 403 ErrorSendAsDenied: The user account which was used to submit this request does not have the right to send mail/);
  }
  assert.equal(fake.deliveries.length, 0);
});

test('a 401 gets one forced token refresh and the request again; a second 401 defers', async (t) => {
  const fake = await fakeFor(t, { tokens: ['fresh-token'] });
  const raw = await buildMessage({ to: 'alice@dest.test', text: 'x' });

  const rotating = new StaticTokens('revoked-token', 'fresh-token');
  assertAllDelivered(await upstreamFor(t, fake.baseUrl, rotating).deliver(requestFor(raw, ['alice@dest.test'])), ['alice@dest.test']);
  assert.deepEqual(rotating.calls.map((c) => c.forceRefresh), [false, true]);
  assert.equal(rotating.calls[0]!.scope, `${new URL(fake.baseUrl).origin}/.default`);

  const broken = new StaticTokens('bad-token', 'still-bad');
  const before = fake.requests.length;
  const refused = failure((await upstreamFor(t, fake.baseUrl, broken).deliver(requestFor(raw, ['alice@dest.test'])))[0]);
  assert.match(refused.reply, /^451 4\.7\.0 Graph 401 InvalidAuthenticationToken/);
  assert.deepEqual(broken.calls.map((c) => c.forceRefresh), [false, true], 'refreshed once, not in a loop');
  assert.equal(fake.requests.length - before, 2);
});

test('at most maxConcurrentPerMailbox requests per mailbox; other mailboxes are not held up by it', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl, undefined, { mailbox: 'fromSender' });
  const raw = await buildMessage({ to: 'alice@dest.test', text: 'x' });
  const release = fake.hold();
  const busy = Array.from({ length: 7 }, () => graph.deliver(requestFor(raw, ['alice@dest.test'], 'busy@contoso.test')));
  const other = Array.from({ length: 2 }, () => graph.deliver(requestFor(raw, ['alice@dest.test'], 'other@contoso.test')));
  await fake.waitUntil(() => fake.inFlight('busy@contoso.test') === 4 && fake.inFlight('other@contoso.test') === 2, '4 + 2 requests in flight');
  // Give the upstream every chance to overshoot before the gate opens.
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(fake.inFlight('busy@contoso.test'), 4);
  release();
  for (const outcomes of await Promise.all([...busy, ...other])) assertAllDelivered(outcomes, ['alice@dest.test']);
  assert.equal(fake.maxInFlight.get('busy@contoso.test'), 4);
  assert.equal(fake.requests.filter((r) => r.status === 429).length, 0, 'the fake never had to refuse for concurrency');
  assert.deepEqual(fake.deliveries.filter((d) => d.mailbox === 'busy@contoso.test').length, 7);
});

test('mailbox fromSender sends from the envelope sender; a bounce (null sender) fails with an explanation', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl, undefined, { mailbox: 'fromSender' });
  const raw = await buildMessage({ to: 'alice@dest.test', text: 'x' });
  assertAllDelivered(await graph.deliver(requestFor(raw, ['alice@dest.test'], 'Printer@Contoso.test')), ['alice@dest.test']);
  assert.equal(fake.deliveries[0]!.mailbox, 'printer@contoso.test');
  const bounce = failure((await graph.deliver(requestFor(raw, ['alice@dest.test'], '')))[0]);
  assert.match(bounce.reply, /^550 5\.7\.1 .*fromSender/);
});

test('more than 500 recipients are sent as several messages of at most 500', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl);
  const recipients = Array.from({ length: 1001 }, (_, i) => `r${i}@dest.test`);
  const raw = await buildMessage({ to: 'list@dest.test', text: 'x' });
  assertAllDelivered(await graph.deliver(requestFor(raw, recipients)), recipients);
  assert.deepEqual(fake.deliveries.map((d) => d.recipients.length), [500, 500, 1]);
  assert.deepEqual(fake.deliveries.flatMap((d) => d.recipients), recipients);
});

test('Graph unreachable: every recipient deferred with 4.4.1', async (t) => {
  const graph = upstreamFor(t, `http://127.0.0.1:${await freePort()}/v1.0`);
  const raw = await buildMessage({ to: 'alice@dest.test', text: 'x' });
  const o = failure((await graph.deliver(requestFor(raw, ['alice@dest.test'])))[0]);
  assert.match(o.reply, /^451 4\.4\.1 cannot reach Graph: ECONNREFUSED/);
});

test('a message whose text alone is too large for one draft request bounces before anything is sent', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl);
  const raw = await buildMessage({ to: 'alice@dest.test', html: `<p>${'x'.repeat(4_200_000)}</p>` });
  const o = failure((await graph.deliver(requestFor(raw, ['alice@dest.test'])))[0]);
  assert.match(o.reply, /^552 5\.3\.4 the message text is too large for Graph/);
  assert.equal(fake.requests.length, 0, 'nothing was sent');
});

test('the MIME Graph receives parses to the same message', async (t) => {
  const fake = await fakeFor(t);
  const graph = upstreamFor(t, fake.baseUrl);
  const raw = await buildMessage({ to: 'alice@dest.test', subject: 'Ünïcode subject', text: 'hello', attachments: [{ filename: 'x.bin', content: scanBytes(1000) }] });
  await graph.deliver(requestFor(raw, ['alice@dest.test']));
  const parsed = await simpleParser(fake.deliveries[0]!.mime!);
  const original = await simpleParser(raw);
  assert.equal(parsed.subject, original.subject);
  assert.equal(parsed.text, original.text);
  assert.equal(sha256(parsed.attachments[0]!.content), sha256(original.attachments[0]!.content));
});

test('probe sends nothing: token, roles, an empty sendMail (400 means allowed), the drafts folder; each failure names its fix', async (t) => {
  const full = jwtWithRoles(['Mail.Send', 'Mail.ReadWrite']);
  const sendOnly = jwtWithRoles(['Mail.Send']);
  const fake = await fakeFor(t, {
    validateToken: (token) => (token === full ? { ok: true, roles: ['Mail.Send', 'Mail.ReadWrite'] } : token === sendOnly ? { ok: true, roles: ['Mail.Send'] } : { ok: false, reason: 'bad' }),
  });
  const run = async (tokens: TokenSource, config: Partial<GraphUpstreamConfig> = {}, sender?: string) => {
    const steps: ProbeStep[] = [];
    const ok = await upstreamFor(t, fake.baseUrl, tokens, config).probe(steps.push.bind(steps), sender ? { sender } : {});
    return { ok, steps };
  };

  const good = await run(new StaticTokens(full));
  assert.equal(good.ok, true);
  assert.deepEqual(good.steps.map((s) => [s.step, s.ok]), [['token', true], ['permissions', true], ['send', true], ['drafts', true]]);
  assert.match(good.steps[1]!.detail, /Mail\.Send, Mail\.ReadWrite$/);
  assert.equal(fake.deliveries.length, 0, 'the probe sent nothing');

  const limited = await run(new StaticTokens(sendOnly));
  assert.equal(limited.ok, false);
  assert.deepEqual(limited.steps.map((s) => [s.step, s.ok]), [['token', true], ['permissions', true], ['send', true], ['drafts', false]]);
  assert.match(limited.steps[1]!.detail, /Mail\.ReadWrite not among them/);
  assert.match(limited.steps[3]!.fix!, /Mail\.ReadWrite \(needed for messages over 3 MB.*admin consent/);

  fake.blockMailbox('blocked@contoso.test');
  const blocked = await run(new StaticTokens(full), { mailbox: 'blocked@contoso.test' });
  assert.equal(blocked.ok, false);
  assert.deepEqual(blocked.steps.map((s) => [s.step, s.ok]), [['token', true], ['permissions', true], ['send', false], ['drafts', false]]);
  assert.match(blocked.steps[2]!.detail, /ErrorAccessDenied/);
  assert.match(blocked.steps[2]!.fix!, /RBAC for Applications or an application access policy\) include blocked@contoso\.test/);

  const failing: TokenSource = { getToken: async () => Promise.reject(new Error('AADSTS7000215: Invalid client secret provided.')) };
  const noToken = await run(failing);
  assert.deepEqual(noToken.steps.map((s) => [s.step, s.ok]), [['token', false]]);
  assert.match(noToken.steps[0]!.fix!, /microsoft\.apps\.test/);

  const fromSender = await run(new StaticTokens(full), { mailbox: 'fromSender' }, 'printer@contoso.test');
  assert.equal(fromSender.ok, true);
  assert.match(fromSender.steps[2]!.detail, /may send as printer@contoso\.test/);
  const noSender = await run(new StaticTokens(full), { mailbox: 'fromSender' });
  assert.equal(noSender.ok, false);
  assert.match(noSender.steps.at(-1)!.fix!, /sender address/);
});
