/**
 * Where OAuth upstreams get their access tokens (Microsoft via MSAL, Google via a service account).
 * A failure to get a token throws an SmtpError of class 4.7.0: the mail is deferred, never bounced.
 */
export interface AccessToken {
  token: string;
  /** Epoch milliseconds. */
  expiresAt: number;
}

export interface TokenSource {
  /** A token valid for at least a little while longer; cached and refreshed ahead of expiry. */
  getToken(scope: string, options?: { forceRefresh?: boolean }): Promise<AccessToken>;
}

/** A token requested from an identity provider or token endpoint (not one served from the cache). */
export interface TokenRefreshEvent {
  /** The Microsoft app, or the Google upstream, the token is for. */
  app: string;
  result: 'success' | 'failure';
  /** Epoch ms, for a success. */
  expiresAt?: number;
}
