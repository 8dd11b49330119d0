/**
 * Google service-account tokens: the RS256 JWT Google's server-to-server flow wants, and the token lifecycle
 * (cached, refreshed ahead of expiry, one round trip for concurrent callers, failures deferred with 4.7.0,
 * naming the fix, alerted once) against the local token endpoint that checks the signature.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { verify } from 'node:crypto';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { Secret } from '../../src/config/secret.js';
import { createLogger } from '../../src/log.js';
import { SmtpError } from '../../src/smtp-error.js';
import { GMAIL_SCOPE, type GoogleUpstreamConfig } from '../../src/upstreams/google/config.js';
import { MAX_ASSERTION_LIFETIME_S, serviceAccountClaims, signJwt } from '../../src/upstreams/google/jwt.js';
import { ServiceAccountTokenSource } from '../../src/upstreams/google/token-source.js';
import type { TokenRefreshEvent } from '../../src/upstreams/oauth/token-source.js';
import { makeServiceAccount, startGoogleTokenFake, type GoogleTokenFake, type TestServiceAccount } from '../fakes/google-token.js';

type Log = Record<string, unknown>;

const account = makeServiceAccount();

test('the JWT is RS256 over header.claims, verifies with the account\'s public key, and carries Google\'s claims', () => {
  const claims = serviceAccountClaims({ clientEmail: account.clientEmail, subject: 'scans@contoso.test', scope: GMAIL_SCOPE, audience: 'https://oauth2.googleapis.com/token', nowMs: 1_700_000_000_123 });
  const jwt = signJwt(claims, account.privateKeyPem, account.keyId);
  const [header, body, signature] = jwt.split('.') as [string, string, string];
  assert.deepEqual(JSON.parse(Buffer.from(header, 'base64url').toString()), { alg: 'RS256', typ: 'JWT', kid: account.keyId });
  assert.deepEqual(JSON.parse(Buffer.from(body, 'base64url').toString()), {
    iss: account.clientEmail,
    sub: 'scans@contoso.test',
    scope: 'https://mail.google.com/',
    aud: 'https://oauth2.googleapis.com/token',
    iat: 1_700_000_000,
    exp: 1_700_000_000 + MAX_ASSERTION_LIFETIME_S,
  });
  assert.ok(verify('sha256', Buffer.from(`${header}.${body}`), account.publicKey, Buffer.from(signature, 'base64url')), 'the signature verifies');
  const other = makeServiceAccount();
  assert.ok(!verify('sha256', Buffer.from(`${header}.${body}`), other.publicKey, Buffer.from(signature, 'base64url')), 'and not with another key');
  assert.ok(!/[+/=]/.test(jwt), 'base64url without padding');
});

function capturedLog(): { log: ReturnType<typeof createLogger>; lines: Log[] } {
  const lines: Log[] = [];
  const sink = new PassThrough();
  sink.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as Log);
  });
  return { log: createLogger('debug', sink), lines };
}

async function tokenFake(t: TestContext, delegated = ['scans@contoso.test'], sa: TestServiceAccount = account): Promise<GoogleTokenFake> {
  const fake = await startGoogleTokenFake(sa, { delegated });
  t.after(() => fake.close());
  return fake;
}

function source(fake: GoogleTokenFake, o: { subject?: string; now?: () => number; log?: ReturnType<typeof createLogger>; sa?: TestServiceAccount; onRefresh?: (e: TokenRefreshEvent) => void } = {}) {
  const sa = o.sa ?? account;
  return new ServiceAccountTokenSource({
    account: { clientEmail: sa.clientEmail, keyId: sa.keyId, privateKey: new Secret(sa.privateKeyPem) },
    subject: o.subject ?? 'scans@contoso.test',
    tokenUrl: fake.url,
    refreshAheadMs: 5 * 60_000,
    timeoutMs: 5000,
    upstream: 'gmail',
    ...(o.log ? { log: o.log } : {}),
    ...(o.now ? { now: o.now } : {}),
    ...(o.onRefresh ? { onRefresh: o.onRefresh } : {}),
  });
}

test('a token is fetched once, cached, and fetched again only within refreshAhead of its expiry', async (t) => {
  const fake = await tokenFake(t);
  let now = Date.now();
  fake.now = () => now;
  const tokens = source(fake, { now: () => now });
  const first = await tokens.getToken(GMAIL_SCOPE);
  assert.ok(fake.isValid(first.token, 'scans@contoso.test'), 'the endpoint issued it for the impersonated mailbox');
  assert.equal(fake.requests[0]!.claims!.sub, 'scans@contoso.test');
  assert.equal(fake.requests[0]!.claims!.aud, fake.url);
  assert.equal(first.expiresAt, now + fake.lifetimeS * 1000);

  now += 10 * 60_000;
  assert.equal((await tokens.getToken(GMAIL_SCOPE)).token, first.token, 'cached while far from expiry');
  assert.equal(fake.issued.length, 1);

  now = first.expiresAt - 4 * 60_000; // inside the 5-minute refresh margin
  const second = await tokens.getToken(GMAIL_SCOPE);
  assert.notEqual(second.token, first.token);
  assert.equal(fake.issued.length, 2);

  const forced = await tokens.getToken(GMAIL_SCOPE, { forceRefresh: true });
  assert.notEqual(forced.token, second.token, 'forceRefresh always asks again');
});

test('concurrent requests for a token share one round trip', async (t) => {
  const fake = await tokenFake(t);
  const tokens = source(fake);
  const all = await Promise.all(Array.from({ length: 5 }, () => tokens.getToken(GMAIL_SCOPE)));
  assert.equal(new Set(all.map((a) => a.token)).size, 1);
  assert.equal(fake.requests.length, 1);
});

test('a mailbox outside the delegation defers with 4.7.0 naming the fix, alerted once, and recovery is logged', async (t) => {
  const fake = await tokenFake(t, []);
  const { log, lines } = capturedLog();
  const tokens = source(fake, { log });
  for (let i = 0; i < 2; i++) {
    await assert.rejects(tokens.getToken(GMAIL_SCOPE), (err: unknown) => {
      assert.ok(err instanceof SmtpError);
      assert.equal(err.code, 451);
      assert.equal(err.enhanced, '4.7.0');
      assert.match(err.message, /domain-wide delegation/);
      assert.match(err.message, /unauthorized_client/);
      return true;
    });
  }
  assert.equal(lines.filter((l) => l.event === 'token.failed').length, 1, 'the same failure is logged once');
  assert.equal(lines.find((l) => l.event === 'token.failed')!.level, 'error');
  fake.delegated.add('scans@contoso.test');
  await tokens.getToken(GMAIL_SCOPE);
  assert.equal(lines.filter((l) => l.event === 'token.recovered').length, 1);
  assert.ok(!JSON.stringify(lines).includes('PRIVATE KEY'), 'no key material in the logs');
});

test('token metrics hear of each token requested (not of cached ones) and of each failure, under the upstream name', async (t) => {
  const fake = await tokenFake(t, ['scans@contoso.test']);
  const events: TokenRefreshEvent[] = [];
  const tokens = source(fake, { onRefresh: (e) => events.push(e) });
  const token = await tokens.getToken(GMAIL_SCOPE);
  await tokens.getToken(GMAIL_SCOPE);
  assert.deepEqual(events, [{ app: 'gmail', result: 'success', expiresAt: token.expiresAt }]);
  const refused = source(fake, { subject: 'intruder@contoso.test', onRefresh: (e) => events.push(e) });
  await assert.rejects(refused.getToken(GMAIL_SCOPE));
  assert.deepEqual(events.at(-1), { app: 'gmail', result: 'failure' });
  assert.equal(events.length, 2);
});

test('a JWT signed with a key the endpoint does not know is refused as an invalid signature', async (t) => {
  const fake = await tokenFake(t);
  const impostor = { ...makeServiceAccount(), clientEmail: account.clientEmail, keyId: account.keyId };
  await assert.rejects(source(fake, { sa: impostor }).getToken(GMAIL_SCOPE), /no valid key of this service account.*Invalid JWT Signature/);
  assert.equal(fake.requests[0]!.status, 400);
});

test('an unreachable or failing token endpoint defers too', async (t) => {
  const fake = await tokenFake(t);
  fake.failNext(1, 503, { error: 'backend_error' });
  await assert.rejects(source(fake).getToken(GMAIL_SCOPE), (err: unknown) => err instanceof SmtpError && err.temporary && /HTTP 503/.test(err.message));
  await fake.close();
  await assert.rejects(source(fake).getToken(GMAIL_SCOPE), (err: unknown) => err instanceof SmtpError && err.reply.startsWith('451 4.7.0') && /unreachable/.test(err.message));
});

test('the google upstream reads the service account key file through a secret and refuses a broken one', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'smarthost-google-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const good = join(dir, 'sa.json');
  const bad = join(dir, 'bad.json');
  await writeFile(good, account.json);
  await writeFile(bad, JSON.stringify({ type: 'service_account', client_email: 'x@y', private_key: 'not a key' }));
  const yaml = (file: string, extra = '') =>
    `spool: { dir: /s }\nlisteners: [{ name: relay, role: relay, port: 2525 }]\nupstreams:\n  gmail: { type: google, serviceAccount: { file: ${file} }, mailbox: fromSender${extra} }\nrouting: { default: gmail }\n`;
  const config = parseConfig(yaml(good)).upstreams.gmail as GoogleUpstreamConfig;
  assert.equal(config.serviceAccount.clientEmail, account.clientEmail);
  assert.equal(config.serviceAccount.keyId, account.keyId);
  assert.equal(config.tokenUrl, 'https://oauth2.googleapis.com/token');
  assert.equal(config.host, 'smtp.gmail.com');
  assert.equal(config.security, 'starttls');
  assert.equal(String(config.serviceAccount.privateKey), '[secret]', 'the key prints as [secret]');
  assert.throws(() => parseConfig(yaml(bad)), (err: unknown) => err instanceof ConfigError && /upstreams\.gmail\.serviceAccount: the private_key .* is not a PEM private key/.test(err.message));
  assert.throws(() => parseConfig(yaml(good, ', tokenUrl: "http://token.example.com/token"')), (err: unknown) => err instanceof ConfigError && /tokenUrl: expected an https URL/.test(err.message));
});
