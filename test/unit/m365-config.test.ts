/** The microsoft.apps section and the m365-smtp / m365-connector upstream schemas: what check-config says. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, parseConfig } from '../../src/config/load.js';

function yaml(upstreams: string, extra = ''): string {
  return ['spool: { dir: /tmp/spool }', 'listeners: [{ name: relay, role: relay, port: 2525 }]', 'upstreams:', upstreams, 'routing: { default: m365 }', extra].join('\n');
}

function problems(text: string): string[] {
  try {
    parseConfig(text, 'test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems;
  }
  return [];
}

const APP = ['microsoft:', '  apps:', '    contoso:', '      tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47', '      clientId: 11111111-2222-3333-4444-555555555555'];

test('an app with a client secret and an m365-smtp upstream using it load with their defaults', () => {
  const config = parseConfig(yaml('  m365: { type: m365-smtp, app: contoso, mailbox: scans@contoso.com }', [...APP, '      clientSecret: { env: PATH }'].join('\n')));
  const app = config.microsoft.apps.contoso!;
  assert.equal(app.authorityHost, 'https://login.microsoftonline.com');
  assert.equal(app.graphBaseUrl, 'https://graph.microsoft.com/v1.0');
  assert.equal(String(app.clientSecret), '[secret]');
  const up = config.upstreams.m365!;
  assert.equal(up.type, 'm365-smtp');
  if (up.type !== 'm365-smtp') return;
  assert.equal(up.host, 'smtp.office365.com');
  assert.equal(up.port, 587);
  assert.equal(up.scope, 'https://outlook.office365.com/.default');
  assert.equal(up.maxConnectionsPerMailbox, 3);
});

test('an app needs exactly one credential, named by its key path', () => {
  assert.ok(problems(yaml('  m365: { type: m365-smtp, app: contoso, mailbox: fromSender }', APP.join('\n'))).some((p) => /^microsoft\.apps\.contoso\.clientSecret: expected exactly one credential: clientSecret or certificate \(none is set\)$/.test(p)));
  const both = [...APP, '      clientSecret: s', '      certificate: { thumbprintSha256: "' + 'ab'.repeat(32) + '", privateKey: k }'].join('\n');
  assert.ok(problems(yaml('  m365: { type: m365-smtp, app: contoso, mailbox: fromSender }', both)).some((p) => /^microsoft\.apps\.contoso\.certificate: .*not both/.test(p)));
});

test('a certificate thumbprint is 64 hex digits; colons and case as the portal shows them are accepted', () => {
  const colons = Array.from({ length: 32 }, () => 'AB').join(':');
  const ok = parseConfig(yaml('  m365: { type: m365-smtp, app: contoso, mailbox: fromSender }', [...APP, `      certificate: { thumbprintSha256: "${colons}", privateKey: k }`].join('\n')));
  assert.equal(ok.microsoft.apps.contoso!.certificate!.thumbprintSha256, 'ab'.repeat(32));
  const bad = problems(yaml('  m365: { type: m365-smtp, app: contoso, mailbox: fromSender }', [...APP, '      certificate: { thumbprintSha256: "A1B2", privateKey: k }'].join('\n')));
  assert.ok(bad.some((p) => /^microsoft\.apps\.contoso\.certificate\.thumbprintSha256: expected a SHA-256 thumbprint/.test(p)), bad.join('\n'));
});

test('an upstream naming an undefined app is refused with the defined ones listed', () => {
  const found = problems(yaml('  m365: { type: m365-smtp, app: fabrikam, mailbox: fromSender }', [...APP, '      clientSecret: s'].join('\n')));
  assert.ok(found.includes('upstreams.m365.app: names no app registration under microsoft.apps; defined: contoso, got "fabrikam"'), found.join('\n'));
});

test('m365-smtp needs app or legacyBasicAuth, and legacyBasicAuth a fixed mailbox', () => {
  assert.ok(problems(yaml('  m365: { type: m365-smtp, mailbox: scans@contoso.com }')).some((p) => p.startsWith('upstreams.m365.app: expected app')));
  const legacy = problems(yaml('  m365: { type: m365-smtp, mailbox: fromSender, legacyBasicAuth: { user: scans@contoso.com, pass: x } }'));
  assert.ok(legacy.some((p) => p.startsWith('upstreams.m365.mailbox: with legacyBasicAuth')), legacy.join('\n'));
  assert.ok(problems(yaml('  m365: { type: m365-smtp, mailbox: not-an-address, legacyBasicAuth: { user: a@b.c, pass: x } }')).some((p) => p.startsWith('upstreams.m365.mailbox: expected "fromSender"')));
});

test('m365-connector needs domain or host, and directSend its accepted domains', () => {
  assert.ok(problems(yaml('  m365: { type: m365-connector }')).some((p) => p.startsWith('upstreams.m365.domain: expected domain')));
  assert.ok(problems(yaml('  m365: { type: m365-connector, domain: contoso.com, mode: directSend }')).some((p) => p.startsWith('upstreams.m365.acceptedDomains: directSend needs')));
  const ok = parseConfig(yaml('  m365: { type: m365-connector, domain: Contoso.com, mode: directSend, acceptedDomains: [Contoso.com] }'));
  const up = ok.upstreams.m365!;
  assert.ok(up.type === 'm365-connector' && up.port === 25 && up.requireTls && up.acceptedDomains?.[0] === 'contoso.com');
});

test('the authority host must be https', () => {
  const found = problems(yaml('  m365: { type: m365-smtp, app: contoso, mailbox: fromSender }', [...APP, '      clientSecret: s', '      authorityHost: http://login.example'].join('\n')));
  assert.ok(found.some((p) => p.startsWith('microsoft.apps.contoso.authorityHost: expected an https:// URL')), found.join('\n'));
});
