/**
 * `smarthost test-upstream` for google (token for the impersonated mailbox, STARTTLS, XOAUTH2 against the Gmail
 * stand-in) and mailjet (one SandboxMode Send API call against the Mailjet fake): each step reported, nothing sent.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { testUpstream } from '../../src/cli/test-upstream.js';
import { parseConfig } from '../../src/config/load.js';
import { startGmailSmtpFake } from '../fakes/gmail-smtp.js';
import { makeServiceAccount, startGoogleTokenFake } from '../fakes/google-token.js';
import { startMailjetFake } from '../fakes/mailjet.js';
import { tempDir } from '../helpers/daemon.js';

function config(upstreams: Record<string, unknown>) {
  return parseConfig(JSON.stringify({ hostname: 'relay.test', spool: { dir: '/tmp/unused' }, listeners: [{ name: 'relay', role: 'relay', port: 2525 }], upstreams, routing: { default: Object.keys(upstreams)[0] } }));
}

const account = makeServiceAccount();

async function google(t: TestContext, delegated: string[], mailbox: string) {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const tokens = await startGoogleTokenFake(account, { delegated });
  t.after(() => tokens.close());
  const gmail = await startGmailSmtpFake(tokens);
  t.after(() => gmail.close());
  const keyFile = join(dir.path, 'sa.json');
  await writeFile(keyFile, account.json, { mode: 0o600 });
  const cfg = config({ gmail: { type: 'google', serviceAccount: { file: keyFile }, mailbox, tokenUrl: tokens.url, host: '127.0.0.1', port: gmail.port, security: 'starttls', verifyCertificate: false } });
  return { gmail, cfg };
}

test('google: token for the mailbox, connect, STARTTLS and XOAUTH2 pass; nothing is sent', async (t) => {
  const { gmail, cfg } = await google(t, ['scans@contoso.test'], 'scans@contoso.test');
  const lines: string[] = [];
  assert.equal(await testUpstream(cfg, 'gmail', {}, (l) => lines.push(l)), true, lines.join('\n'));
  assert.match(lines[1]!, /^ {2}ok {6}token: service account smarthost@smarthost-test\.iam\.gserviceaccount\.com got a token for scans@contoso\.test, valid until /);
  assert.ok(lines.some((l) => /^ {2}ok {6}STARTTLS: encrypted with TLSv1\.[23]$/.test(l)), lines.join('\n'));
  assert.ok(lines.includes('  ok      AUTH: XOAUTH2 as scans@contoso.test accepted'), lines.join('\n'));
  assert.match(lines.at(-1)!, /Nothing was sent/);
  assert.equal(gmail.messages.length, 0);
});

test('google: a mailbox outside the domain-wide delegation fails at the token step with the fix', async (t) => {
  const { cfg } = await google(t, ['other@contoso.test'], 'scans@contoso.test');
  const lines: string[] = [];
  assert.equal(await testUpstream(cfg, 'gmail', {}, (l) => lines.push(l)), false);
  assert.match(lines[1]!, /^ {2}FAILED {2}token: /);
  assert.match(lines[2]!, /fix: check domain-wide delegation of the service account for https:\/\/mail\.google\.com\//);
  assert.equal(lines.at(-1), 'Nothing was sent.');
});

test('google with mailbox fromSender needs --from, then tests that mailbox', async (t) => {
  const { cfg } = await google(t, ['desk@contoso.test'], 'fromSender');
  const without: string[] = [];
  assert.equal(await testUpstream(cfg, 'gmail', {}, (l) => without.push(l)), false);
  assert.match(without[1]!, /FAILED {2}mailbox: .*fromSender/);
  const lines: string[] = [];
  assert.equal(await testUpstream(cfg, 'gmail', { from: 'desk@contoso.test' }, (l) => lines.push(l)), true, lines.join('\n'));
  assert.ok(lines.includes('  ok      AUTH: XOAUTH2 as desk@contoso.test accepted'));
});

test('mailjet: a SandboxMode call validates keys and sender without sending; wrong keys name the fix', async (t) => {
  const fake = await startMailjetFake();
  t.after(() => fake.close());
  const upstream = (secretKey: string) => config({ mj: { type: 'mailjet', apiKey: fake.apiKey, secretKey, baseUrl: fake.baseUrl } });

  const missing: string[] = [];
  assert.equal(await testUpstream(upstream(fake.secretKey), 'mj', {}, (l) => missing.push(l)), false);
  assert.match(missing[1]!, /FAILED {2}sender: .*\n?/);
  assert.equal(fake.calls.length, 0, 'no call without a sender');

  const ok: string[] = [];
  assert.equal(await testUpstream(upstream(fake.secretKey), 'mj', { from: 'billing@contoso.test' }, (l) => ok.push(l)), true, ok.join('\n'));
  assert.match(ok[1]!, /^ {2}ok {6}Send API: 127\.0\.0\.1:\d+ accepted the API key and a message from billing@contoso\.test in SandboxMode \(not delivered\)$/);
  assert.equal(fake.calls.length, 1);
  assert.equal(fake.calls[0]!.sandbox, true);
  assert.equal(fake.accepted.length, 0, 'nothing was sent');

  const bad: string[] = [];
  assert.equal(await testUpstream(upstream('wrong'), 'mj', { from: 'billing@contoso.test' }, (l) => bad.push(l)), false);
  assert.match(bad[1]!, /FAILED {2}Send API: .*API key/);
  assert.match(bad[2]!, /fix: check apiKey and secretKey/);

  const invalid: string[] = [];
  assert.equal(await testUpstream(upstream(fake.secretKey), 'mj', { from: 'not-an-address' }, (l) => invalid.push(l)), false);
  assert.match(invalid[1]!, /FAILED {2}Send API: .*refused the test message: mj-0013 "not-an-address" is an invalid email address/);
});
