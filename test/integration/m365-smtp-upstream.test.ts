/**
 * The m365-smtp upstream on its own, against the fake identity provider and the fake Exchange Online over
 * real loopback sockets: XOAUTH2 with app tokens, the sending mailbox, each Exchange reply row as it happens
 * on the wire (deferred, alerted with the fix, bounced), the per-mailbox connection limit, and a token that
 * dies while msal still trusts it.
 */
import assert from 'node:assert/strict';
import { PassThrough, Readable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log.js';
import { SmtpError } from '../../src/smtp-error.js';
import { createUpstream } from '../../src/upstreams/index.js';
import { MicrosoftApps } from '../../src/upstreams/oauth/msal.js';
import type { DeliveryRequest, ProbeStep, RecipientOutcome, Upstream } from '../../src/upstreams/upstream.js';
import { startFakeExchange, type ExchangeMailbox, type FakeExchange } from '../fakes/exchange-smtp.js';
import { FAILURES, startIdentityProvider, type FakeIdentityProvider } from '../fakes/identity-provider.js';

const TENANT = '72f988bf-86f1-41af-91ab-2d7cd011db47';
const CLIENT = '11111111-2222-3333-4444-555555555555';
const SECRET = 'Q~fake-secret-value';

interface World {
  idp: FakeIdentityProvider;
  exchange: FakeExchange;
  upstream: Upstream;
  logs: Record<string, unknown>[];
  logText(): string;
}

async function world(t: TestContext, o: { upstream?: Record<string, unknown>; mailboxes?: ExchangeMailbox[]; basicAuth?: boolean; messagesPerMinute?: number } = {}): Promise<World> {
  const idp = await startIdentityProvider();
  t.after(() => idp.close());
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: SECRET });
  const exchange = await startFakeExchange({
    idp,
    tenantId: TENANT,
    mailboxes: o.mailboxes ?? [{ address: 'scans@contoso.com', apps: [CLIENT], sendAs: ['printer@contoso.com'] }],
    ...(o.basicAuth !== undefined ? { basicAuth: o.basicAuth } : {}),
    ...(o.messagesPerMinute !== undefined ? { messagesPerMinute: o.messagesPerMinute } : {}),
  });
  t.after(() => exchange.close());
  const config = parseConfig(
    JSON.stringify({
      spool: { dir: '/tmp/unused' },
      listeners: [{ name: 'relay', role: 'relay', port: 2525 }],
      microsoft: { apps: { contoso: { tenantId: TENANT, clientId: CLIENT, clientSecret: SECRET, authorityHost: idp.url, caFile: idp.caFile } } },
      upstreams: { m365: { type: 'm365-smtp', app: 'contoso', mailbox: 'scans@contoso.com', host: '127.0.0.1', port: exchange.port, verifyCertificate: false, ...(o.upstream ?? {}) } },
      routing: { default: 'm365' },
    }),
  );
  const sink = new PassThrough();
  const logs: Record<string, unknown>[] = [];
  let text = '';
  sink.on('data', (c: Buffer) => {
    text += c.toString();
    for (const line of c.toString().split('\n').filter(Boolean)) logs.push(JSON.parse(line) as Record<string, unknown>);
  });
  const log = createLogger('debug', sink);
  const upstream = createUpstream('m365', config.upstreams.m365!, 'relay.contoso.local', { log, microsoft: new MicrosoftApps(config.microsoft, { log }) });
  t.after(() => upstream.close());
  return { idp, exchange, upstream, logs, logText: () => text };
}

let counter = 0;
function request(sender: string, recipients: string[], body = 'hello'): DeliveryRequest {
  const id = `Q${String(++counter).padStart(21, '0')}`;
  const raw = `From: ${sender || 'MAILER-DAEMON'}\r\nTo: ${recipients.join(', ')}\r\nSubject: test ${id}\r\nMessage-ID: <${id}@test>\r\n\r\n${body}\r\n`;
  return { queueId: id, sender, recipients, size: raw.length, openMessage: () => Readable.from([Buffer.from(raw)]) };
}

async function deliverOrError(upstream: Upstream, r: DeliveryRequest): Promise<RecipientOutcome[] | SmtpError> {
  try {
    return await upstream.deliver(r);
  } catch (err) {
    assert.ok(err instanceof SmtpError, `deliver threw ${String(err)}`);
    return err;
  }
}

function failure(result: RecipientOutcome[] | SmtpError): SmtpError {
  if (result instanceof SmtpError) return result;
  const o = result[0]!;
  assert.equal(o.delivered, false, 'expected a failed recipient');
  return (o as { error: SmtpError }).error;
}

