/** MX host derivation, the Direct Send recipient check (IDNs in either form), and the per-mailbox connection limit. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { acceptsRecipient, remoteHost } from '../../src/upstreams/index.js';
import { acceptsRecipient as directSendAccepts, connectorHost, mxHostForDomain } from '../../src/upstreams/m365/direct-send.js';
import { KeyedLimit } from '../../src/upstreams/keyed-limit.js';

test('the MX host is the domain with dots turned into hyphens under mail.protection.outlook.com', () => {
  assert.equal(mxHostForDomain('contoso.com'), 'contoso-com.mail.protection.outlook.com');
  assert.equal(mxHostForDomain('Mail.Contoso.co.uk'), 'mail-contoso-co-uk.mail.protection.outlook.com');
  assert.equal(mxHostForDomain('my-company.com'), 'my-company-com.mail.protection.outlook.com', 'hyphens stay');
  assert.equal(mxHostForDomain('contoso.com.'), 'contoso-com.mail.protection.outlook.com', 'a trailing dot is dropped');
});

test('an explicit host wins over the derived one', () => {
  assert.equal(connectorHost({ domain: 'contoso.com' }), 'contoso-com.mail.protection.outlook.com');
  assert.equal(connectorHost({ domain: 'contoso.com', host: 'contoso-com.o-v1.mx.microsoft' }), 'contoso-com.o-v1.mx.microsoft');
});

test('Direct Send accepts only recipients in the accepted domains (case-insensitive, exact domain)', () => {
  const config = { mode: 'directSend' as const, acceptedDomains: ['contoso.com', 'fabrikam.com'] };
  assert.equal(directSendAccepts(config, 'alice@contoso.com'), true);
  assert.equal(directSendAccepts(config, 'Bob@FABRIKAM.COM'), true);
  assert.equal(directSendAccepts(config, 'eve@example.net'), false);
  assert.equal(directSendAccepts(config, 'eve@sub.contoso.com'), false, 'a subdomain is another domain');
  assert.equal(directSendAccepts(config, 'eve@contoso.com.evil.net'), false);
  assert.equal(directSendAccepts(config, 'no-at-sign'), false);
  assert.equal(directSendAccepts({ mode: 'connector', acceptedDomains: ['contoso.com'] }, 'eve@example.net'), true, 'a connector relays anywhere');
});

test('Direct Send compares an IDN tenant domain in its A-label form, however config and recipient spell it', () => {
  const listedAscii = { mode: 'directSend' as const, acceptedDomains: ['xn--bcher-kva.de'] };
  assert.equal(directSendAccepts(listedAscii, 'anna@bücher.de'), true, 'the Unicode form of the listed xn-- domain');
  assert.equal(directSendAccepts(listedAscii, 'anna@BÜCHER.de'), true);
  assert.equal(directSendAccepts(listedAscii, 'anna@xn--bcher-kva.de'), true);
  assert.equal(directSendAccepts(listedAscii, 'anna@bucher.de'), false, 'not the same domain without the umlaut');
  const listedUnicode = { mode: 'directSend' as const, acceptedDomains: ['bücher.de'] };
  assert.equal(directSendAccepts(listedUnicode, 'anna@xn--bcher-kva.de'), true);
  assert.equal(directSendAccepts(listedUnicode, 'anna@bücher.de'), true);

  const config = parseConfig(
    [
      'spool: { dir: /tmp/x }',
      'listeners: [{ name: relay, role: relay, port: 2525 }]',
      'upstreams:',
      '  tenant: { type: m365-connector, mode: directSend, domain: bücher.de, acceptedDomains: [Bücher.de, contoso.com] }',
      'routing: { default: tenant }',
    ].join('\n'),
  );
  const tenant = config.upstreams.tenant!;
  assert.ok(tenant.type === 'm365-connector');
  assert.deepEqual(tenant.acceptedDomains, ['xn--bcher-kva.de', 'contoso.com'], 'normalised to lower-case A-labels when the config is read');
  assert.equal(remoteHost(tenant), 'xn--bcher-kva-de.mail.protection.outlook.com');
  assert.equal(acceptsRecipient(tenant, 'anna@bücher.de'), true);
  assert.equal(acceptsRecipient(tenant, 'anna@xn--bcher-kva.de'), true);
});

test('an acceptedDomains entry that is no domain in either form is refused at its key path', () => {
  // Not a malformed A-label such as xn--zz.de: Node 20 and 22 refuse it, Node 24's URL parser passes it through.
  for (const bad of ['"not a domain"', 'contoso', '"a/b.com"']) {
    assert.throws(
      () => parseConfig(['spool: { dir: /tmp/x }', 'listeners: [{ name: relay, role: relay, port: 2525 }]', 'upstreams:', `  tenant: { type: m365-connector, mode: directSend, domain: contoso.com, acceptedDomains: [contoso.com, ${bad}] }`, 'routing: { default: tenant }'].join('\n'), 'test.yaml'),
      (err: unknown) => (err as { problems?: string[] }).problems?.some((p) => p.startsWith('upstreams.tenant.acceptedDomains[1]: expected a domain name')) === true,
      bad,
    );
  }
});

test('acceptsRecipient and remoteHost answer for every upstream type', () => {
  const config = parseConfig(
    [
      'spool: { dir: /tmp/x }',
      'listeners: [{ name: relay, role: relay, port: 2525 }]',
      'upstreams:',
      '  tenant: { type: m365-connector, mode: directSend, domain: contoso.com, acceptedDomains: [contoso.com] }',
      '  outbox: { type: outbox, dir: /tmp/o }',
      '  m365: { type: m365-smtp, mailbox: scans@contoso.com, legacyBasicAuth: { user: scans@contoso.com, pass: x } }',
      'routing: { default: tenant }',
    ].join('\n'),
  );
  assert.equal(acceptsRecipient(config.upstreams.tenant!, 'a@contoso.com'), true);
  assert.equal(acceptsRecipient(config.upstreams.tenant!, 'a@example.net'), false);
  assert.equal(acceptsRecipient(config.upstreams.outbox!, 'a@example.net'), true);
  assert.equal(remoteHost(config.upstreams.tenant!), 'contoso-com.mail.protection.outlook.com');
  assert.equal(remoteHost(config.upstreams.m365!), 'smtp.office365.com');
  assert.equal(remoteHost(config.upstreams.outbox!), undefined);
});

test('KeyedLimit runs at most `limit` tasks per key, other keys unaffected, and forgets idle keys', async () => {
  const limit = new KeyedLimit(3);
  let running = 0;
  let peak = 0;
  const gates: (() => void)[] = [];
  const task = () =>
    limit.run('scans@contoso.com', async () => {
      running++;
      peak = Math.max(peak, running);
      await new Promise<void>((resolve) => gates.push(resolve));
      running--;
    });
  const all = Array.from({ length: 7 }, task);
  await new Promise((r) => setImmediate(r));
  assert.equal(running, 3, 'three run, four wait');
  assert.equal(limit.inUse('scans@contoso.com'), 7);
  let other = false;
  await limit.run('other@contoso.com', async () => void (other = true));
  assert.ok(other, 'another mailbox is not held up');
  while (gates.length > 0) {
    gates.shift()!();
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(all);
  assert.equal(peak, 3);
  assert.equal(limit.inUse('scans@contoso.com'), 0);
});
