import assert from 'node:assert/strict';
import { test } from 'node:test';
import { applyOutcome, MIN_RETRY_AFTER_MS } from '../../src/delivery/outcomes.js';
import { SmtpError } from '../../src/smtp-error.js';
import type { RecipientState } from '../../src/spool/record.js';

const retry = { initialDelay: 300_000, maxDelay: 4_000_000, lifetime: 432_000_000, bounceLifetime: 432_000_000 };
const ctx = { now: 1_000_000, upstream: 'graph', retry, random: () => 0.5 };
const pending: RecipientState = { address: 'a@example.com', status: 'pending', attempts: 2, nextAttemptAt: 0 };

function deferred(error: SmtpError): RecipientState {
  return applyOutcome(pending, { recipient: pending.address, delivered: false, error }, ctx);
}

test('a temporary error with retryAfterMs is retried after exactly that long, not after the backoff', () => {
  const state = deferred(new SmtpError(451, '4.4.5', 'throttled', { retryAfterMs: 7_000 }));
  assert.equal(state.status, 'pending');
  assert.equal(state.nextAttemptAt, ctx.now + 7_000);
  assert.equal(state.attempts, 3);
});

test('a Retry-After longer than the backoff is honoured too', () => {
  // The third attempt's backoff would be 20 minutes; the upstream asked for an hour and a half.
  const state = deferred(new SmtpError(451, '4.3.2', 'unavailable', { retryAfterMs: 5_400_000 }));
  assert.equal(state.nextAttemptAt, ctx.now + 5_400_000);
});

test('a Retry-After of 0 (or anything under a second) waits one second so the queue does not spin', () => {
  assert.equal(MIN_RETRY_AFTER_MS, 1000);
  assert.equal(deferred(new SmtpError(451, '4.4.5', 'throttled', { retryAfterMs: 0 })).nextAttemptAt, ctx.now + 1000);
  assert.equal(deferred(new SmtpError(451, '4.4.5', 'throttled', { retryAfterMs: 250 })).nextAttemptAt, ctx.now + 1000);
});

test('without retryAfterMs the usual backoff applies (third attempt: 5m doubled twice)', () => {
  const state = deferred(new SmtpError(451, '4.4.1', 'connection refused'));
  assert.equal(state.nextAttemptAt, ctx.now + 20 * 60_000);
});

test('a permanent error fails even when it carries retryAfterMs', () => {
  const state = deferred(new SmtpError(550, '5.7.60', 'send as denied', { retryAfterMs: 5_000 }));
  assert.equal(state.status, 'failed');
  assert.equal(state.lastReply?.code, 550);
});

test('retryAfterMs is kept on the error and absent when not given', () => {
  assert.equal(new SmtpError(451, '4.4.5', 'x', { retryAfterMs: 3000 }).retryAfterMs, 3000);
  assert.equal(new SmtpError(451, '4.4.5', 'x').retryAfterMs, undefined);
  assert.ok(!('retryAfterMs' in new SmtpError(451, '4.4.5', 'x')), 'no own property when not given');
});
