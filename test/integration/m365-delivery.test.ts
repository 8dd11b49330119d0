/**
 * End to end through smarthost (started in this process) into the Microsoft 365 fakes: m365-smtp into the
 * fake Exchange Online with app tokens from the fake identity provider (bursts across token expiry, a
 * mailbox over its sending limit), and m365-connector into the fake tenant MX (STARTTLS, Direct Send's
 * accepted domains, RejectDirectSend's 5.7.68 bounced with a DSN, a certificate-based connector).
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import nodemailer from 'nodemailer';
import { formatUses } from '../../src/cli/limits.js';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { startSink } from '../helpers/sink.js';
import { makeTestCertificate } from '../helpers/tls.js';
import { startFakeExchange, type ExchangeMailbox, type FakeExchange } from '../fakes/exchange-smtp.js';
import { startFakeMx, type FakeMx, type FakeMxOptions } from '../fakes/exchange-mx.js';
import { startIdentityProvider, type FakeIdentityProvider } from '../fakes/identity-provider.js';

type Log = Record<string, unknown>;

const TENANT = '72f988bf-86f1-41af-91ab-2d7cd011db47';
const CLIENT = '11111111-2222-3333-4444-555555555555';
const SECRET = 'Q~fake-secret-value';
const SHORT_RETRY = { initialDelay: '200ms', maxDelay: '1s' };

async function relayWith(t: TestContext, upstream: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<InProcessDaemon> {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const relay = await startInProcess(await testConfig({ dir: dir.path, upstreams: { up: upstream }, retry: SHORT_RETRY, extra }));
  t.after(() => relay.stop());
  return relay;
}

async function m365World(
  t: TestContext,
  tokenLifetimeSeconds = 3599,
  upstreamExtra: Record<string, unknown> = {},
  mailboxes: ExchangeMailbox[] = [{ address: 'scans@contoso.com', apps: [CLIENT] }, { address: 'invoices@contoso.com', apps: [CLIENT] }],
): Promise<{ idp: FakeIdentityProvider; exchange: FakeExchange; relay: InProcessDaemon }> {
  const idp = await startIdentityProvider();
  t.after(() => idp.close());
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: SECRET });
  idp.tokenLifetimeSeconds = tokenLifetimeSeconds;
  const exchange = await startFakeExchange({ idp, tenantId: TENANT, mailboxes });
  t.after(() => exchange.close());
  const relay = await relayWith(
    t,
    { type: 'm365-smtp', app: 'contoso', mailbox: 'fromSender', host: '127.0.0.1', port: exchange.port, verifyCertificate: false, ...upstreamExtra },
    { microsoft: { apps: { contoso: { tenantId: TENANT, clientId: CLIENT, clientSecret: SECRET, authorityHost: idp.url, caFile: idp.caFile } } } },
  );
  return { idp, exchange, relay };
}

/** Sends messages to the relay listener, one transaction each; returns their queue IDs. */
async function send(relay: InProcessDaemon, messages: { from: string; to: string[]; id: string }[]): Promise<string[]> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  try {
    const ids: string[] = [];
    for (const m of messages) {
      const raw = `From: ${m.from}\r\nTo: ${m.to.join(', ')}\r\nSubject: scan ${m.id}\r\nMessage-ID: <${m.id}@scanner.test>\r\n\r\nscan ${m.id}\r\n`;
      const info = await client.sendMail({ envelope: { from: m.from, to: m.to }, raw });
      ids.push(/queued as ([0-9A-Z]{22})$/.exec(info.response)![1]!);
    }
    return ids;
  } finally {
    client.close();
  }
}

const results = (relay: InProcessDaemon, result: string) => relay.logs().filter((l: Log) => l.event === 'delivery' && l.result === result);
const messageIds = (raws: Buffer[]) => raws.map((r) => /^Message-ID: <([^>]+)>/im.exec(r.toString())?.[1]).sort();