test('delivers over STARTTLS with AUTH XOAUTH2 as the configured mailbox, the message byte for byte', async (t) => {
  const w = await world(t);
  const r = request('printer@contoso.com', ['alice@example.net', 'bob@example.net'], 'scan attached');
  const outcomes = await w.upstream.deliver(r);
  assert.deepEqual(outcomes.map((o) => [o.recipient, o.delivered]), [['alice@example.net', true], ['bob@example.net', true]]);
  const [d] = w.exchange.deliveries;
  assert.ok(d);
  assert.equal(d.mailbox, 'scans@contoso.com');
  assert.equal(d.method, 'XOAUTH2');
  assert.equal(d.secure, true, 'AUTH and the message only after STARTTLS');
  assert.equal(d.token, w.idp.issued[0]!.token, 'the app token from the identity provider');
  assert.equal(d.sender, 'printer@contoso.com', 'the envelope sender is kept (the mailbox has SendAs on it)');
  assert.equal(d.raw.toString(), await new Promise<string>((res) => {
    let s = '';
    r.openMessage().on('data', (c: Buffer) => (s += c.toString())).on('end', () => res(s));
  }));
  assert.doesNotMatch(w.logText(), new RegExp(`${SECRET}|${w.idp.issued[0]!.token}`), 'neither the secret nor the token is logged');
});

test('mailbox: fromSender logs in as each message\'s sender; a bounce (no sender) fails with the reason', async (t) => {
  const w = await world(t, {
    upstream: { mailbox: 'fromSender' },
    mailboxes: [
      { address: 'scans@contoso.com', apps: [CLIENT] },
      { address: 'invoices@contoso.com', apps: [CLIENT] },
    ],
  });
  assert.equal((await w.upstream.deliver(request('invoices@contoso.com', ['x@example.net'])))[0]!.delivered, true);
  assert.equal((await w.upstream.deliver(request('scans@contoso.com', ['y@example.net'])))[0]!.delivered, true);
  assert.deepEqual(w.exchange.deliveries.map((d) => d.mailbox), ['invoices@contoso.com', 'scans@contoso.com']);
  const bounce = failure(await deliverOrError(w.upstream, request('', ['z@example.net'])));
  assert.equal(bounce.code, 550);
  assert.match(bounce.message, /fromSender.*a bounce has none/);
});

test('a token failure defers every recipient with 451 4.7.0 and never reaches Exchange', async (t) => {
  const w = await world(t);
  w.idp.failNext(FAILURES.invalidSecret, 5);
  const err = failure(await deliverOrError(w.upstream, request('scans@contoso.com', ['a@example.net'])));
  assert.equal(err.reply.slice(0, 9), '451 4.7.0');
  assert.match(err.message, /AADSTS7000215/);
  assert.equal(w.exchange.authFailures.length + w.exchange.deliveries.length, 0);
  const logged = w.logs.filter((l) => l.event === 'token.failed');
  assert.equal(logged.length, 1);
  assert.equal(logged[0]!.level, 'error');
});

test('432 4.3.2 (too many connections) defers', async (t) => {
  const w = await world(t);
  w.exchange.script({ stage: 'mail', reply: '432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded' });
  const err = failure(await deliverOrError(w.upstream, request('scans@contoso.com', ['a@example.net'])));
  assert.equal(err.temporary, true);
  assert.equal(err.enhanced, '4.3.2');
  assert.match(err.message, /concurrent connection/);
  assert.equal((await w.upstream.deliver(request('scans@contoso.com', ['a@example.net'])))[0]!.delivered, true, 'the next attempt goes through');
});

test('554 5.2.0 SubmissionQuotaExceeded (the mailbox\'s sending limit) defers, not bounces', async (t) => {
  const w = await world(t, { messagesPerMinute: 2 });
  for (let i = 0; i < 2; i++) assert.equal((await w.upstream.deliver(request('scans@contoso.com', [`r${i}@example.net`])))[0]!.delivered, true);
  const err = failure(await deliverOrError(w.upstream, request('scans@contoso.com', ['r3@example.net'])));
  assert.equal(err.code, 451);
  assert.equal(err.enhanced, '4.2.0');
  assert.match(err.message, /sending limit.*not bounced; Exchange said: 554 5\.2\.0 .*SubmissionQuotaExceeded/);
  w.idp.advance(61_000);
  assert.equal((await w.upstream.deliver(request('scans@contoso.com', ['r3@example.net'])))[0]!.delivered, true, 'delivered once the minute is over');
});

test('550 5.2.251-255 (continuous-error throttling) defers', async (t) => {
  const w = await world(t);
  w.exchange.script({ stage: 'data', reply: '550 5.2.252 Sender throttled due to continuous send as denied errors' });
  const err = failure(await deliverOrError(w.upstream, request('scans@contoso.com', ['a@example.net'])));
  assert.equal(err.temporary, true);
  assert.equal(err.enhanced, '4.2.252');
  assert.match(err.message, /continuous errors/);
});

