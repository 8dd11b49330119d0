/**
 * A stand-in for the Microsoft identity platform (Entra ID) as msal-node's client-credentials flow uses it,
 * over HTTPS on 127.0.0.1 with the test certificate (tests trust it through the app's caFile). Follows:
 * - "Microsoft identity platform and the OAuth 2.0 client credentials flow": POST /{tenant}/oauth2/v2.0/token
 *   with grant_type=client_credentials, client_id, scope ({resource}/.default) and either client_secret or
 *   client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer + client_assertion;
 *   success is { token_type: "Bearer", expires_in, ext_expires_in, access_token }, failure is HTTP 400/401
 *   with { error, error_description: "AADSTSnnnn: ...", error_codes: [nnnn], trace_id, correlation_id }.
 *   https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow
 * - "Microsoft identity platform application authentication certificate credentials": the assertion is a JWT
 *   signed by the registered certificate's key (PS256, or RS256 for SHA-1 thumbprints) whose header names the
 *   certificate by "x5t#S256" (base64url SHA-256 thumbprint of its DER encoding), with aud = the token
 *   endpoint, iss = sub = client_id, and exp/nbf/jti.
 *   https://learn.microsoft.com/entra/identity-platform/certificate-credentials
 * - "OpenID Connect on the Microsoft identity platform": the metadata document at
 *   /{tenant}/v2.0/.well-known/openid-configuration (issuer, token_endpoint, authorization_endpoint, jwks_uri).
 *   https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc
 * - Error codes: AADSTS90002 (tenant not found), AADSTS700016 (application not found in the directory),
 *   AADSTS7000215 (invalid client secret), AADSTS700027 (assertion failed signature validation),
 *   AADSTS1002012 (scope without /.default). https://learn.microsoft.com/entra/identity-platform/reference-error-codes
 * Access tokens here are opaque random strings the fake remembers (real ones are JWTs nobody but the
 * resource should parse); the fake Exchange asks introspect() whether one is live, for which app and scope.
 */
import { createHash, constants, randomBytes, verify, X509Certificate } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { makeTestCertificate } from '../helpers/tls.js';

export interface RegisteredApp {
  tenantId: string;
  clientId: string;
  secret?: string;
  /** PEM certificate whose key signs the client assertion. */
  certificate?: string;
}

export interface IssuedToken {
  token: string;
  tenantId: string;
  clientId: string;
  scope: string;
  issuedAt: number;
  expiresAt: number;
  /** How the client proved itself. */
  credential: 'secret' | 'certificate';
}

export interface TokenFailure {
  status: number;
  error: string;
  aadsts: number;
  description: string;
}

/** The failures tests ask for by name, worded as Entra ID words them. */
export const FAILURES = {
  invalidSecret: { status: 401, error: 'invalid_client', aadsts: 7000215, description: 'Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.' },
  appNotFound: { status: 400, error: 'unauthorized_client', aadsts: 700016, description: "Application with identifier was not found in the directory. This can happen if the application has not been installed by the administrator of the tenant." },
  tenantNotFound: { status: 400, error: 'invalid_request', aadsts: 90002, description: 'Tenant not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.' },
  badAssertion: { status: 401, error: 'invalid_client', aadsts: 700027, description: 'Client assertion failed signature validation.' },
  invalidScope: { status: 400, error: 'invalid_scope', aadsts: 1002012, description: 'The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).' },
} satisfies Record<string, TokenFailure>;

export interface FakeIdentityProvider {
  /** https://127.0.0.1:PORT: the authorityHost to configure. */
  url: string;
  /** PEM file of the certificate the fake serves: the caFile to configure. */
  caFile: string;
  /** Lifetime of new tokens, in seconds (expires_in). */
  tokenLifetimeSeconds: number;
  register(app: RegisteredApp): void;
  /** Every token issued, in order. */
  issued: IssuedToken[];
  /** Every token request, with the credential type and the failure answered (if any). */
  requests: { tenantId: string; clientId: string; scope: string; failure?: string }[];
  /** The next `times` token requests fail with `failure` (until cleared with times = 0). */
  failNext(failure: TokenFailure, times?: number): void;
  /** The token if it is live at the fake's clock, else undefined. */
  introspect(token: string): IssuedToken | undefined;
  /** Moves the fake's clock forward (tokens expire as if that much time had passed). */
  advance(ms: number): void;
  now(): number;
  close(): Promise<void>;
}