test('m365-smtp: a burst outlives its short-lived tokens; every connection logs in with a live token, nothing deferred or bounced', async (t) => {
  // 4-minute tokens sit inside msal's 5-minute renewal margin: each connection gets a newly issued one.
  const { idp, exchange, relay } = await m365World(t, 240);
  const burst = Array.from({ length: 10 }, (_, i) => ({ from: i % 2 ? 'scans@contoso.com' : 'invoices@contoso.com', to: [`r${i}@example.net`], id: `burst-${i}` }));
  await send(relay, burst.slice(0, 4));
  await exchange.waitUntil(() => exchange.deliveries.length === 4, 'the first four messages');
  idp.advance(250_000); // every token issued so far has expired
  const expiredAt = idp.now();
  await send(relay, burst.slice(4));
  await exchange.waitUntil(() => exchange.deliveries.length === 10, 'all ten messages');

  assert.deepEqual(messageIds(exchange.deliveries.map((d) => d.raw)), burst.map((m) => `${m.id}@scanner.test`).sort(), 'each message exactly once');
  assert.deepEqual(exchange.authFailures, [], 'no connection ever presented an expired token');
  for (const d of exchange.deliveries) assert.equal(d.mailbox, d.sender, 'fromSender: each message logs in as its own sender');
  const afterExpiry = exchange.deliveries.slice(4).map((d) => idp.issued.find((i) => i.token === d.token)!);
  assert.ok(afterExpiry.every((i) => i.issuedAt >= expiredAt), 'messages after the expiry went out with tokens issued after it');
  await relay.waitForLog(() => results(relay, 'delivered').length === 10);
  assert.equal(results(relay, 'deferred').length + results(relay, 'bounced').length, 0);
});

test('m365-smtp: a cached token Exchange stops accepting mid-burst is replaced at once; nothing deferred or bounced', async (t) => {
  const { idp, exchange, relay } = await m365World(t);
  const burst = Array.from({ length: 8 }, (_, i) => ({ from: 'scans@contoso.com', to: [`r${i}@example.net`], id: `stale-${i}` }));
  await send(relay, burst.slice(0, 3));
  await exchange.waitUntil(() => exchange.deliveries.length === 3, 'the first three messages');
  idp.advance(3600_000); // an hour passes for Microsoft; msal still trusts the token it cached
  await send(relay, burst.slice(3));
  await exchange.waitUntil(() => exchange.deliveries.length === 8, 'all eight messages');
  assert.ok(exchange.authFailures.length >= 1, 'the stale token was presented and refused');
  assert.ok(exchange.authFailures.every((f) => f.reply.startsWith('535 5.7.3')));
  assert.ok(idp.issued.length >= 2, 'a new token was issued');
  assert.deepEqual(messageIds(exchange.deliveries.map((d) => d.raw)), burst.map((m) => `${m.id}@scanner.test`).sort());
  assert.equal(results(relay, 'deferred').length + results(relay, 'bounced').length, 0);
});

test('m365-smtp without the preset send limits: a mailbox Exchange refuses over 30 messages a minute is deferred, then delivered once the minute is over; none bounced', async (t) => {
  // With the preset (src/delivery/limits-config.ts) smarthost paces itself and Exchange never refuses; this checks the refusal path.
  const { idp, exchange, relay } = await m365World(t, 3599, { limits: false });
  const burst = Array.from({ length: 33 }, (_, i) => ({ from: 'scans@contoso.com', to: [`r${i}@example.net`], id: `quota-${i}` }));
  await send(relay, burst);
  const deferred = await relay.waitForLog((l) => l.event === 'delivery' && l.result === 'deferred', 20_000);
  assert.match(String(deferred.reply), /^451 4\.2\.0 the mailbox reached its Exchange Online sending limit.*SubmissionQuotaExceeded/);
  await exchange.waitUntil(() => exchange.deliveries.length === 30, 'the 30 messages the minute allows');
  const deferredIds = () => new Set(results(relay, 'deferred').map((l) => l.queueId));
  await relay.waitForLog(() => deferredIds().size === 3, 20_000);
  assert.equal(exchange.deliveries.length, 30, 'nothing more within the minute');
  assert.ok(exchange.refusals.every((r) => /SubmissionQuotaExceeded/.test(r.reply)), 'refused for the quota only');
  idp.advance(61_000);
  await exchange.waitUntil(() => exchange.deliveries.length === 33, 'the deferred messages, a minute later', 20_000);
  assert.deepEqual(messageIds(exchange.deliveries.map((d) => d.raw)), burst.map((m) => `${m.id}@scanner.test`).sort(), 'each message exactly once');
  assert.equal(results(relay, 'bounced').length, 0, 'throttling never bounces');
  assert.equal(relay.logs().filter((l) => l.event === 'bounce.queued').length, 0);
  assert.ok(Math.max(...exchange.peakSessions.values()) <= 3, 'never more than 3 connections per mailbox');
});