test('535 5.7.3 (app without SMTP.SendAsApp or mailbox permission) retries once with a fresh token, then defers and alerts with the fix', async (t) => {
  const w = await world(t, { mailboxes: [{ address: 'scans@contoso.com', apps: [] }] });
  const err = failure(await deliverOrError(w.upstream, request('scans@contoso.com', ['a@example.net'])));
  assert.equal(err.temporary, true, 'deferred, not bounced');
  assert.match(err.message, /SMTP\.SendAsApp.*New-ServicePrincipal.*Add-MailboxPermission/);
  assert.equal(w.exchange.authFailures.length, 2, 'one login with the cached token, one with a new one');
  assert.equal(w.idp.issued.length, 2);
  const alerts = w.logs.filter((l) => l.event === 'upstream.alert');
  assert.equal(alerts.length, 1);
  assert.equal(alerts[0]!.level, 'error');
  assert.equal(alerts[0]!.mailbox, 'scans@contoso.com');
  assert.match(String(alerts[0]!.msg), /New-ServicePrincipal/);
  await deliverOrError(w.upstream, request('scans@contoso.com', ['a@example.net']));
  assert.equal(w.logs.filter((l) => l.event === 'upstream.alert').length, 1, 'the same alert is not repeated for every retry');
});

test('535 5.7.139 (SMTP AUTH disabled for the mailbox) defers and alerts naming Set-CASMailbox', async (t) => {
  const w = await world(t, { mailboxes: [{ address: 'scans@contoso.com', apps: [CLIENT], smtpAuthDisabled: true }] });
  const err = failure(await deliverOrError(w.upstream, request('scans@contoso.com', ['a@example.net'])));
  assert.equal(err.temporary, true);
  assert.match(err.message, /SmtpClientAuthenticationDisabled \$false/);
  assert.match(String(w.logs.find((l) => l.event === 'upstream.alert')?.msg), /enable it for the mailbox/);
});

test('legacyBasicAuth warns at start-up about the retirement; 550 5.7.30 defers and alerts', async (t) => {
  const w = await world(t, { upstream: { app: undefined, legacyBasicAuth: { user: 'scans@contoso.com', pass: 'p' } } });
  const warning = w.logs.find((l) => l.event === 'config.warning');
  assert.ok(warning, 'a start-up warning');
  assert.equal(warning.level, 'warn');
  assert.match(String(warning.msg), /Basic auth for SMTP AUTH client submission by default at the end of December 2026/);
  assert.doesNotMatch(w.logText(), /"p"/);
  const err = failure(await deliverOrError(w.upstream, request('scans@contoso.com', ['a@example.net'])));
  assert.equal(err.temporary, true);
  assert.match(err.message, /no longer accepts Basic authentication.*Exchange said: 550 5\.7\.30/);
  assert.ok(w.logs.some((l) => l.event === 'upstream.alert'));
});

