import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nextDelay } from '../../src/delivery/backoff.js';

const POSTFIX = { initialDelay: 300_000, maxDelay: 4_000_000 };
const MIN = 60_000;

test('with no jitter the delay doubles from 5m and is capped at 4000s (66m40s)', () => {
  const delays = [1, 2, 3, 4, 5, 6, 10].map((attempts) => nextDelay(attempts, POSTFIX, () => 0.5));
  assert.deepEqual(delays, [5 * MIN, 10 * MIN, 20 * MIN, 40 * MIN, 4_000_000, 4_000_000, 4_000_000]);
  assert.equal(4_000_000, 66 * MIN + 40_000);
});

test('zero attempts counts as the first retry', () => {
  assert.equal(nextDelay(0, POSTFIX, () => 0.5), 5 * MIN);
});

test('jitter spreads the delay by up to -10% (random 0) and +10% (random 1)', () => {
  assert.equal(nextDelay(1, POSTFIX, () => 0), 270_000);
  assert.equal(nextDelay(1, POSTFIX, () => 1), 330_000);
  assert.equal(nextDelay(3, POSTFIX, () => 0), 1_080_000);
  assert.equal(nextDelay(3, POSTFIX, () => 1), 1_320_000);
});

test('jitter never exceeds the maximum delay', () => {
  assert.equal(nextDelay(5, POSTFIX, () => 1), 4_000_000);
  assert.equal(nextDelay(5, POSTFIX, () => 0), 3_600_000);
});

test('a huge attempt count does not overflow', () => {
  const delay = nextDelay(10_000, POSTFIX, () => 0.5);
  assert.ok(Number.isFinite(delay));
  assert.equal(delay, 4_000_000);
});

test('every delay stays within ±10% of the unjittered one for random in [0, 1)', () => {
  for (let attempts = 1; attempts <= 8; attempts++) {
    const base = Math.min(POSTFIX.maxDelay, POSTFIX.initialDelay * 2 ** (attempts - 1));
    for (const r of [0, 0.1, 0.25, 0.5, 0.75, 0.999]) {
      const d = nextDelay(attempts, POSTFIX, () => r);
      assert.ok(d >= Math.round(base * 0.9) && d <= Math.min(POSTFIX.maxDelay, Math.round(base * 1.1)), `attempt ${attempts}, random ${r}: ${d}`);
    }
  }
});
