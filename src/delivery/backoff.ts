import type { RetryConfig } from '../config/schema.js';

/**
 * Delay before the next attempt after `attempts` failed ones: Postfix's schedule, the initial delay
 * doubled per attempt and clamped to the maximum, spread by up to ±10% so a batch deferred together
 * does not return together. `random` is injectable so tests can pin the spread.
 */
export function nextDelay(attempts: number, retry: Pick<RetryConfig, 'initialDelay' | 'maxDelay'>, random: () => number = Math.random): number {
  const doubled = retry.initialDelay * 2 ** Math.max(0, Math.min(attempts - 1, 30));
  const base = Math.min(retry.maxDelay, doubled);
  return Math.min(retry.maxDelay, Math.round(base * (0.9 + 0.2 * random())));
}