test('legacyBasicAuth with a wrong password: 535 5.7.3 defers and alerts with the Basic auth advice (password, MFA, SMTP AUTH, move to OAuth), not the app setup; test-upstream says the same', async (t) => {
  const w = await world(t, {
    upstream: { app: undefined, legacyBasicAuth: { user: 'scans@contoso.com', pass: 'changed-since' } },
    basicAuth: true,
    mailboxes: [{ address: 'scans@contoso.com', password: 'p' }],
  });
  const err = failure(await deliverOrError(w.upstream, request('scans@contoso.com', ['a@example.net'])));
  assert.equal(err.temporary, true, 'deferred, not bounced');
  assert.match(err.message, /refused the mailbox's password \(legacyBasicAuth\).*app password.*MFA.*Security Defaults.*SmtpClientAuthenticationDisabled \$false.*end of December 2026.*OAuth.*Exchange said: 535 5\.7\.3/);
  assert.doesNotMatch(err.message, /SMTP\.SendAsApp|New-ServicePrincipal/);
  assert.deepEqual(w.exchange.authFailures.map((f) => f.method), ['LOGIN'], 'one login, no token to renew');
  const alert = w.logs.find((l) => l.event === 'upstream.alert');
  assert.match(String(alert?.msg), /mailbox's password/);
  assert.doesNotMatch(String(alert?.msg), /SMTP\.SendAsApp/);

  const steps: ProbeStep[] = [];
  assert.equal(await w.upstream.probe!((s) => steps.push(s)), false);
  const auth = steps.find((s) => s.step === 'AUTH');
  assert.match(auth!.detail, /Basic auth \(legacyBasicAuth\) as scans@contoso\.com refused: 535 5\.7\.3/);
  assert.match(auth!.fix ?? '', /mailbox's password.*move to an app under microsoft\.apps/);
  assert.doesNotMatch(auth!.fix ?? '', /SMTP\.SendAsApp/);
});

test('legacyBasicAuth still delivers where the tenant allows Basic auth', async (t) => {
  const w = await world(t, { upstream: { app: undefined, legacyBasicAuth: { user: 'scans@contoso.com', pass: 'p' } }, basicAuth: true, mailboxes: [{ address: 'scans@contoso.com', password: 'p' }] });
  assert.equal((await w.upstream.deliver(request('scans@contoso.com', ['a@example.net'])))[0]!.delivered, true);
  assert.equal(w.exchange.deliveries[0]!.method, 'LOGIN');
});

test('5.7.60 (no SendAs on the sender) bounces with an explanation naming SendAs', async (t) => {
  const w = await world(t);
  const err = failure(await deliverOrError(w.upstream, request('ceo@contoso.com', ['a@example.net'])));
  assert.equal(err.code, 550);
  assert.equal(err.enhanced, '5.7.60');
  assert.match(err.message, /Add-RecipientPermission .*-AccessRights SendAs/);
});

test('a token Exchange no longer accepts (expired for it, still cached by msal) is replaced within the same delivery', async (t) => {
  const w = await world(t);
  assert.equal((await w.upstream.deliver(request('scans@contoso.com', ['a@example.net'])))[0]!.delivered, true);
  w.idp.advance(3600_000); // an hour passes for Microsoft; msal's cache still trusts its token
  assert.equal((await w.upstream.deliver(request('scans@contoso.com', ['b@example.net'])))[0]!.delivered, true);
  assert.equal(w.exchange.authFailures.length, 1, 'the stale token was refused once');
  assert.equal(w.idp.issued.length, 2);
  assert.equal(w.exchange.deliveries[1]!.token, w.idp.issued[1]!.token, 'the second message went out with the new token');
});

test('at most 3 connections per mailbox at once, whatever the upstream\'s total', async (t) => {
  const w = await world(t, { upstream: { maxConnections: 10 } });
  w.exchange.hold();
  const all = Array.from({ length: 7 }, (_, i) => w.upstream.deliver(request('scans@contoso.com', [`r${i}@example.net`])));
  await w.exchange.waitUntil(() => w.exchange.held() === 3, 'three messages waiting for their reply');
  w.exchange.release();
  const outcomes = (await Promise.all(all)).flat();
  assert.equal(outcomes.filter((o) => o.delivered).length, 7);
  assert.equal(w.exchange.peakSessions.get('scans@contoso.com'), 3);
  assert.deepEqual(w.exchange.refusals, [], 'Exchange never had to refuse a fourth connection');
});

test('probe reports token, connect, STARTTLS and AUTH, and names the fix of the step that fails', async (t) => {
  const w = await world(t);
  const steps: ProbeStep[] = [];
  assert.equal(await w.upstream.probe!((s) => steps.push(s)), true);
  assert.deepEqual(steps.map((s) => [s.step, s.ok]), [['token', true], ['connect', true], ['STARTTLS', true], ['AUTH', true]]);
  assert.match(steps[2]!.detail, /TLSv1\.[23]/);
  assert.equal(w.exchange.deliveries.length, 0, 'nothing is sent');

  const refused = await world(t, { mailboxes: [{ address: 'scans@contoso.com', apps: [] }] });
  const failed: ProbeStep[] = [];
  assert.equal(await refused.upstream.probe!((s) => failed.push(s)), false);
  const auth = failed.find((s) => s.step === 'AUTH');
  assert.equal(auth?.ok, false);
  assert.match(auth!.detail, /535 5\.7\.3/);
  assert.match(auth!.fix ?? '', /New-ServicePrincipal/);

  const noToken = await world(t);
  noToken.idp.failNext(FAILURES.appNotFound);
  const tokenSteps: ProbeStep[] = [];
  assert.equal(await noToken.upstream.probe!((s) => tokenSteps.push(s)), false);
  assert.deepEqual(tokenSteps.map((s) => [s.step, s.ok]), [['token', false]], 'stops at the first failed step');
  assert.match(tokenSteps[0]!.detail, /no application with this clientId exists in the tenant/);
});

test('probe of a fromSender upstream asks for the mailbox to test', async (t) => {
  const w = await world(t, { upstream: { mailbox: 'fromSender' } });
  const steps: ProbeStep[] = [];
  assert.equal(await w.upstream.probe!((s) => steps.push(s)), false);
  assert.equal(steps[0]!.step, 'mailbox');
  assert.match(steps[0]!.fix ?? '', /--from ADDRESS/);
  const given: ProbeStep[] = [];
  assert.equal(await w.upstream.probe!((s) => given.push(s), { sender: 'scans@contoso.com' }), true);
  assert.match(given.at(-1)!.detail, /XOAUTH2 as scans@contoso\.com accepted/);
});
