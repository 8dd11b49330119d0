import { Counter, type Registry } from 'prom-client';

/** Why mail waited instead of going to an upstream with send limits. */
export type LimitDeferralReason = 'limit' | 'state_unavailable';

/** What the scheduler counts about send limits. */
export class LimitMetrics {
  readonly deferrals: Counter<'upstream' | 'reason'>;

  /** upstreams: the limited ones, whose series start at zero; shared: whether counters live in Redis. */
  constructor(registry: Registry, upstreams: readonly string[], shared: boolean) {
    this.deferrals = new Counter({
      name: 'smarthost_send_limit_deferrals_total',
      help: 'Deliveries to an upstream deferred by its send limits, per upstream and reason (limit: over a limit; state_unavailable: the shared counters could not be reached)',
      labelNames: ['upstream', 'reason'],
      registers: [registry],
    });
    for (const upstream of upstreams) {
      this.deferrals.inc({ upstream, reason: 'limit' }, 0);
      if (shared) this.deferrals.inc({ upstream, reason: 'state_unavailable' }, 0);
    }
  }

  deferred(upstream: string, reason: LimitDeferralReason): void {
    this.deferrals.inc({ upstream, reason });
  }
}
