/**
 * Access tokens for one impersonated mailbox: a signed JWT exchanged at Google's token endpoint
 * (grant_type urn:ietf:params:oauth:grant-type:jwt-bearer, answered with access_token and expires_in;
 * https://developers.google.com/identity/protocols/oauth2/service-account#httprest). The same lifecycle as the
 * Microsoft provider: a token is cached and replaced refreshAhead before it expires, concurrent requests share
 * one round trip, and a failure throws SmtpError 451 4.7.0 naming the likely fix (the mail is deferred, never
 * bounced) and is logged as an error once per distinct failure. Tokens and keys are never logged.
 */
import type { Logger } from '../../log.js';
import { SmtpError } from '../../smtp-error.js';
import type { AccessToken, TokenRefreshEvent, TokenSource } from '../oauth/token-source.js';
import type { ServiceAccount } from './config.js';
import { serviceAccountClaims, signJwt } from './jwt.js';

/** Token endpoint errors (RFC 6749 §5.2 `error`, Google's `error_description`) → the fix, most specific first. */
export const TOKEN_ERRORS: readonly { error: string; description?: RegExp; fix: string }[] = [
  {
    error: 'unauthorized_client',
    fix: "grant the service account's client ID domain-wide delegation for https://mail.google.com/ (Admin console: Security, API controls, Domain-wide delegation)",
  },
  { error: 'invalid_grant', description: /invalid email or user id/i, fix: 'the mailbox is not a user of the Google Workspace domain' },
  { error: 'invalid_grant', description: /signature/i, fix: 'the key file holds no valid key of this service account (deleted or replaced?)' },
  { error: 'invalid_grant', description: /\b(iat|exp|time|short-lived)\b/i, fix: "check this machine's clock: Google refused the token's time stamps" },
  { error: 'invalid_client', fix: 'the service account or its key was deleted or disabled' },
  { error: 'invalid_scope', fix: 'the scope https://mail.google.com/ was refused for this service account' },
];

export function explainTokenError(error: string | undefined, description: string | undefined): string | undefined {
  return TOKEN_ERRORS.find((row) => row.error === error && (!row.description || row.description.test(description ?? '')))?.fix;
}

export interface ServiceAccountTokenSourceOptions {
  account: ServiceAccount;
  /** The mailbox to impersonate (the JWT's sub). */
  subject: string;
  tokenUrl: string;
  refreshAheadMs: number;
  timeoutMs: number;
  /** For the log lines: the upstream using this source. */
  upstream: string;
  log?: Logger;
  now?: () => number;
  fetch?: typeof fetch;
  /** Each token requested from the endpoint, for smarthost_oauth_token_* (labelled with the upstream's name). */
  onRefresh?: (event: TokenRefreshEvent) => void;
}

export class ServiceAccountTokenSource implements TokenSource {
  readonly #o: ServiceAccountTokenSourceOptions;
  readonly #cache = new Map<string, AccessToken>();
  readonly #pending = new Map<string, Promise<AccessToken>>();
  #lastFailure: string | undefined;

  constructor(options: ServiceAccountTokenSourceOptions) {
    this.#o = options;
  }

  get subject(): string {
    return this.#o.subject;
  }

  async getToken(scope: string, options: { forceRefresh?: boolean } = {}): Promise<AccessToken> {
    const now = this.#now();
    const cached = this.#cache.get(scope);
    if (!options.forceRefresh && cached && cached.expiresAt - this.#o.refreshAheadMs > now) return cached;
    const key = `${options.forceRefresh ? 'fresh ' : ''}${scope}`;
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = this.#acquire(scope).finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    return pending;
  }

  async #acquire(scope: string): Promise<AccessToken> {
    const { account, subject, tokenUrl } = this.#o;
    const issuedAt = this.#now();
    const assertion = signJwt(serviceAccountClaims({ clientEmail: account.clientEmail, subject, scope, audience: tokenUrl, nowMs: issuedAt }), account.privateKey.reveal(), account.keyId);
    let status: number;
    let body: { access_token?: unknown; expires_in?: unknown; error?: unknown; error_description?: unknown } | undefined;
    try {
      const response = await (this.#o.fetch ?? fetch)(tokenUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
        body: new URLSearchParams({ grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', assertion }).toString(),
        signal: AbortSignal.timeout(this.#o.timeoutMs),
      });
      status = response.status;
      body = parseJson(await response.text());
    } catch (err) {
      throw this.#failure(scope, `token endpoint ${new URL(tokenUrl).host} unreachable: ${describeFetchError(err)}`, undefined, err);
    }
    const error = typeof body?.error === 'string' ? body.error : undefined;
    const description = typeof body?.error_description === 'string' ? body.error_description : undefined;
    if (status !== 200 || typeof body?.access_token !== 'string' || body.access_token === '') {
      const detail = error ? `${error}${description ? `: ${description}` : ''}` : `HTTP ${status} without an access token`;
      throw this.#failure(scope, `${detail} (HTTP ${status})`, explainTokenError(error, description));
    }
    const lifetimeS = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 3600;
    const token = { token: body.access_token, expiresAt: issuedAt + lifetimeS * 1000 };
    this.#cache.set(scope, token);
    this.#o.onRefresh?.({ app: this.#o.upstream, result: 'success', expiresAt: token.expiresAt });
    if (this.#lastFailure !== undefined) {
      this.#lastFailure = undefined;
      this.#o.log?.info({ event: 'token.recovered', upstream: this.#o.upstream, mailbox: subject, scope }, `Google access tokens for ${subject} are issued again`);
    }
    return token;
  }

  #failure(scope: string, detail: string, fix: string | undefined, cause?: unknown): SmtpError {
    const { account, subject, upstream } = this.#o;
    const message = `cannot get a Google access token for ${subject} (service account ${account.clientEmail}): ${fix ?? detail}`;
    this.#o.onRefresh?.({ app: upstream, result: 'failure' });
    if (this.#lastFailure !== detail) {
      this.#lastFailure = detail;
      this.#o.log?.error({ event: 'token.failed', upstream, mailbox: subject, scope, detail }, message);
    }
    return new SmtpError(451, '4.7.0', fix ? `${message} (${detail})` : message, { cause });
  }

  #now(): number {
    return (this.#o.now ?? Date.now)();
  }
}

function parseJson(text: string): Record<string, unknown> | undefined {
  try {
    const value = JSON.parse(text) as unknown;
    return value && typeof value === 'object' ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function describeFetchError(err: unknown): string {
  const e = err as { name?: unknown; message?: unknown; cause?: { code?: unknown; message?: unknown } };
  if (e?.name === 'TimeoutError') return 'timed out';
  const code = typeof e?.cause?.code === 'string' ? `${e.cause.code} ` : '';
  return `${code}${typeof e?.cause?.message === 'string' ? e.cause.message : String(e?.message ?? err)}`.trim();
}
