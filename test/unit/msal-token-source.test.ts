/**
 * The Microsoft token provider (msal-node, client credentials) against the fake identity provider over HTTPS:
 * client secrets and certificate assertions, the cache and its refresh, and failures that defer (4.7.0) with
 * the fix named, logged once, never showing a secret or a token.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { Secret } from '../../src/config/secret.js';
import { createLogger } from '../../src/log.js';
import { SmtpError } from '../../src/smtp-error.js';
import type { MicrosoftAppConfig } from '../../src/upstreams/oauth/microsoft-config.js';
import { EXCHANGE_SCOPE, graphScope, MicrosoftApps, MsalTokenSource } from '../../src/upstreams/oauth/msal.js';
import { FAILURES, startIdentityProvider, thumbprintSha256, type FakeIdentityProvider } from '../fakes/identity-provider.js';
import { makeTestCertificate } from '../helpers/tls.js';

const TENANT = '11111111-2222-3333-4444-555555555555';
const CLIENT = 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee';
const SECRET = 'Abc8Q~not-a-real-secret-0123456789';

async function idpFor(t: TestContext): Promise<FakeIdentityProvider> {
  const idp = await startIdentityProvider();
  t.after(() => idp.close());
  return idp;
}

function capturedLog() {
  const sink = new PassThrough();
  const lines: Record<string, unknown>[] = [];
  let text = '';
  sink.on('data', (c: Buffer) => {
    text += c.toString();
    for (const l of c.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
  });
  return { log: createLogger('debug', sink), lines, text: () => text };
}

function appConfig(idp: FakeIdentityProvider, extra: Partial<MicrosoftAppConfig> = {}): MicrosoftAppConfig {
  return {
    tenantId: TENANT,
    clientId: CLIENT,
    clientSecret: new Secret(SECRET),
    authorityHost: idp.url,
    graphBaseUrl: 'https://graph.microsoft.com/v1.0',
    caFile: idp.caFile,
    ...extra,
  };
}

test('a client secret gets a token, and the cache answers the next requests until shortly before expiry', async (t) => {
  const idp = await idpFor(t);
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: SECRET });
  const source = new MsalTokenSource('contoso', appConfig(idp));

  const first = await source.getToken(EXCHANGE_SCOPE);
  assert.equal(idp.issued.length, 1);
  assert.equal(first.token, idp.issued[0]!.token);
  assert.equal(idp.issued[0]!.scope, EXCHANGE_SCOPE);
  assert.equal(idp.issued[0]!.credential, 'secret');
  assert.ok(first.expiresAt > Date.now() + 3000_000 && first.expiresAt <= Date.now() + 3600_000, 'expiresAt from expires_in');

  const again = await source.getToken(EXCHANGE_SCOPE);
  assert.equal(again.token, first.token, 'served from the cache');
  assert.equal(idp.issued.length, 1, 'no second round trip');

  const forced = await source.getToken(EXCHANGE_SCOPE, { forceRefresh: true });
  assert.notEqual(forced.token, first.token, 'forceRefresh skips the cache');
  assert.equal(idp.issued.length, 2);

  const graph = await source.getToken(graphScope({ graphBaseUrl: 'https://graph.microsoft.com/v1.0' }));
  assert.equal(idp.issued[2]!.scope, 'https://graph.microsoft.com/.default', 'each scope has its own token');
  assert.notEqual(graph.token, forced.token);
});

test('a token within the renewal margin (5 minutes before expiry) is replaced by a new one', async (t) => {
  const idp = await idpFor(t);
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: SECRET });
  idp.tokenLifetimeSeconds = 240; // inside msal's 300 s renewal offset from the start
  const source = new MsalTokenSource('contoso', appConfig(idp));
  const a = await source.getToken(EXCHANGE_SCOPE);
  const b = await source.getToken(EXCHANGE_SCOPE);
  assert.notEqual(a.token, b.token);
  assert.equal(idp.issued.length, 2, 'a token about to expire is never handed out again');
  assert.ok(idp.introspect(b.token), 'the new token is live at the provider');
});

test('concurrent requests for one scope share a single round trip', async (t) => {
  const idp = await idpFor(t);
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: SECRET });
  const source = new MsalTokenSource('contoso', appConfig(idp));
  const tokens = await Promise.all(Array.from({ length: 8 }, () => source.getToken(EXCHANGE_SCOPE)));
  assert.equal(new Set(tokens.map((x) => x.token)).size, 1);
  assert.equal(idp.requests.length, 1);
});

test('a certificate credential signs a PS256 assertion naming the certificate by its SHA-256 thumbprint', async (t) => {
  const idp = await idpFor(t);
  const cert = await makeTestCertificate();
  const pem = cert.cert.toString();
  idp.register({ tenantId: TENANT, clientId: CLIENT, certificate: pem });
  const { clientSecret: _none, ...base } = appConfig(idp);
  const source = new MsalTokenSource('contoso', {
    ...base,
    certificate: { thumbprintSha256: thumbprintSha256(pem), privateKey: new Secret(cert.key.toString()) },
  });
  const token = await source.getToken(EXCHANGE_SCOPE);
  assert.equal(idp.issued.length, 1);
  assert.equal(idp.issued[0]!.credential, 'certificate');
  assert.equal(token.token, idp.issued[0]!.token);
});

test('an assertion signed by another key is refused: 451 4.7.0 naming the certificate fix', async (t) => {
  const idp = await idpFor(t);
  const cert = await makeTestCertificate();
  const pem = cert.cert.toString();
  idp.register({ tenantId: TENANT, clientId: CLIENT, certificate: pem });
  const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const { clientSecret: _none, ...base } = appConfig(idp);
  const source = new MsalTokenSource('contoso', { ...base, certificate: { thumbprintSha256: thumbprintSha256(pem), privateKey: new Secret(otherKey) } });
  const err = await source.getToken(EXCHANGE_SCOPE).then(() => assert.fail('expected a failure'), (e: unknown) => e);
  assert.ok(err instanceof SmtpError);
  assert.equal(err.code, 451);
  assert.equal(err.enhanced, '4.7.0');
  assert.equal(err.temporary, true, 'a token failure defers, never bounces');
  assert.match(err.message, /AADSTS700027/);
  assert.match(err.message, /upload the certificate/);
  assert.equal(idp.issued.length, 0);
});

test('a wrong secret defers with 4.7.0 naming AADSTS7000215 and the fix, logged once, then recovery is logged', async (t) => {
  const idp = await idpFor(t);
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: 'the-right-one' });
  const { log, lines, text } = capturedLog();
  const source = new MsalTokenSource('contoso', appConfig(idp), { log });

  for (let i = 0; i < 3; i++) {
    const err = await source.getToken(EXCHANGE_SCOPE).then(() => assert.fail('expected a failure'), (e: unknown) => e);
    assert.ok(err instanceof SmtpError);
    assert.equal(err.reply.slice(0, 9), '451 4.7.0');
    assert.match(err.message, /client secret is wrong: copy the secret's Value/);
    assert.match(err.message, /AADSTS7000215/);
  }
  const failures = lines.filter((l) => l.event === 'token.failed');
  assert.equal(failures.length, 1, 'the same failure is logged once, not per delivery');
  assert.equal(failures[0]!.level, 'error');
  assert.equal(failures[0]!.aadsts, 'AADSTS7000215');
  assert.equal(failures[0]!.app, 'contoso');
  assert.doesNotMatch(text(), new RegExp(SECRET.replace(/[.*+?^${}()|[\]\\~]/g, '\\$&')), 'the secret never appears in the log');

  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: SECRET });
  const token = await source.getToken(EXCHANGE_SCOPE);
  assert.ok(lines.some((l) => l.event === 'token.recovered'));
  assert.ok(!text().includes(token.token), 'the token never appears in the log');
});

test('unknown tenant, unknown app and scripted failures each name their own fix', async (t) => {
  const idp = await idpFor(t);
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: SECRET });
  const cases: [Partial<MicrosoftAppConfig>, RegExp][] = [
    [{ tenantId: '99999999-2222-3333-4444-555555555555' }, /AADSTS90002.*|tenant does not exist/],
    [{ clientId: '00000000-0000-0000-0000-000000000000' }, /no application with this clientId exists in the tenant/],
  ];
  for (const [change, fix] of cases) {
    const err = await new MsalTokenSource('x', appConfig(idp, change)).getToken(EXCHANGE_SCOPE).then(() => assert.fail('expected a failure'), (e: unknown) => e);
    assert.ok(err instanceof SmtpError && err.enhanced === '4.7.0');
    assert.match(err.message, fix);
  }
  idp.failNext(FAILURES.invalidSecret);
  const source = new MsalTokenSource('contoso', appConfig(idp));
  await assert.rejects(source.getToken(EXCHANGE_SCOPE), /AADSTS7000215/);
  assert.ok(await source.getToken(EXCHANGE_SCOPE), 'the failure was for one request only');
});

test('an unreachable identity provider defers with 4.7.0 naming the network', async () => {
  const source = new MsalTokenSource('contoso', {
    tenantId: TENANT,
    clientId: CLIENT,
    clientSecret: new Secret(SECRET),
    authorityHost: 'https://127.0.0.1:1',
    graphBaseUrl: 'https://graph.microsoft.com/v1.0',
  });
  const err = await source.getToken(EXCHANGE_SCOPE).then(() => assert.fail('expected a failure'), (e: unknown) => e);
  assert.ok(err instanceof SmtpError);
  assert.equal(err.enhanced, '4.7.0');
  assert.match(err.message, /could not be reached/);
});

test('the registry keeps one token source (one msal application, one cache) per app registration', async (t) => {
  const idp = await idpFor(t);
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: SECRET });
  const apps = new MicrosoftApps({ apps: { contoso: appConfig(idp) } });
  const a = apps.tokenSource('contoso');
  const b = apps.tokenSource('contoso');
  assert.equal(a, b);
  await a.getToken(EXCHANGE_SCOPE);
  await b.getToken(EXCHANGE_SCOPE);
  assert.equal(idp.requests.length, 1, 'the second user of the app is served from the shared cache');
  assert.equal(a.ca, await readFile(idp.caFile, 'utf8'), 'the CA is exposed for other HTTPS clients of the app (Graph)');
  assert.throws(() => apps.tokenSource('fabrikam'), /microsoft\.apps\.fabrikam is not defined/);
});
