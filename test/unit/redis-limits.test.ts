/**
 * The send-limit Lua script against a real redis-server, checked against the local SendLimiter: the same
 * sequence of sends must get the same answers (ok, retry time, rule) and leave the same use, for fixed and
 * sliding windows of a minute and a week, per mailbox and per upstream; and concurrent takes from two clients
 * never pass the limit together.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SendLimiter, type LimitCheck, type LimitsConfig } from '../../src/delivery/limits.js';
import type { RedisState } from '../../src/state/redis.js';
import { LIMIT_KEY_TTL_MS, RedisSendLimits } from '../../src/state/redis-limits.js';
import { REDIS_MISSING, redisForFile, startRedis } from '../helpers/redis.js';

const skip = REDIS_MISSING;
const T0 = Date.UTC(2025, 5, 3, 12, 0, 0); // a Tuesday
const MINUTE = 60_000;
const DAY = 86_400_000;

let testNo = 0;
const fileRedis = redisForFile();

/** A connection with a key prefix of its own, so the tests in this file never see each other's keys. */
async function connect(prefix = `t${++testNo}:`): Promise<RedisState> {
  const connection = await fileRedis.connect(prefix);
  assert.ok(connection.up, 'connected to the test redis-server');
  return connection;
}

/** A small deterministic generator (mulberry32), so a failing sequence can be replayed. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

const SCENARIOS: { name: string; config: LimitsConfig; step: number }[] = [
  { name: 'fixed minute, messages and recipients, per mailbox', config: { messagesPerMinute: 5, recipientsPerMinute: 12, perMailbox: true, mode: 'fixed' }, step: 4_000 },
  { name: 'sliding minute, messages and recipients, per mailbox', config: { messagesPerMinute: 5, recipientsPerMinute: 12, perMailbox: true, mode: 'sliding' }, step: 4_000 },
  { name: 'fixed week and minute, per upstream', config: { messagesPerWeek: 40, messagesPerMinute: 3, recipientsPerDay: 60, perMailbox: false, mode: 'fixed' }, step: 3 * 3_600_000 },
  { name: 'sliding week and hour, per upstream', config: { messagesPerWeek: 40, recipientsPerHour: 9, perMailbox: false, mode: 'sliding' }, step: 3 * 3_600_000 },
];

for (const [i, scenario] of SCENARIOS.entries()) {
  test(`Lua and SendLimiter answer alike, send after send: ${scenario.name}`, { skip }, async () => {
    const limits = new Map([['up', scenario.config]]);
    const local = new SendLimiter(limits);
    const shared = new RedisSendLimits(await connect(), limits);
    const next = random(1000 + i);
    let now = T0;
    let refused = 0;
    for (let n = 0; n < 400; n++) {
      // Sends come in bursts (same millisecond, close together) and pauses (a window or more).
      const r = next();
      now += r < 0.2 ? 0 : r < 0.9 ? Math.floor(next() * scenario.step) : Math.floor(next() * scenario.step * 30);
      const sender = ['a@x.test', 'B@x.test', 'c@y.test'][Math.floor(next() * 3)]!;
      const recipients = next() < 0.05 ? 50 : 1 + Math.floor(next() * 4); // sometimes bigger than a whole budget
      const key = local.key('up', sender)!;
      assert.equal(shared.key('up', sender), key);
      const expected: LimitCheck = local.take(key, recipients, now);
      const actual = await shared.take(key, recipients, now);
      assert.deepEqual(actual, expected, `send ${n} at ${new Date(now).toISOString()} from ${sender} to ${recipients}`);
      if (!expected.ok) refused++;
    }
    assert.ok(refused > 20 && refused < 380, `the sequence exercises both answers (${refused} of 400 refused)`);
    assert.deepEqual(await shared.uses(now), local.uses(now));
  });
}

test('fixed weekly windows start on Monday 00:00 UTC in Redis too', { skip }, async () => {
  const shared = new RedisSendLimits(await connect(), new Map([['up', { messagesPerWeek: 1, perMailbox: false, mode: 'fixed' as const }]]));
  assert.deepEqual(await shared.take('up', 1, T0), { ok: true });
  assert.deepEqual(await shared.take('up', 1, T0 + DAY), { ok: false, retryAt: Date.UTC(2025, 5, 9), rule: { unit: 'messages', window: 'week', max: 1 } });
  assert.deepEqual(await shared.take('up', 1, Date.UTC(2025, 5, 9)), { ok: true }, 'Monday starts a new week');
});

test('a message bigger than the whole budget goes alone in an empty window, then the window is full', { skip }, async () => {
  const shared = new RedisSendLimits(await connect(), new Map([['up', { recipientsPerMinute: 5, perMailbox: false, mode: 'sliding' as const }]]));
  assert.deepEqual(await shared.take('up', 50, T0), { ok: true });
  const next = await shared.take('up', 1, T0 + 1000);
  assert.deepEqual(next, { ok: false, retryAt: T0 + MINUTE, rule: { unit: 'recipients', window: 'minute', max: 5 } });
});

test('two clients taking 200 times each at once from a budget of 30: exactly 30 succeed', { skip }, async () => {
  const prefix = `race${++testNo}:`;
  const limits = new Map([['up', { messagesPerHour: 30, perMailbox: true, mode: 'sliding' as const }]]);
  const one = new RedisSendLimits(await connect(prefix), limits);
  const two = new RedisSendLimits(await connect(prefix), limits);
  const key = one.key('up', 'erp@x.test')!;
  const takes = Array.from({ length: 200 }, (_, i) => [one.take(key, 1, T0 + i), two.take(key, 1, T0 + i)]).flat();
  const results = await Promise.all(takes);
  assert.equal(results.filter((r) => r.ok).length, 30);
  const uses = await one.uses(T0 + 200);
  assert.deepEqual(uses.map((u) => [u.key, u.used, u.max]), [['up/erp@x.test', 30, 30]]);
});

test('reset clears one upstream (each mailbox of it) or all; keys expire a week after the last send', { skip }, async () => {
  const redis = await connect();
  const limits = new Map([
    ['up', { messagesPerDay: 10, perMailbox: true, mode: 'fixed' as const }],
    ['upper', { messagesPerDay: 10, perMailbox: false, mode: 'fixed' as const }],
  ]);
  const shared = new RedisSendLimits(redis, limits);
  await shared.take(shared.key('up', 'a@x.test')!, 1, T0);
  await shared.take(shared.key('up', 'b@x.test')!, 1, T0);
  await shared.take(shared.key('upper', 'a@x.test')!, 1, T0);
  const ttl = await redis.client.pTTL(redis.key('limit', 'up/a@x.test'));
  assert.ok(ttl > LIMIT_KEY_TTL_MS - 60_000 && ttl <= LIMIT_KEY_TTL_MS, `expires in a week (${ttl} ms)`);
  assert.equal(await shared.reset('up'), 2, '"up" is not a prefix match for "upper"');
  assert.deepEqual((await shared.uses(T0)).map((u) => u.key), ['upper']);
  assert.equal(await shared.reset(), 1);
  assert.deepEqual(await shared.uses(T0), []);
});

test('Redis gone: take() fails instead of letting mail through unchecked', { skip }, async () => {
  const own = await startRedis();
  const redis = await fileRedis.connect('gone:', own.url);
  const shared = new RedisSendLimits(redis, new Map([['up', { messagesPerMinute: 1, perMailbox: false, mode: 'fixed' as const }]]));
  assert.deepEqual(await shared.take('up', 1, T0), { ok: true });
  await own.stop();
  await assert.rejects(shared.take('up', 1, T0));
  assert.equal(redis.up, false);
});
