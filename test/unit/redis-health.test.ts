/**
 * Upstream down marks shared through a real redis-server: two instances' UpstreamHealth, each with its own
 * connection and mirror. What one finds down the other skips; only one of them probes at a time; an answer
 * clears the mark for both. Polls are called by the test (no timers), the clock is the test's.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UpstreamHealth } from '../../src/delivery/upstream-health.js';
import { createLogger } from '../../src/log.js';
import type { RedisState } from '../../src/state/redis.js';
import { RedisHealthSync } from '../../src/state/redis-health.js';
import { REDIS_MISSING, redisForFile, startRedis } from '../helpers/redis.js';

const skip = REDIS_MISSING;
const T0 = Date.UTC(2025, 5, 3, 12, 0, 0);
const BACKOFF = 60_000;
const log = createLogger('silent');

const shared = redisForFile();

let now = T0;

async function instance(prefix: string): Promise<{ health: UpstreamHealth; sync: RedisHealthSync; redis: RedisState }> {
  const redis = await shared.connect(prefix);
  const health = new UpstreamHealth(['primary', 'backup'], 2, BACKOFF);
  const sync = new RedisHealthSync(redis, health, ['primary', 'backup'], { log, now: () => now });
  shared.onClose(() => sync.close());
  await sync.poll();
  return { health, sync, redis };
}

const isUp = (h: UpstreamHealth, name: string) => h.states().find((s) => s.name === name)!.up;

test('a down mark set by one instance is seen by the other; one probe at a time; an answer clears it for both', { skip }, async () => {
  now = T0;
  const a = await instance('marks:');
  const b = await instance('marks:');
  a.health.failed('primary', now, '421 4.4.0 connection refused');
  a.health.failed('primary', now, '421 4.4.0 connection refused');
  assert.equal(isUp(a.health, 'primary'), false);
  await a.sync.close(); // waits for the mark to be written
  await b.sync.poll();
  assert.equal(isUp(b.health, 'primary'), false, 'b takes over the mark');
  const adopted = b.health.states().find((s) => s.name === 'primary')!;
  assert.equal(adopted.downSince, T0);
  assert.equal(adopted.lastError, '421 4.4.0 connection refused');
  assert.equal(b.health.usable('primary', now), false, 'skipped until the backoff has passed');
  const mark = JSON.parse((await b.redis.client.get('marks:down:primary'))!) as { by: string };
  assert.equal(mark.by, a.redis.instanceId);
  const ttl = await b.redis.client.pTTL('marks:down:primary');
  assert.ok(ttl > 0, 'the mark expires');

  // The probe is due on both: each delivery that wants it asks for the lease; only one instance gets it.
  now = T0 + BACKOFF;
  const c = await instance('marks:');
  assert.equal(isUp(c.health, 'primary'), false);
  assert.equal(b.health.usable('primary', now), false, 'no lease yet');
  assert.equal(c.health.usable('primary', now), false, 'no lease yet');
  await Promise.all([b.sync.poll(), c.sync.poll()]);
  const leased = [b, c].filter((x) => x.health.usable('primary', now));
  assert.equal(leased.length, 1, 'exactly one instance may probe');
  const prober = leased[0]!;
  const other = prober === b ? c : b;
  prober.health.attempt('primary');
  assert.equal(prober.health.usable('primary', now), false, 'the probe is under way');

  // The probe fails: the mark moves probeAt on for everybody and the lease is released.
  now += 5_000;
  prober.health.failed('primary', now, '421 4.4.0 connection refused');
  await prober.sync.poll();
  await other.sync.poll();
  assert.equal(other.health.states().find((s) => s.name === 'primary')!.probeAt, now + BACKOFF, "the other instance waits for the new backoff");
  assert.equal(await other.redis.client.get('marks:probe:primary'), null, 'lease released');

  // The next probe answers: the mark is gone and the other instance uses the upstream again.
  now += BACKOFF;
  other.health.usable('primary', now);
  await other.sync.poll();
  assert.equal(other.health.usable('primary', now), true, 'the other instance probes this time');
  other.health.attempt('primary');
  other.health.answered('primary');
  assert.equal(isUp(other.health, 'primary'), true);
  await other.sync.poll();
  await prober.sync.poll();
  assert.equal(isUp(prober.health, 'primary'), true, 'cleared for every instance');
  assert.equal(await prober.redis.client.get('marks:down:primary'), null);
  assert.equal(isUp(prober.health, 'backup'), true, 'other upstreams untouched');
});

test('without Redis each instance probes on its own, as without shared state', { skip }, async () => {
  now = T0;
  const own = await startRedis();
  const redis = await shared.connect('alone:', own.url);
  const health = new UpstreamHealth(['primary'], 1, BACKOFF);
  const sync = new RedisHealthSync(redis, health, ['primary'], { log, now: () => now });
  shared.onClose(() => sync.close());
  await sync.poll();
  assert.equal(health.sharedProbes, true);
  await own.stop();
  health.failed('primary', now, '421 4.4.0 connection refused');
  await sync.poll();
  assert.equal(health.sharedProbes, false, 'Redis gone: no lease needed');
  now += BACKOFF;
  assert.equal(health.usable('primary', now), true, 'probed by this instance after its own backoff');
  assert.equal(isUp(health, 'primary'), false, 'its own down mark still holds');
});
