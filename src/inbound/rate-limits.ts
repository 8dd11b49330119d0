/**
 * A listener's message and recipient rates per client address and per authenticated user, counted in a
 * WindowCounter (in memory, or in Redis shared by several instances). A counter that fails lets mail in:
 * a rate limit is a brake on abuse, not a reason to lose a printer's scan.
 */
import type { Logger } from '../log.js';
import { NetworkList } from '../policy/networks.js';
import { SmtpError } from '../smtp-error.js';
import type { WindowCounter } from '../state/window-counter.js';
import type { RateLimitsConfig } from './limits-config.js';

export type RateKind = 'messages' | 'recipients';
type Scope = 'client' | 'user';

const WINDOW_MS = 60_000;
/** A counter that keeps failing is reported at most this often, not once per command. */
const WARN_EVERY_MS = 60_000;

const FIELD = { messages: 'messagesPerMinute', recipients: 'recipientsPerMinute' } as const;
const WHO = { client: 'your address', user: 'your account' } as const;
const LOG_REASON = { client: 'client address', user: 'user' } as const;

export interface RateRefusal {
  error: SmtpError;
  /** For the log: "message rate per client address", ... */
  reason: string;
  limit: number;
  retryAt: number;
}

export interface RateClient {
  /** Normalised client address. */
  address: string;
  user?: string | undefined;
}

export class InboundRateLimiter {
  readonly #exempt: NetworkList;
  #lastWarning = -Infinity;
  #failuresSinceWarning = 0;

  constructor(
    private readonly listener: string,
    private readonly config: RateLimitsConfig | undefined,
    private readonly counter: WindowCounter,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.#exempt = new NetworkList(config?.exempt ?? []);
  }

  /** Exempt clients are counted by no per-client or per-user limit of this listener. */
  exempts(address: string): boolean {
    return this.#exempt.contains(address);
  }

  /** Whether take() has anything to count: without, the caller answers without waiting on the counter. */
  applies(kind: RateKind, client: RateClient): boolean {
    return this.#budgets(kind, client).length > 0;
  }

  /**
   * Counts one message (at MAIL FROM) or one recipient (at RCPT TO) against every limit that applies, and
   * answers with the refusal when one is used up. Per client first, then per user: a refusal by the user's
   * limit leaves the client's count taken, which only ever errs towards refusing sooner.
   */
  async take(kind: RateKind, client: RateClient): Promise<RateRefusal | undefined> {
    const now = this.now();
    for (const { scope, id, max } of this.#budgets(kind, client)) {
      // The free-form part (address, user name) comes last, so no two budgets can produce the same key.
      const key = `inbound:${this.listener}:${kind}:${scope}:${id}`;
      let result;
      try {
        result = await this.counter.take(key, 1, max, WINDOW_MS, now);
      } catch (err) {
        this.#counterFailed(err, now);
        return undefined;
      }
      if (!result.ok) {
        const what = kind === 'messages' ? 'messages' : 'recipients';
        return {
          error: new SmtpError(450, '4.7.1', `Too many ${what} from ${WHO[scope]}, try again later`),
          reason: `${kind === 'messages' ? 'message' : 'recipient'} rate per ${LOG_REASON[scope]}`,
          limit: max,
          retryAt: result.retryAt,
        };
      }
    }
    return undefined;
  }

  #budgets(kind: RateKind, client: RateClient): { scope: Scope; id: string; max: number }[] {
    const c = this.config;
    if (!c || this.exempts(client.address)) return [];
    const budgets: { scope: Scope; id: string; max: number }[] = [];
    const perClient = c.perClient?.[FIELD[kind]];
    if (perClient !== undefined) budgets.push({ scope: 'client', id: client.address, max: perClient });
    const perUser = c.perUser?.[FIELD[kind]];
    if (perUser !== undefined && client.user !== undefined) budgets.push({ scope: 'user', id: client.user, max: perUser });
    return budgets;
  }

  #counterFailed(err: unknown, now: number): void {
    this.#failuresSinceWarning++;
    if (now - this.#lastWarning < WARN_EVERY_MS) return;
    this.log.warn(
      { event: 'smtp.rate_limit_unavailable', listener: this.listener, failures: this.#failuresSinceWarning, err },
      'rate-limit counter unavailable; accepting without counting',
    );
    this.#lastWarning = now;
    this.#failuresSinceWarning = 0;
  }
}
