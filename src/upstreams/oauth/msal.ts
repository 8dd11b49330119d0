/**
 * Access tokens for Microsoft 365 through @azure/msal-node's client-credentials flow ("app-only"): one
 * ConfidentialClientApplication per app registration, kept for the life of the process so that its in-memory
 * token cache answers every getToken() until the token is within msal's renewal margin (5 minutes) of expiry.
 */
import { readFileSync } from 'node:fs';
import { ConfidentialClientApplication, type Configuration, type INetworkModule } from '@azure/msal-node';
import type { Logger } from '../../log.js';
import { SmtpError } from '../../smtp-error.js';
import { explainTokenFailure } from './aadsts.js';
import { HttpsNetworkClient } from './https-client.js';
import type { MicrosoftAppConfig, MicrosoftConfig } from './microsoft-config.js';
import type { AccessToken, TokenRefreshEvent, TokenSource } from './token-source.js';

export type { MicrosoftAppConfig, MicrosoftConfig } from './microsoft-config.js';

/** Scope of Exchange Online for SMTP AUTH (XOAUTH2), IMAP and POP with an app token. */
export const EXCHANGE_SCOPE = 'https://outlook.office365.com/.default';

/** The client-credentials scope of the app's Graph endpoint: https://graph.microsoft.com/.default in the global cloud. */
export function graphScope(app: Pick<MicrosoftAppConfig, 'graphBaseUrl'>): string {
  return `${new URL(app.graphBaseUrl).origin}/.default`;
}

export interface MsalTokenSourceOptions {
  /** Where a token failure is reported (once per distinct failure, again after a success). */
  log?: Logger;
  /** msal's HTTP seam; default: node:https trusting the system CAs plus the app's caFile. */
  networkClient?: INetworkModule;
  /** Told of every token fetched from the identity provider (not from msal's cache) and every failure: metrics. */
  onRefresh?: (event: TokenRefreshEvent) => void;
}


/**
 * One app registration's tokens. A failure throws SmtpError 451 4.7.0 naming the likely fix, so mail waiting
 * for a token is deferred, never bounced; neither tokens nor secrets are ever logged.
 */
export class MsalTokenSource implements TokenSource {
  /** Extra CA certificates (PEM) from caFile, for other HTTPS clients of this app (Graph). */
  readonly ca: string | undefined;
  readonly #client: ConfidentialClientApplication;
  readonly #log: Logger | undefined;
  readonly #onRefresh: MsalTokenSourceOptions['onRefresh'];
  /** Concurrent requests for the same scope share one round trip. */
  readonly #pending = new Map<string, Promise<AccessToken>>();
  #lastFailure: string | undefined;

  constructor(
    readonly name: string,
    readonly config: Readonly<MicrosoftAppConfig>,
    options: MsalTokenSourceOptions = {},
  ) {
    this.#log = options.log;
    this.#onRefresh = options.onRefresh;
    this.ca = config.caFile ? readFileSync(config.caFile, 'utf8') : undefined;
    this.#client = new ConfidentialClientApplication(msalConfiguration(config, options.networkClient ?? new HttpsNetworkClient(this.ca ? { ca: this.ca } : {})));
  }

  get graphBaseUrl(): string {
    return this.config.graphBaseUrl;
  }

  async getToken(scope: string, options: { forceRefresh?: boolean } = {}): Promise<AccessToken> {
    const key = `${options.forceRefresh ? 'fresh ' : ''}${scope}`;
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = this.#acquire(scope, options.forceRefresh === true).finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    return pending;
  }

