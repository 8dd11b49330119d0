import type { RetryConfig } from '../config/schema.js';
import { SmtpError } from '../smtp-error.js';
import type { RecipientState, Reply } from '../spool/record.js';
import type { RecipientOutcome } from '../upstreams/upstream.js';
import { nextDelay } from './backoff.js';

export function toReply(err: SmtpError): Reply {
  return { code: err.code, enhanced: err.enhanced, text: err.message };
}

/**
 * Applies one attempt's outcome to a recipient's state: delivered, retried later (temporary), or failed
 * (permanent). Pure, so the retry schedule is testable without a queue.
 */
export function applyOutcome(
  state: RecipientState,
  outcome: RecipientOutcome,
  ctx: { now: number; upstream: string; retry: RetryConfig; random?: () => number },
): RecipientState {
  const attempts = state.attempts + 1;
  if (outcome.delivered) {
    return { ...state, status: 'delivered', attempts, upstream: ctx.upstream, lastReply: { code: 250, enhanced: '2.0.0', text: outcome.reply } };
  }
  const lastReply = toReply(outcome.error);
  if (!outcome.error.temporary) return { ...state, status: 'failed', attempts, upstream: ctx.upstream, lastReply, notified: false };
  return { ...state, attempts, upstream: ctx.upstream, lastReply, nextAttemptAt: ctx.now + retryDelay(outcome.error, attempts, ctx) };
}

/** The shortest wait an upstream's Retry-After can ask for: a "0" must not make the queue spin. */
export const MIN_RETRY_AFTER_MS = 1000;

/** The upstream's own Retry-After (HTTP 429/503) when it gave one, else the queue's backoff. */
function retryDelay(error: SmtpError, attempts: number, ctx: { retry: RetryConfig; random?: () => number }): number {
  if (error.retryAfterMs !== undefined && Number.isFinite(error.retryAfterMs)) return Math.max(error.retryAfterMs, MIN_RETRY_AFTER_MS);
  return nextDelay(attempts, ctx.retry, ctx.random);
}

/** A recipient still pending after the queue lifetime fails with the last temporary error it saw. */
export function expire(state: RecipientState, lifetimeMs: number): RecipientState {
  const last = state.lastReply ? `; last error: ${state.lastReply.code} ${state.lastReply.enhanced} ${state.lastReply.text}` : '';
  const enhanced = state.lastReply && state.lastReply.code >= 400 ? state.lastReply.enhanced : '4.4.7';
  return {
    ...state,
    status: 'failed',
    notified: false,
    lastReply: { code: 554, enhanced, text: `delivery time expired: gave up after ${describeDuration(lifetimeMs)} in the queue${last}` },
  };
}

/** "5 days", "1.5 hours", "30 minutes": a lifetime shorter than a day must not read as "0 days". */
function describeDuration(ms: number): string {
  const units = [
    ['day', 86_400_000],
    ['hour', 3_600_000],
    ['minute', 60_000],
  ] as const;
  const [unit, size] = units.find(([, size]) => ms >= size) ?? ['second', 1000];
  const amount = Math.round((ms / size) * 10) / 10;
  return `${amount} ${unit}${amount === 1 ? '' : 's'}`;
}

/** Outcomes for every recipient when the whole attempt failed (connection refused, timeout, upstream bug). */
export function sameOutcomeForAll(recipients: readonly string[], error: SmtpError): RecipientOutcome[] {
  return recipients.map((recipient) => ({ recipient, delivered: false, error }));
}

/** Guards against an upstream that forgets a recipient: a missing outcome is a temporary failure, never silence. */
export function completeOutcomes(recipients: readonly string[], outcomes: RecipientOutcome[]): RecipientOutcome[] {
  const byRecipient = new Map(outcomes.map((o) => [o.recipient, o]));
  return recipients.map(
    (recipient) =>
      byRecipient.get(recipient) ?? {
        recipient,
        delivered: false,
        error: new SmtpError(451, '4.3.0', 'upstream reported no result for this recipient'),
      },
  );
}
