/**
 * RedisWindowCounter (inbound rate counters shared by instances) against a real redis-server: the same answers
 * as MemoryWindowCounter for the same takes, atomic under concurrency, and counting locally while Redis is gone.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createLogger } from '../../src/log.js';
import { RedisWindowCounter } from '../../src/state/redis-window-counter.js';
import { MemoryWindowCounter } from '../../src/state/window-counter.js';
import { REDIS_MISSING, redisForFile, startRedis } from '../helpers/redis.js';

const skip = REDIS_MISSING;
const T0 = Date.UTC(2025, 5, 3, 12, 0, 0);
const MINUTE = 60_000;
const log = createLogger('silent');

const fileRedis = redisForFile();
const connect = (prefix: string, url?: string) => fileRedis.connect(prefix, url);

test('Redis and memory counters answer alike for the same takes (sliding window, amounts above max included)', { skip }, async () => {
  const shared = new RedisWindowCounter(await connect('same:'));
  const local = new MemoryWindowCounter();
  let seed = 7;
  const next = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
  let now = T0;
  let refused = 0;
  for (let n = 0; n < 300; n++) {
    now += next() < 0.3 ? 0 : Math.floor(next() * 8_000);
    const key = next() < 0.5 ? 'ip:192.0.2.1' : 'user:scanner';
    const amount = next() < 0.05 ? 40 : 1 + Math.floor(next() * 3);
    const expected = local.takeNow(key, amount, 20, MINUTE, now);
    assert.deepEqual(await shared.take(key, amount, 20, MINUTE, now), expected, `take ${n} of ${amount} for ${key} at +${now - T0} ms`);
    if (!expected.ok) refused++;
  }
  assert.ok(refused > 10 && refused < 290, `the sequence exercises both answers (${refused} of 300 refused)`);
});

test('two clients taking 200 times each at once against max 30: exactly 30 succeed', { skip }, async () => {
  const one = new RedisWindowCounter(await connect('race:'));
  const two = new RedisWindowCounter(await connect('race:'));
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => [one.take('ip:198.51.100.7', 1, 30, MINUTE, T0 + i), two.take('ip:198.51.100.7', 1, 30, MINUTE, T0 + i)]).flat());
  assert.equal(results.filter((r) => r.ok).length, 30);
  const refusal = results.find((r) => !r.ok);
  assert.deepEqual(refusal, { ok: false, retryAt: T0 + MINUTE }, 'the first take leaves the window one minute after it');
});

test('while Redis is gone the counter limits in this process, and mail is not refused for the outage', { skip }, async () => {
  const own = await startRedis();
  const counter = new RedisWindowCounter(await connect('gone:', own.url), log);
  assert.deepEqual(await counter.take('ip:a', 1, 2, MINUTE, T0), { ok: true });
  await own.stop();
  assert.deepEqual(await counter.take('ip:a', 1, 2, MINUTE, T0 + 1), { ok: true }, 'counted locally from now on');
  assert.deepEqual(await counter.take('ip:a', 1, 2, MINUTE, T0 + 2), { ok: true });
  assert.deepEqual(await counter.take('ip:a', 1, 2, MINUTE, T0 + 3), { ok: false, retryAt: T0 + 1 + MINUTE }, 'the local counter still enforces the limit');
});
