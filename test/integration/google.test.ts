/**
 * Through smarthost into a local Gmail SMTP stand-in that takes XOAUTH2 only (test/fakes/gmail-smtp.ts), with
 * tokens from a local token endpoint that checks the service account's JWT signature (test/fakes/google-token.ts):
 * the message arrives byte for byte as the impersonated mailbox over STARTTLS; a mailbox outside the
 * domain-wide delegation is deferred (4.7.0) until it is delegated; a token Gmail no longer accepts is replaced;
 * a mailbox over Gmail's daily sending limit (550 5.4.5) is deferred until the limit lifts.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { PassThrough } from 'node:stream';
import { simpleParser } from 'mailparser';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log.js';
import type { GoogleUpstreamConfig } from '../../src/upstreams/google/config.js';
import { GoogleUpstream } from '../../src/upstreams/google/google.js';
import { startGmailSmtpFake, type GmailSmtpFake } from '../fakes/gmail-smtp.js';
import { makeServiceAccount, startGoogleTokenFake, type GoogleTokenFake } from '../fakes/google-token.js';
import { type InProcessDaemon, sendRaw, startInProcess, tempDir, testConfig } from '../helpers/daemon.js';
import { compose, deliveryRequest, PDF, PNG, richMessage } from '../helpers/mime.js';

type Log = Record<string, unknown>;

const account = makeServiceAccount();

interface Setup {
  daemon: InProcessDaemon;
  tokens: GoogleTokenFake;
  gmail: GmailSmtpFake;
}

async function setup(t: TestContext, o: { delegated: string[]; mailbox?: string }): Promise<Setup> {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const tokens = await startGoogleTokenFake(account, { delegated: o.delegated });
  t.after(() => tokens.close());
  const gmail = await startGmailSmtpFake(tokens);
  t.after(() => gmail.close());
  const keyFile = join(dir.path, 'google-service-account.json');
  await writeFile(keyFile, account.json, { mode: 0o600 });
  const upstream = {
    type: 'google',
    serviceAccount: { file: keyFile },
    mailbox: o.mailbox ?? 'fromSender',
    tokenUrl: tokens.url,
    // smtp.gmail.com:587 with STARTTLS in production; the stand-in has a self-signed certificate.
    host: '127.0.0.1',
    port: gmail.port,
    security: 'starttls',
    verifyCertificate: false,
  };
  const daemon = await startInProcess(await testConfig({ dir: dir.path, upstreams: { gmail: upstream }, retry: { initialDelay: '200ms', maxDelay: '1s' } }));
  t.after(() => daemon.stop());
  return { daemon, tokens, gmail };
}


const delivery = (queueId: string, result: string) => (l: Log) => l.event === 'delivery' && l.queueId === queueId && l.result === result;

test('a multipart message arrives at Gmail byte for byte, logged in with XOAUTH2 as the sender over STARTTLS', async (t) => {
  const { daemon, tokens, gmail } = await setup(t, { delegated: ['scans@contoso.test'] });
  const raw = await compose(richMessage());
  const queueId = await sendRaw(daemon, 'scans@contoso.test', ['alice@dest.test', 'carol@dest.test'], raw);
  const delivered = await daemon.waitForLog(delivery(queueId, 'delivered'));
  assert.match(String(delivered.reply), /^250 2\.0\.0 OK gmail-1 - gsmtp$/);

  const [message] = await gmail.waitForMessages(1);
  assert.equal(message!.user, 'scans@contoso.test', 'logged in as the impersonated mailbox');
  assert.equal(message!.sender, 'scans@contoso.test');
  assert.deepEqual(message!.recipients, ['alice@dest.test', 'carol@dest.test']);
  assert.deepEqual(gmail.logins, [{ user: 'scans@contoso.test', ok: true, tls: true }]);
  // smarthost only prepends its Received header; everything after it is the message as the client sent it.
  assert.ok(message!.raw.subarray(message!.raw.length - raw.length).equals(raw), 'the body and headers arrive unchanged');
  assert.match(message!.raw.toString('latin1'), /^Received: from /);

  const parsed = await simpleParser(message!.raw, { keepCidLinks: true });
  assert.equal(parsed.subject, 'Scan ready: Größe A4');
  assert.equal(parsed.messageId, '<scan-1@contoso.test>');
  assert.equal(parsed.headers.get('x-tag'), 'invoice');
  assert.match(String(parsed.html), /cid:logo@contoso\.test/);
  const logo = parsed.attachments.find((a) => a.cid === 'logo@contoso.test');
  assert.ok(logo?.related, 'the image is still an inline part of multipart/related');
  assert.deepEqual(logo.content, PNG);
  assert.deepEqual(parsed.attachments.find((a) => a.filename === 'scan-0001.pdf')?.content, PDF);

  const [request] = tokens.requests;
  assert.equal(request!.status, 200);
  assert.equal(request!.header!.kid, account.keyId);
  assert.deepEqual(
    { iss: request!.claims!.iss, sub: request!.claims!.sub, scope: request!.claims!.scope, aud: request!.claims!.aud },
    { iss: account.clientEmail, sub: 'scans@contoso.test', scope: 'https://mail.google.com/', aud: tokens.url },
  );
});

test('a fixed mailbox logs in as that mailbox whatever the envelope sender', async (t) => {
  const { daemon, gmail } = await setup(t, { delegated: ['scans@contoso.test'], mailbox: 'scans@contoso.test' });
  const queueId = await sendRaw(daemon, 'printer@lan.test', ['alice@dest.test'], await compose({ from: 'printer@lan.test', to: 'alice@dest.test', subject: 'x', text: 'y' }));
  await daemon.waitForLog(delivery(queueId, 'delivered'));
  const [message] = await gmail.waitForMessages(1);
  assert.deepEqual([message!.user, message!.sender], ['scans@contoso.test', 'printer@lan.test']);
  // The token metrics count Google tokens under the upstream's name, like a Microsoft app's.
  const metrics = await daemon.daemon.registry.metrics();
  assert.match(metrics, /^smarthost_oauth_token_refreshes_total\{app="gmail",result="success"\} 1$/m);
  assert.match(metrics, /^smarthost_oauth_token_refreshes_total\{app="gmail",result="failure"\} 0$/m);
  assert.match(metrics, /^smarthost_oauth_token_expiry_timestamp_seconds\{app="gmail"\} \d{10}$/m);
});

test('a sender outside the domain-wide delegation is deferred with 4.7.0, and delivered once it is delegated', async (t) => {
  const { daemon, tokens, gmail } = await setup(t, { delegated: [] });
  const queueId = await sendRaw(daemon, 'new@contoso.test', ['alice@dest.test'], await compose({ from: 'new@contoso.test', to: 'alice@dest.test', subject: 'x', text: 'y' }));
  const deferred = await daemon.waitForLog(delivery(queueId, 'deferred'));
  assert.match(String(deferred.reply), /^451 4\.7\.0 cannot get a Google access token for new@contoso\.test .*domain-wide delegation/);
  assert.equal(gmail.logins.length, 0, 'no login was tried without a token');

  tokens.delegated.add('new@contoso.test');
  await daemon.waitForLog(delivery(queueId, 'delivered'));
  const [message] = await gmail.waitForMessages(1);
  assert.equal(message!.user, 'new@contoso.test');
  assert.ok(!daemon.logs().some((l) => l.event === 'bounce.queued'), 'never bounced');
});

test('a token Gmail refuses although it is cached is replaced by a fresh one and the message goes out', async (t) => {
  const { daemon, tokens, gmail } = await setup(t, { delegated: ['scans@contoso.test'] });
  const first = await sendRaw(daemon, 'scans@contoso.test', ['alice@dest.test'], await compose({ from: 'scans@contoso.test', to: 'alice@dest.test', subject: 'one', text: 'y' }));
  await daemon.waitForLog(delivery(first, 'delivered'));
  tokens.revokeAll();
  const second = await sendRaw(daemon, 'scans@contoso.test', ['alice@dest.test'], await compose({ from: 'scans@contoso.test', to: 'alice@dest.test', subject: 'two', text: 'y' }));
  await daemon.waitForLog(delivery(second, 'delivered'));
  assert.deepEqual(gmail.logins.map((l) => l.ok), [true, false, true], 'the cached token was refused, the fresh one accepted');
  assert.equal(tokens.issued.length, 2);
  assert.equal(gmail.messages.length, 2);
  assert.ok(!daemon.logs().some((l) => l.event === 'delivery' && l.queueId === second && l.result === 'deferred'), 'no deferral was needed');
});

test('550 5.4.5 after DATA (the mailbox reached Gmail\'s daily sending limit) defers the message with one alert; it stays queued and goes out once the limit lifts, never bounced', async (t) => {
  const { daemon, gmail } = await setup(t, { delegated: ['scans@contoso.test'] });
  gmail.overDailyLimit.add('scans@contoso.test');
  const queueId = await sendRaw(daemon, 'scans@contoso.test', ['alice@dest.test'], await compose({ from: 'scans@contoso.test', to: 'alice@dest.test', subject: 'x', text: 'y' }));
  const deferred = await daemon.waitForLog(delivery(queueId, 'deferred'));
  assert.match(String(deferred.reply), /^451 4\.4\.5 Gmail refused the message: the mailbox reached its daily sending limit; it lifts within 24 hours.*Gmail said: 550 5\.4\.5 Daily user sending limit exceeded/);
  assert.ok(deferred.nextAttemptAt, 'still queued, with a next attempt');
  await daemon.waitForLog((l) => l.event === 'delivery' && l.queueId === queueId && l.result === 'deferred' && l.attempt === 2);
  const alerts = daemon.logs().filter((l) => l.event === 'upstream.alert');
  assert.equal(alerts.length, 1, 'alerted once, not at every retry');
  assert.equal(alerts[0]!.level, 'error');
  assert.equal(alerts[0]!.mailbox, 'scans@contoso.test');
  assert.match(String(alerts[0]!.msg), /daily sending limit/);

  gmail.overDailyLimit.delete('scans@contoso.test');
  await daemon.waitForLog(delivery(queueId, 'delivered'));
  assert.equal(gmail.messages.length, 1);
  assert.ok(!daemon.logs().some((l) => l.event === 'bounce.queued' || (l.event === 'delivery' && l.result === 'bounced')), 'never bounced');
});

test('a login Gmail refuses even with a fresh token defers the message and raises one alert', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const tokens = await startGoogleTokenFake(account, { delegated: ['scans@contoso.test'] });
  t.after(() => tokens.close());
  const gmail = await startGmailSmtpFake(tokens);
  t.after(() => gmail.close());
  gmail.refused.add('scans@contoso.test');
  const keyFile = join(dir.path, 'sa.json');
  await writeFile(keyFile, account.json);
  const yaml = [
    'spool: { dir: /unused }',
    'listeners: [{ name: relay, role: relay, port: 2525 }]',
    `upstreams: { gmail: ${JSON.stringify({ type: 'google', serviceAccount: { file: keyFile }, mailbox: 'fromSender', tokenUrl: tokens.url, host: '127.0.0.1', port: gmail.port, verifyCertificate: false })} }`,
    'routing: { default: gmail }',
  ].join('\n');
  const lines: Log[] = [];
  const sink = new PassThrough();
  sink.on('data', (c: Buffer) => c.toString().split('\n').filter(Boolean).forEach((l) => lines.push(JSON.parse(l) as Log)));
  const upstream = new GoogleUpstream('gmail', parseConfig(yaml).upstreams.gmail as GoogleUpstreamConfig, { hostname: 'smarthost.test', log: createLogger('debug', sink) });
  t.after(() => upstream.close());

  const raw = await compose({ from: 'scans@contoso.test', to: 'alice@dest.test', subject: 'x', text: 'y' });
  for (let i = 0; i < 2; i++) {
    await assert.rejects(upstream.deliver(deliveryRequest(raw, ['alice@dest.test'])), (err: unknown) => {
      assert.match(String((err as { reply?: unknown }).reply), /^451 4\.\d+\.\d+ AUTH XOAUTH2 refused by upstream: 535 /);
      return true;
    });
  }
  assert.deepEqual(gmail.logins.map((l) => l.ok), [false, false, false, false], 'each attempt: the cached token, then a fresh one');
  assert.equal(tokens.issued.length, 3, 'one token, then a fresh one per refused login');
  const alerts = lines.filter((l) => l.event === 'upstream.alert');
  assert.equal(alerts.length, 1, 'alerted once for the same refusal');
  assert.equal(alerts[0]!.mailbox, 'scans@contoso.test');
  assert.equal(gmail.messages.length, 0);
});
