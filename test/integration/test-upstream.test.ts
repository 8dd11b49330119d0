/**
 * `smarthost test-upstream`: each step reported in plain words against the fakes (identity provider, Exchange
 * Online, tenant MX) and a plain SMTP sink; nothing is sent unless --send-to is given.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { testUpstream } from '../../src/cli/test-upstream.js';
import { UsageError } from '../../src/cli/command.js';
import { parseConfig } from '../../src/config/load.js';
import { startFakeExchange, type ExchangeMailbox } from '../fakes/exchange-smtp.js';
import { startFakeMx } from '../fakes/exchange-mx.js';
import { startIdentityProvider } from '../fakes/identity-provider.js';
import { freePort } from '../helpers/net.js';
import { startSink } from '../helpers/sink.js';

const TENANT = '72f988bf-86f1-41af-91ab-2d7cd011db47';
const CLIENT = '11111111-2222-3333-4444-555555555555';

function config(upstreams: Record<string, unknown>, microsoft: Record<string, unknown> = { apps: {} }) {
  return parseConfig(JSON.stringify({ hostname: 'relay.test', spool: { dir: '/tmp/unused' }, listeners: [{ name: 'relay', role: 'relay', port: 2525 }], upstreams, microsoft, routing: { default: Object.keys(upstreams)[0] } }));
}

async function m365(t: TestContext, mailboxes: ExchangeMailbox[]) {
  const idp = await startIdentityProvider();
  t.after(() => idp.close());
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: 's3cret' });
  const exchange = await startFakeExchange({ idp, tenantId: TENANT, mailboxes });
  t.after(() => exchange.close());
  const cfg = config(
    { m365: { type: 'm365-smtp', app: 'contoso', mailbox: 'scans@contoso.com', host: '127.0.0.1', port: exchange.port, verifyCertificate: false } },
    { apps: { contoso: { tenantId: TENANT, clientId: CLIENT, clientSecret: 's3cret', authorityHost: idp.url, caFile: idp.caFile } } },
  );
  return { idp, exchange, cfg };
}

test('m365-smtp: token, connect, STARTTLS and AUTH pass, and nothing is sent without --send-to', async (t) => {
  const { exchange, cfg } = await m365(t, [{ address: 'scans@contoso.com', apps: [CLIENT] }]);
  const lines: string[] = [];
  assert.equal(await testUpstream(cfg, 'm365', {}, (l) => lines.push(l)), true);
  assert.equal(lines[0], 'Testing upstream m365 (m365-smtp, 127.0.0.1)');
  assert.match(lines[1]!, /^ {2}ok {6}token: app contoso got a token for https:\/\/outlook\.office365\.com\/\.default, valid until /);
  assert.match(lines[2]!, /^ {2}ok {6}connect: 127\.0\.0\.1:\d+ answered the greeting and EHLO relay\.test$/);
  assert.match(lines[3]!, /^ {2}ok {6}STARTTLS: encrypted with TLSv1\.[23]$/);
  assert.equal(lines[4], '  ok      AUTH: XOAUTH2 as scans@contoso.com accepted');
  assert.match(lines.at(-1)!, /Nothing was sent/);
  assert.equal(exchange.deliveries.length, 0);
});

test('m365-smtp with --send-to: the test message is delivered from the mailbox', async (t) => {
  const { exchange, cfg } = await m365(t, [{ address: 'scans@contoso.com', apps: [CLIENT] }]);
  const lines: string[] = [];
  assert.equal(await testUpstream(cfg, 'm365', { sendTo: 'admin@contoso.com' }, (l) => lines.push(l)), true);
  assert.match(lines.at(-1)!, /^ {2}ok {6}send: test message from scans@contoso\.com to admin@contoso\.com accepted: 250 /);
  assert.equal(exchange.deliveries.length, 1);
  assert.deepEqual(exchange.deliveries[0]!.recipients, ['admin@contoso.com']);
  assert.match(exchange.deliveries[0]!.raw.toString(), /^Subject: smarthost test message through upstream m365\r$/m);
});

test('m365-smtp: a refused AUTH is reported with the fix, and nothing is sent even with --send-to', async (t) => {
  const { exchange, cfg } = await m365(t, [{ address: 'scans@contoso.com', apps: [] }]);
  const lines: string[] = [];
  assert.equal(await testUpstream(cfg, 'm365', { sendTo: 'admin@contoso.com' }, (l) => lines.push(l)), false);
  const failed = lines.findIndex((l) => l.startsWith('  FAILED  AUTH: XOAUTH2 as scans@contoso.com refused: 535 5.7.3'));
  assert.ok(failed > 0, lines.join('\n'));
  assert.match(lines[failed + 1]!, /^ {10}fix: Exchange Online refused the login: grant the app .*SMTP\.SendAsApp.*New-ServicePrincipal/);
  assert.equal(lines.at(-1), 'Nothing was sent.');
  assert.equal(exchange.deliveries.length, 0);
});

test('m365-smtp: a token failure stops at the first step with the AADSTS fix', async (t) => {
  const { idp, cfg } = await m365(t, [{ address: 'scans@contoso.com', apps: [CLIENT] }]);
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: 'another' });
  const lines: string[] = [];
  assert.equal(await testUpstream(cfg, 'm365', {}, (l) => lines.push(l)), false);
  assert.match(lines[1]!, /^ {2}FAILED {2}token: .*client secret is wrong.*AADSTS7000215/);
  assert.equal(lines.length, 3, 'no connection is tried without a token');
});

test('m365-connector: connect and STARTTLS to the tenant MX', async (t) => {
  const mx = await startFakeMx({ acceptedDomains: ['contoso.com'] });
  t.after(() => mx.close());
  const lines: string[] = [];
  const cfg = config({ tenant: { type: 'm365-connector', host: '127.0.0.1', port: mx.port, verifyCertificate: false } });
  assert.equal(await testUpstream(cfg, 'tenant', {}, (l) => lines.push(l)), true);
  assert.deepEqual(lines.slice(1, 3).map((l) => l.split(':')[0]), ['  ok      connect', '  ok      STARTTLS']);
  assert.equal(mx.deliveries.length, 0);
});

test('smtp: AUTH with the configured user, and a refused connection names the firewall', async (t) => {
  const sink = await startSink({ auth: { user: 'relay', pass: 'pw' } });
  t.after(() => sink.close());
  const ok: string[] = [];
  const cfg = config({ mail: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none', auth: { user: 'relay', pass: 'pw' } } });
  assert.equal(await testUpstream(cfg, 'mail', {}, (l) => ok.push(l)), true);
  assert.equal(ok.at(-2), '  ok      AUTH: PLAIN as relay accepted');

  const closed = await freePort();
  const lines: string[] = [];
  const down = config({ mail: { type: 'smtp', host: '127.0.0.1', port: closed, security: 'starttls' } });
  assert.equal(await testUpstream(down, 'mail', {}, (l) => lines.push(l)), false);
  assert.match(lines[1]!, new RegExp(`^ {2}FAILED {2}connect: 127\\.0\\.0\\.1:${closed}: .*ECONNREFUSED`));
  assert.match(lines[2]!, /fix: check host and port, and that the firewall/);
});

test('an unknown upstream name is a usage error listing the configured ones', async () => {
  const cfg = config({ outbox: { type: 'outbox', dir: '/tmp/o' } });
  await assert.rejects(testUpstream(cfg, 'nope', {}, () => {}), (err: unknown) => err instanceof UsageError && /configured: outbox/.test(err.message));
  const lines: string[] = [];
  assert.equal(await testUpstream(cfg, 'outbox', {}, (l) => lines.push(l)), false);
  assert.match(lines[1]!, /has no connection to test/);
});

test('the built CLI: smarthost test-upstream NAME exits 0 when every step passes, 1 otherwise', async (t) => {
  const { execFile } = await import('node:child_process');
  const { writeFile } = await import('node:fs/promises');
  const { stringify } = await import('yaml');
  const { CLI, tempDir } = await import('../helpers/daemon.js');
  const { exchange, idp } = await m365(t, [{ address: 'scans@contoso.com', apps: [CLIENT] }]);
  const dir = await tempDir();
  t.after(() => dir.remove());
  const file = `${dir.path}/smarthost.yaml`;
  await writeFile(
    file,
    stringify({
      spool: { dir: `${dir.path}/spool` },
      listeners: [{ name: 'relay', role: 'relay', port: 2525 }],
      microsoft: { apps: { contoso: { tenantId: TENANT, clientId: CLIENT, clientSecret: { env: 'TEST_M365_SECRET' }, authorityHost: idp.url, caFile: idp.caFile } } },
      upstreams: { m365: { type: 'm365-smtp', app: 'contoso', mailbox: 'scans@contoso.com', host: '127.0.0.1', port: exchange.port, verifyCertificate: false } },
      routing: { default: 'm365' },
    }),
  );
  const run = (secret: string) =>
    new Promise<{ code: number; stdout: string }>((resolve) => {
      execFile(process.execPath, [CLI, 'test-upstream', 'm365', '--config', file], { env: { ...process.env, TEST_M365_SECRET: secret } }, (err, stdout) =>
        resolve({ code: err ? Number((err as { code?: number }).code) : 0, stdout }),
      );
    });
  const ok = await run('s3cret');
  assert.equal(ok.code, 0, ok.stdout);
  assert.match(ok.stdout, /ok {6}AUTH: XOAUTH2 as scans@contoso\.com accepted/);
  const bad = await run('Wr0ng-S3cret-Value');
  assert.equal(bad.code, 1);
  assert.match(bad.stdout, /FAILED {2}token: .*AADSTS7000215/);
  assert.doesNotMatch(bad.stdout + ok.stdout, /s3cret|Wr0ng-S3cret-Value/, 'the secret is never printed');
});