  async #acquire(scope: string, forceRefresh: boolean): Promise<AccessToken> {
    let result;
    try {
      result = await this.#client.acquireTokenByClientCredential({ scopes: [scope], skipCache: forceRefresh });
    } catch (err) {
      this.#onRefresh?.({ app: this.name, result: 'failure' });
      throw this.#failure(scope, err);
    }
    if (!result?.accessToken) {
      this.#onRefresh?.({ app: this.name, result: 'failure' });
      throw this.#failure(scope, new Error('the identity provider answered without an access token'));
    }
    if (this.#lastFailure !== undefined) {
      this.#log?.info({ event: 'token.recovered', app: this.name, scope }, `Microsoft app ${this.name}: access tokens are issued again`);
      this.#lastFailure = undefined;
    }
    const expiresAt = result.expiresOn?.getTime() ?? Date.now() + 60_000;
    if (!result.fromCache) this.#onRefresh?.({ app: this.name, result: 'success', expiresAt });
    return { token: result.accessToken, expiresAt };
  }

  #failure(scope: string, err: unknown): SmtpError {
    const detail = describe(err);
    const { fix, code } = explainTokenFailure(detail);
    const message = `cannot get an access token for Microsoft app ${this.name} (tenant ${this.config.tenantId}, client ${this.config.clientId}): ${fix}`;
    // One log line per kind of failure (not per delivery): the AADSTS code, else msal's error code.
    const kind = code ?? detail.split(':')[0]!;
    if (this.#lastFailure !== kind) {
      this.#lastFailure = kind;
      this.#log?.error({ event: 'token.failed', app: this.name, scope, ...(code ? { aadsts: code } : {}), detail }, message);
    }
    return new SmtpError(451, '4.7.0', `${message} (${code ?? firstLine(detail)})`, { cause: err });
  }
}

/**
 * The token sources of all app registrations, created on first use and then kept: every upstream naming the
 * same app shares one ConfidentialClientApplication and so one token cache.
 */
export class MicrosoftApps {
  readonly #sources = new Map<string, MsalTokenSource>();

  constructor(
    readonly config: Readonly<MicrosoftConfig>,
    private readonly options: MsalTokenSourceOptions = {},
  ) {}

  has(name: string): boolean {
    return Object.hasOwn(this.config.apps, name);
  }

  /** The token source of app `name`; throws when the config defines no such app (the schema prevents that). */
  tokenSource(name: string): MsalTokenSource {
    let source = this.#sources.get(name);
    if (!source) {
      if (!this.has(name)) throw new Error(`microsoft.apps.${name} is not defined`);
      source = new MsalTokenSource(name, this.config.apps[name]!, this.options);
      this.#sources.set(name, source);
    }
    return source;
  }
}

function msalConfiguration(app: Readonly<MicrosoftAppConfig>, networkClient: INetworkModule): Configuration {
  const authority = `${app.authorityHost}/${app.tenantId}`;
  return {
    auth: {
      clientId: app.clientId,
      authority,
      // The configured host is trusted as is: msal then asks it (not login.microsoftonline.com) for its
      // OpenID configuration, and never sends instance discovery elsewhere. National clouds and the test
      // identity provider work the same way.
      knownAuthorities: [new URL(app.authorityHost).host],
      ...(app.clientSecret ? { clientSecret: app.clientSecret.reveal() } : {}),
      ...(app.certificate ? { clientCertificate: { thumbprintSha256: app.certificate.thumbprintSha256, privateKey: app.certificate.privateKey.reveal() } } : {}),
    },
    system: { networkClient },
  };
}

/** The text of an msal error ("invalid_client: AADSTS7000215: Invalid client secret ..."), without trace IDs. */
function describe(err: unknown): string {
  const e = err as { errorCode?: unknown; errorMessage?: unknown; message?: unknown; cause?: unknown } | null;
  const parts = [e?.errorCode, e?.errorMessage ?? e?.message].filter((p): p is string => typeof p === 'string' && p !== '');
  const cause = (e?.cause as { code?: unknown; message?: unknown } | undefined) ?? undefined;
  if (cause && typeof cause.message === 'string') parts.push(`${typeof cause.code === 'string' ? `${cause.code} ` : ''}${cause.message}`);
  return (parts.length > 0 ? parts.join(': ') : String(err)).replace(/\s*Trace ID:[\s\S]*$/, '');
}

function firstLine(text: string): string {
  return text.split(/\r?\n/)[0]!.slice(0, 200);
}