export async function startIdentityProvider(): Promise<FakeIdentityProvider> {
  const cert = await makeTestCertificate();
  const apps = new Map<string, RegisteredApp>();
  const tenants = new Set<string>();
  const tokens = new Map<string, IssuedToken>();
  let skew = 0;
  let scripted: { failure: TokenFailure; times: number } | undefined;

  const server = createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
    handle(req, res).catch((err: unknown) => send(res, 500, { error: 'server_error', error_description: String(err) }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const idp: FakeIdentityProvider = {
    url,
    caFile: cert.certPath,
    tokenLifetimeSeconds: 3599,
    issued: [],
    requests: [],
    register(app) {
      apps.set(`${app.tenantId}/${app.clientId}`, app);
      tenants.add(app.tenantId);
    },
    failNext(failure, times = 1) {
      scripted = times > 0 ? { failure, times } : undefined;
    },
    introspect(token) {
      const t = tokens.get(token);
      return t && t.expiresAt > idp.now() ? t : undefined;
    },
    advance(ms) {
      skew += ms;
    },
    now: () => Date.now() + skew,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', url).pathname;
    let m: RegExpExecArray | null;
    if (req.method === 'GET' && (m = /^\/([^/]+)\/v2\.0\/\.well-known\/openid-configuration$/.exec(path))) {
      const tenant = m[1]!;
      return send(res, 200, {
        issuer: `${url}/${tenant}/v2.0`,
        token_endpoint: `${url}/${tenant}/oauth2/v2.0/token`,
        authorization_endpoint: `${url}/${tenant}/oauth2/v2.0/authorize`,
        jwks_uri: `${url}/${tenant}/discovery/v2.0/keys`,
        token_endpoint_auth_methods_supported: ['client_secret_post', 'private_key_jwt', 'client_secret_basic'],
        response_types_supported: ['code', 'id_token', 'code id_token', 'id_token token'],
        scopes_supported: ['openid', 'profile', 'email', 'offline_access'],
        tenant_region_scope: 'EU',
      });
    }
    if (req.method === 'GET' && path === '/common/discovery/instance') {
      const host = new URL(url).host;
      return send(res, 200, {
        tenant_discovery_endpoint: `${url}/common/v2.0/.well-known/openid-configuration`,
        'api-version': '1.1',
        metadata: [{ preferred_network: host, preferred_cache: host, aliases: [host] }],
      });
    }
    if (req.method === 'POST' && (m = /^\/([^/]+)\/oauth2\/v2\.0\/token$/.exec(path))) {
      return token(m[1]!, new URLSearchParams(await body(req)), res);
    }
    send(res, 404, { error: 'not_found', error_description: `no such endpoint: ${req.method} ${path}` });
  }

  function token(tenantId: string, form: URLSearchParams, res: ServerResponse): void {
    const clientId = form.get('client_id') ?? '';
    const scope = form.get('scope') ?? '';
    const request: FakeIdentityProvider['requests'][number] = { tenantId, clientId, scope };
    idp.requests.push(request);
    const fail = (failure: TokenFailure): void => {
      request.failure = failure.error;
      failWith(res, failure, tenantId, clientId);
    };
    if (scripted) {
      const failure = scripted.failure;
      if (--scripted.times <= 0) scripted = undefined;
      return fail(failure);
    }
    if (form.get('grant_type') !== 'client_credentials') return fail({ status: 400, error: 'unsupported_grant_type', aadsts: 70003, description: 'The app requested an unsupported grant type.' });
    if (!tenants.has(tenantId)) return fail(FAILURES.tenantNotFound);
    const app = apps.get(`${tenantId}/${clientId}`);
    if (!app) return fail(FAILURES.appNotFound);
    if (!/\/\.default$/.test(scope.split(' ').find((s) => !['openid', 'profile', 'offline_access'].includes(s)) ?? '')) return fail(FAILURES.invalidScope);
    let credential: IssuedToken['credential'];
    const assertion = form.get('client_assertion');
    if (assertion !== null) {
      if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') return fail(FAILURES.badAssertion);
      if (!app.certificate || !assertionValid(assertion, app, `${url}/${tenantId}/oauth2/v2.0/token`, idp.now())) return fail(FAILURES.badAssertion);
      credential = 'certificate';
    } else {
      if (!app.secret || form.get('client_secret') !== app.secret) return fail(FAILURES.invalidSecret);
      credential = 'secret';
    }
    const issuedAt = idp.now();
    const issued: IssuedToken = {
      token: randomBytes(32).toString('base64url'),
      tenantId,
      clientId,
      scope: scope.split(' ').find((s) => s.endsWith('/.default'))!,
      issuedAt,
      expiresAt: issuedAt + idp.tokenLifetimeSeconds * 1000,
      credential,
    };
    tokens.set(issued.token, issued);
    idp.issued.push(issued);
    send(res, 200, { token_type: 'Bearer', expires_in: idp.tokenLifetimeSeconds, ext_expires_in: idp.tokenLifetimeSeconds, access_token: issued.token });
  }

  return idp;
}

/**
 * The checks Entra ID makes on a certificate assertion: header names the registered certificate by its
 * SHA-256 thumbprint (x5t#S256) and a supported alg, the signature verifies with that certificate's
 * public key, aud is the token endpoint, iss and sub are the client ID, and it is within nbf..exp.
 */
function assertionValid(jwt: string, app: RegisteredApp, audience: string, now: number): boolean {
  const parts = jwt.split('.');
  if (parts.length !== 3) return false;
  const [h, p, s] = parts as [string, string, string];
  let header: Record<string, unknown>;
  let payload: Record<string, unknown>;
  try {
    header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8')) as Record<string, unknown>;
    payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    return false;
  }
  const certificate = new X509Certificate(app.certificate!);
  const thumbprint = createHash('sha256').update(certificate.raw).digest('base64url');
  if (header['x5t#S256'] !== thumbprint) return false;
  const signed = Buffer.from(`${h}.${p}`);
  const signature = Buffer.from(s, 'base64url');
  const key = certificate.publicKey;
  const ok =
    header.alg === 'PS256'
      ? verify('sha256', signed, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }, signature)
      : header.alg === 'RS256' && verify('sha256', signed, key, signature);
  if (!ok) return false;
  const seconds = now / 1000;
  return (
    payload.aud === audience &&
    payload.iss === app.clientId &&
    payload.sub === app.clientId &&
    typeof payload.exp === 'number' &&
    payload.exp > seconds &&
    (typeof payload.nbf !== 'number' || payload.nbf <= seconds + 300) &&
    typeof payload.jti === 'string'
  );
}

function failWith(res: ServerResponse, failure: TokenFailure, tenantId: string, clientId: string): void {
  const trace = randomBytes(16).toString('hex');
  send(res, failure.status, {
    error: failure.error,
    error_description: `AADSTS${failure.aadsts}: ${failure.description} (client ${clientId}, tenant ${tenantId}) Trace ID: ${trace} Correlation ID: ${trace} Timestamp: ${new Date().toISOString()}`,
    error_codes: [failure.aadsts],
    timestamp: new Date().toISOString(),
    trace_id: trace,
    correlation_id: trace,
  });
}

function send(res: ServerResponse, status: number, json: unknown): void {
  const text = JSON.stringify(json);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function body(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** The SHA-256 thumbprint of a PEM certificate as the Entra portal shows it (hex), for certificate.thumbprintSha256. */
export function thumbprintSha256(pem: string | Buffer): string {
  return createHash('sha256').update(new X509Certificate(pem).raw).digest('hex');
}
