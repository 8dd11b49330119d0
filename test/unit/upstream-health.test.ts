import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UpstreamHealth } from '../../src/delivery/upstream-health.js';

test('a probe that ends in smarthost\'s own failure (unjudged) leaves the upstream down and lets the next delivery probe', () => {
  const health = new UpstreamHealth(['m365'], 1, 1000);
  health.failed('m365', 0, '451 4.4.1 connection refused');
  assert.equal(health.usable('m365', 500), false, 'skipped during the backoff');
  assert.equal(health.usable('m365', 1000), true);
  health.attempt('m365');
  assert.equal(health.usable('m365', 1000), false, 'one probe at a time');

  health.unjudged('m365');
  const [state] = health.states();
  assert.deepEqual([state!.up, state!.consecutiveFailures, state!.lastError], [false, 1, '451 4.4.1 connection refused'], 'neither up nor one more failure');
  assert.equal(health.usable('m365', 1000), true, 'the next delivery probes');
});