test('m365-smtp with a fixed mailbox: 40 messages from two senders are held back at the mailbox\'s 30 a minute by smarthost, not refused by Exchange', async (t) => {
  // Exchange counts the mailbox that logs in, whichever sender it sends as: the preset's counter must be that mailbox's.
  const { exchange, relay } = await m365World(t, 3599, { mailbox: 'scans@contoso.com' }, [{ address: 'scans@contoso.com', apps: [CLIENT], sendAs: ['a@contoso.com', 'b@contoso.com'] }]);
  const burst = Array.from({ length: 40 }, (_, i) => ({ from: i % 2 ? 'b@contoso.com' : 'a@contoso.com', to: [`r${i}@example.net`], id: `shared-${i}` }));
  await send(relay, burst);
  const limited = () => new Set(relay.logs().filter((l) => l.event === 'limit.deferred').map((l) => l.queueId));
  // Every message has had its answer: accepted, refused by Exchange, or held back by smarthost.
  await relay.waitForLog(() => exchange.deliveries.length + exchange.refusals.length + limited().size >= 40, 20_000);

  assert.deepEqual(exchange.refusals, [], 'Exchange never had to refuse a message for its quota');
  assert.equal(exchange.deliveries.length, 30);
  assert.deepEqual(new Set(exchange.deliveries.map((d) => d.mailbox)), new Set(['scans@contoso.com']));
  assert.equal(limited().size, 10, 'the ten over the mailbox\'s minute wait for it');
  assert.deepEqual(new Set(relay.logs().filter((l) => l.event === 'limit.deferred').map((l) => l.key)), new Set(['up/scans@contoso.com']));
  assert.equal(results(relay, 'deferred').length + results(relay, 'bounced').length, 0, 'held back, not deferred by a refusal');
  const shown = formatUses(await relay.daemon.limits!.uses(Date.now()), 'limits.json', undefined);
  assert.match(shown, /^up\/scans@contoso\.com\s+messages\/minute\s+30\/30\s/m, 'limits show names the mailbox that logs in');
  assert.doesNotMatch(shown, /[ab]@contoso\.com/, 'and no per-sender counters');
});

async function mxWorld(t: TestContext, mxOptions: FakeMxOptions, upstream: Record<string, unknown>): Promise<{ mx: FakeMx; relay: InProcessDaemon }> {
  const mx = await startFakeMx(mxOptions);
  t.after(() => mx.close());
  const relay = await relayWith(t, { type: 'm365-connector', host: '127.0.0.1', port: mx.port, verifyCertificate: false, ...upstream });
  return { mx, relay };
}

test('m365-connector Direct Send: tenant recipients are delivered over STARTTLS; one outside the accepted domains is refused at RCPT TO', async (t) => {
  const { mx, relay } = await mxWorld(t, { acceptedDomains: ['contoso.com'] }, { mode: 'directSend', acceptedDomains: ['contoso.com'], ehloName: 'relay.contoso.com' });
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  t.after(() => client.close());
  const raw = 'From: scanner@contoso.com\r\nTo: alice@contoso.com, eve@example.net\r\nSubject: scan ds-1\r\nMessage-ID: <ds-1@scanner.test>\r\n\r\nscan\r\n';
  const info = await client.sendMail({ envelope: { from: 'scanner@contoso.com', to: ['alice@contoso.com', 'eve@example.net'] }, raw });
  // The client hears the refusal while it is still connected: nothing is queued for eve, no bounce follows.
  assert.deepEqual(info.rejected, ['eve@example.net']);
  const refusal = (info as unknown as { rejectedErrors: { response: string }[] }).rejectedErrors[0]!.response;
  assert.match(refusal, /^550 5\.7\.1 Recipient address rejected: upstream \S+ \(Direct Send\) reaches only its tenant's accepted domains/);
  assert.deepEqual(info.accepted, ['alice@contoso.com']);
  await mx.waitUntil(() => mx.deliveries.length === 1, 'the message');
  const queueId = /queued as ([0-9A-Z]{22})$/.exec(info.response)![1]!;
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === queueId);

  const [original] = mx.deliveries;
  assert.deepEqual(original!.recipients, ['alice@contoso.com'], 'only the tenant recipient was offered');
  assert.equal(original!.secure, true, 'STARTTLS');
  assert.equal(original!.helo, 'relay.contoso.com', 'the configured EHLO name');
  assert.deepEqual(mx.refusals, [], 'Exchange never saw the outside recipient');
  assert.equal(mx.deliveries.length, 1, 'no bounce was needed');
});

