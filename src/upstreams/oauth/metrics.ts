import { Counter, Gauge, type Registry } from 'prom-client';
import type { TokenRefreshEvent } from './token-source.js';

/** Microsoft access tokens fetched from the identity provider, per app registration (a config name, bounded). */
export class TokenMetrics {
  readonly refreshes: Counter<'app' | 'result'>;
  readonly expiry: Gauge<'app'>;

  constructor(registry: Registry, apps: readonly string[]) {
    const registers = [registry];
    this.refreshes = new Counter({
      name: 'smarthost_oauth_token_refreshes_total',
      help: 'Access tokens requested from the identity provider, per Microsoft app (or Google upstream) and result (success, failure)',
      labelNames: ['app', 'result'],
      registers,
    });
    this.expiry = new Gauge({
      name: 'smarthost_oauth_token_expiry_timestamp_seconds',
      help: 'When the latest access token of each Microsoft app (or Google upstream) expires (Unix time)',
      labelNames: ['app'],
      registers,
    });
    for (const app of apps) for (const result of ['success', 'failure']) this.refreshes.inc({ app, result }, 0);
  }

  /** The hook MsalTokenSource calls (options.onRefresh). */
  readonly onRefresh = (e: TokenRefreshEvent): void => {
    this.refreshes.inc({ app: e.app, result: e.result });
    if (e.expiresAt !== undefined) this.expiry.set({ app: e.app }, Math.round(e.expiresAt / 1000));
  };
}
