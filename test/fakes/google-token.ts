/**
 * A local Google OAuth 2.0 token endpoint for service accounts, following "Using OAuth 2.0 for Server to Server
 * Applications" (https://developers.google.com/identity/protocols/oauth2/service-account#httprest):
 * POST application/x-www-form-urlencoded with grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer and
 * assertion=<JWT>; the JWT header is {"alg":"RS256","typ":"JWT"}, its claims iss (the service account's
 * client_email), sub (the impersonated user, domain-wide delegation), scope, aud (this endpoint's URL), iat and
 * exp (at most one hour after iat); its signature is checked against the service account's public key. The
 * answer is {"access_token", "expires_in", "token_type":"Bearer"}, errors are RFC 6749 §5.2 objects
 * ({"error":"invalid_grant","error_description":"Invalid JWT Signature."}, "unauthorized_client" when the
 * delegation does not cover the user or scope).
 *
 * makeServiceAccount() creates a key pair with node:crypto and the JSON key file Google would hand out.
 */
import { createPublicKey, generateKeyPairSync, randomBytes, verify, type KeyObject } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface TestServiceAccount {
  clientEmail: string;
  keyId: string;
  privateKeyPem: string;
  publicKey: KeyObject;
  /** The key file's content, as downloaded from the Cloud console. */
  json: string;
}

export function makeServiceAccount(clientEmail = 'smarthost@smarthost-test.iam.gserviceaccount.com'): TestServiceAccount {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const privateKeyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const keyId = randomBytes(20).toString('hex');
  const json = JSON.stringify({
    type: 'service_account',
    project_id: 'smarthost-test',
    private_key_id: keyId,
    private_key: privateKeyPem,
    client_email: clientEmail,
    client_id: '100000000000000000001',
    auth_uri: 'https://accounts.google.com/o/oauth2/auth',
    token_uri: 'https://oauth2.googleapis.com/token',
  });
  return { clientEmail, keyId, privateKeyPem, publicKey: createPublicKey(privateKey), json };
}

export interface IssuedToken {
  token: string;
  sub: string;
  scope: string;
  expiresAt: number;
}

export interface GoogleTokenFake {
  url: string;
  /** Every assertion presented, with the verdict. */
  requests: { claims?: Record<string, unknown>; header?: Record<string, unknown>; status: number; error?: string }[];
  issued: IssuedToken[];
  /** Users the service account may impersonate (domain-wide delegation); others get unauthorized_client. */
  delegated: Set<string>;
  /** Token lifetime in seconds (expires_in). */
  lifetimeS: number;
  /** The endpoint's clock (epoch ms), for iat/exp checks and token expiry; tests that move time move it too. */
  now: () => number;
  /** The next `count` requests answer `status` with `body`, before any check. */
  failNext(count: number, status: number, body: Record<string, unknown>): void;
  /** A token this endpoint issued, still valid, for this user. */
  isValid(token: string, user: string): boolean;
  /** Makes every token issued so far invalid (as if revoked). */
  revokeAll(): void;
  close(): Promise<void>;
}

export async function startGoogleTokenFake(account: Pick<TestServiceAccount, 'clientEmail' | 'publicKey' | 'keyId'>, options: { delegated?: string[] } = {}): Promise<GoogleTokenFake> {
  const scripted: { status: number; body: Record<string, unknown> }[] = [];
  const revoked = new Set<string>();
  const fake: GoogleTokenFake = {
    url: '',
    requests: [],
    issued: [],
    delegated: new Set((options.delegated ?? []).map((d) => d.toLowerCase())),
    lifetimeS: 3599,
    now: () => Date.now(),
    failNext(count, status, body) {
      for (let i = 0; i < count; i++) scripted.push({ status, body });
    },
    isValid(token, user) {
      return fake.issued.some((t) => t.token === token && t.sub.toLowerCase() === user.toLowerCase() && t.expiresAt > fake.now() && !revoked.has(token));
    },
    revokeAll() {
      for (const t of fake.issued) revoked.add(t.token);
    },
    close: () => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve()))),
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const record: GoogleTokenFake['requests'][number] = { status: 0 };
      fake.requests.push(record);
      const answer = (status: number, body: Record<string, unknown>) => {
        record.status = status;
        if (typeof body.error === 'string') record.error = `${body.error}: ${String(body.error_description ?? '')}`;
        res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
        res.end(JSON.stringify(body));
      };
      const script = scripted.shift();
      if (script) return answer(script.status, script.body);
      if (req.method !== 'POST' || !/^application\/x-www-form-urlencoded\b/.test(req.headers['content-type'] ?? '')) {
        return answer(400, { error: 'invalid_request', error_description: 'expected a form POST' });
      }
      const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
      if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
        return answer(400, { error: 'unsupported_grant_type', error_description: `Invalid grant_type: ${form.get('grant_type') ?? ''}` });
      }
      const parts = (form.get('assertion') ?? '').split('.');
      if (parts.length !== 3) return answer(400, { error: 'invalid_grant', error_description: 'Invalid JWT: not three segments.' });
      const [headerPart, claimsPart, signaturePart] = parts as [string, string, string];
      let header: Record<string, unknown>;
      let claims: Record<string, unknown>;
      try {
        header = JSON.parse(Buffer.from(headerPart, 'base64url').toString('utf8')) as Record<string, unknown>;
        claims = JSON.parse(Buffer.from(claimsPart, 'base64url').toString('utf8')) as Record<string, unknown>;
      } catch {
        return answer(400, { error: 'invalid_grant', error_description: 'Invalid JWT: segments are not JSON.' });
      }
      record.header = header;
      record.claims = claims;
      if (header.alg !== 'RS256') return answer(400, { error: 'invalid_grant', error_description: 'Invalid JWT: alg must be RS256.' });
      const signed = verify('sha256', Buffer.from(`${headerPart}.${claimsPart}`), account.publicKey, Buffer.from(signaturePart, 'base64url'));
      if (!signed || (header.kid !== undefined && header.kid !== account.keyId)) return answer(400, { error: 'invalid_grant', error_description: 'Invalid JWT Signature.' });
      const now = Math.floor(fake.now() / 1000);
      const { iss, sub, scope, aud, iat, exp } = claims;
      if (iss !== account.clientEmail) return answer(401, { error: 'invalid_client', error_description: 'The OAuth client was not found.' });
      if (aud !== fake.url) return answer(400, { error: 'invalid_grant', error_description: `Invalid JWT: aud must be ${fake.url}.` });
      if (typeof iat !== 'number' || typeof exp !== 'number' || iat > now + 60 || exp <= now || exp - iat > 3600) {
        return answer(400, { error: 'invalid_grant', error_description: 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values.' });
      }
      if (typeof scope !== 'string' || !scope.split(' ').includes('https://mail.google.com/')) {
        return answer(400, { error: 'invalid_scope', error_description: 'Invalid OAuth scope or ID token audience provided.' });
      }
      if (typeof sub !== 'string' || !fake.delegated.has(sub.toLowerCase())) {
        return answer(401, {
          error: 'unauthorized_client',
          error_description: 'Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.',
        });
      }
      const token = `ya29.fake-${randomBytes(24).toString('base64url')}`;
      fake.issued.push({ token, sub, scope, expiresAt: fake.now() + fake.lifetimeS * 1000 });
      answer(200, { access_token: token, expires_in: fake.lifetimeS, token_type: 'Bearer' });
    });
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  fake.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`;
  return fake;
}