test('m365-connector: RejectDirectSend\'s 550 5.7.68 bounces with a DSN explaining the connector fix', async (t) => {
  const { mx, relay } = await mxWorld(t, { acceptedDomains: ['contoso.com'], rejectDirectSend: true }, { mode: 'directSend', acceptedDomains: ['contoso.com'] });
  const [queueId] = await send(relay, [{ from: 'scanner@contoso.com', to: ['alice@contoso.com'], id: 'rds-1' }]);
  const bounced = await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === queueId && l.result === 'bounced');
  assert.match(String(bounced.reply), /^550 5\.7\.68 TenantInboundAttribution.*RejectDirectSend \$true\): create a partner inbound connector/);
  // The DSN has the null sender, which RejectDirectSend does not match: it reaches the original sender.
  await mx.waitUntil(() => mx.deliveries.length === 1, 'the DSN');
  const dsn = mx.deliveries[0]!;
  assert.equal(dsn.sender, '');
  assert.deepEqual(dsn.recipients, ['scanner@contoso.com']);
  const text = dsn.raw.toString().replace(/\r\n[ \t]+/g, ' ');
  assert.match(text, /^Status: 5\.7\.68\r$/m);
  assert.match(text, /^Diagnostic-Code: smtp; 550 5\.7\.68 .*inbound connector/m);
});

test(
  'm365-connector: the DSN names the tenant MX host as Remote-MTA',
  async (t) => {
    const { mx, relay } = await mxWorld(t, { acceptedDomains: ['contoso.com'], rejectDirectSend: true }, { mode: 'directSend', acceptedDomains: ['contoso.com'] });
    await send(relay, [{ from: 'scanner@contoso.com', to: ['alice@contoso.com'], id: 'rmta-1' }]);
    await mx.waitUntil(() => mx.deliveries.length === 1, 'the DSN');
    assert.match(mx.deliveries[0]!.raw.toString(), /^Remote-MTA: dns; 127\.0\.0\.1\r$/m);
  },
);

test('m365-connector with a client certificate: the certificate-based connector relays to any recipient', async (t) => {
  const cert = await makeTestCertificate();
  const { mx, relay } = await mxWorld(
    t,
    { acceptedDomains: ['contoso.com'], certificateConnectors: { 'smarthost relay': 'localhost' }, rejectDirectSend: true },
    { clientCertificate: { cert: cert.certPath, key: cert.keyPath }, ehloName: 'localhost' },
  );
  await send(relay, [{ from: 'scanner@contoso.com', to: ['partner@example.net', 'alice@contoso.com'], id: 'cert-1' }]);
  await mx.waitUntil(() => mx.deliveries.length === 1, 'the relayed message');
  assert.equal(mx.deliveries[0]!.connector, 'smarthost relay');
  assert.deepEqual(mx.deliveries[0]!.recipients, ['partner@example.net', 'alice@contoso.com']);
  assert.equal(mx.deliveries[0]!.secure, true);
});

test('m365-connector never falls back to plain text: no STARTTLS means deferred, not sent', async (t) => {
  const plain = await startSink();
  t.after(() => plain.close());
  const relay = await relayWith(t, { type: 'm365-connector', host: '127.0.0.1', port: plain.port, domain: 'contoso.com' });
  const [queueId] = await send(relay, [{ from: 'scanner@contoso.com', to: ['alice@contoso.com'], id: 'notls-1' }]);
  const deferred = await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === queueId && l.result === 'deferred');
  assert.match(String(deferred.reply), /^4\d\d /);
  assert.equal(plain.messages.length, 0);
});
