import { test } from 'node:test';
import assert from 'node:assert/strict';
import { limitRules, SendLimiter, type LimitsConfig } from '../../src/delivery/limits.js';

const T0 = Date.UTC(2025, 5, 3, 12, 0, 0);
const MINUTE = 60_000;
const DAY = 86_400_000;

function limiter(config: Partial<LimitsConfig>, name = 'm365'): SendLimiter {
  return new SendLimiter(new Map([[name, { perMailbox: false, mode: 'fixed', ...config }]]));
}

test('fixed window: the 31st message in a minute waits for the next minute, then goes', () => {
  const l = limiter({ messagesPerMinute: 30 });
  const key = l.key('m365', 'a@x')!;
  for (let i = 0; i < 30; i++) {
    assert.deepEqual(l.check(key, 1, T0 + i * 100), { ok: true });
    l.record(key, 1, T0 + i * 100);
  }
  const over = l.check(key, 1, T0 + 5000);
  assert.equal(over.ok, false);
  assert.equal(!over.ok && over.retryAt, T0 + MINUTE);
  assert.deepEqual(l.check(key, 1, T0 + MINUTE), { ok: true });
});

test('sliding window: the next message goes exactly one window after the oldest counted send', () => {
  const l = limiter({ messagesPerMinute: 2, mode: 'sliding' });
  const key = l.key('m365', 'a@x')!;
  l.record(key, 1, T0 + 10_000);
  l.record(key, 1, T0 + 20_000);
  const over = l.check(key, 1, T0 + 30_000);
  assert.equal(!over.ok && over.retryAt, T0 + 70_000);
  assert.equal(l.check(key, 1, T0 + 69_999).ok, false);
  assert.equal(l.check(key, 1, T0 + 70_000).ok, true);
});

test('recipients per day: a message whose recipients do not fit waits for the next UTC day', () => {
  const l = limiter({ recipientsPerDay: 10_000 });
  const key = l.key('m365', 'a@x')!;
  l.record(key, 9_990, T0);
  assert.equal(l.check(key, 10, T0 + 1).ok, true);
  const over = l.check(key, 11, T0 + 1);
  assert.equal(!over.ok && over.retryAt, Date.UTC(2025, 5, 4));
  assert.equal(!over.ok && over.rule.unit, 'recipients');
});

test('a message bigger than the whole budget still goes alone in an empty window', () => {
  const l = limiter({ recipientsPerMinute: 5 });
  const key = l.key('m365', 'a@x')!;
  assert.equal(l.check(key, 50, T0).ok, true);
});

test('the latest of several exhausted limits decides when mail may go', () => {
  const l = limiter({ messagesPerMinute: 1, messagesPerHour: 2 });
  const key = l.key('m365', 'a@x')!;
  l.record(key, 1, T0);
  l.record(key, 1, T0 + MINUTE);
  const over = l.check(key, 1, T0 + MINUTE + 1);
  assert.equal(!over.ok && over.retryAt, T0 + 60 * MINUTE);
});

test('weekly fixed windows start on Monday 00:00 UTC', () => {
  const l = limiter({ messagesPerWeek: 1 });
  const key = l.key('m365', 'a@x')!;
  l.record(key, 1, T0); // Tuesday 2025-06-03
  const over = l.check(key, 1, T0);
  assert.equal(!over.ok && over.retryAt, Date.UTC(2025, 5, 9));
});

test('per mailbox: each sender has its own budget; without perMailbox they share one', () => {
  const per = limiter({ messagesPerMinute: 1, perMailbox: true });
  per.record(per.key('m365', 'a@x')!, 1, T0);
  assert.equal(per.check(per.key('m365', 'A@X')!, 1, T0).ok, false, 'addresses compare case-insensitively');
  assert.equal(per.check(per.key('m365', 'b@x')!, 1, T0).ok, true);
  const shared = limiter({ messagesPerMinute: 1 });
  shared.record(shared.key('m365', 'a@x')!, 1, T0);
  assert.equal(shared.check(shared.key('m365', 'b@x')!, 1, T0).ok, false);
  assert.equal(shared.key('other', 'a@x'), undefined, 'an upstream without limits has no key');
});

test('uses, reset and snapshot/restore: counters survive a new limiter, a reset clears them', () => {
  const l = limiter({ messagesPerMinute: 30, recipientsPerDay: 10_000, perMailbox: true });
  const key = l.key('m365', 'a@x')!;
  l.record(key, 3, T0);
  const uses = l.uses(T0 + 1);
  assert.deepEqual(
    uses.map((u) => [u.key, u.unit, u.window, u.used, u.max, u.resetsAt]),
    [
      ['m365/a@x', 'messages', 'minute', 1, 30, T0 + MINUTE],
      ['m365/a@x', 'recipients', 'day', 3, 10_000, Date.UTC(2025, 5, 4)],
    ],
  );
  const again = limiter({ messagesPerMinute: 30, recipientsPerDay: 10_000, perMailbox: true });
  again.restore(JSON.parse(JSON.stringify(l.snapshot(T0 + 1))));
  assert.deepEqual(again.uses(T0 + 1), uses);
  assert.equal(again.reset('m365'), 1);
  assert.deepEqual(again.uses(T0 + 1), []);
  assert.deepEqual(l.uses(T0 + 11 * 60 * MINUTE).map((u) => u.used), [0, 3], 'later that day only the day window still counts it');
  assert.deepEqual(l.uses(T0 + DAY), [], 'a day later the send counts in no window, and the key is forgotten');
});

test('saved counters keep only sends that can still count, each key to its longest window, and drop keys with none', () => {
  const l = new SendLimiter(
    new Map<string, LimitsConfig>([
      ['hourly', { perMailbox: true, mode: 'sliding', messagesPerHour: 100 }],
      ['weekly', { perMailbox: false, mode: 'fixed', recipientsPerWeek: 1000 }],
    ]),
  );
  const old = l.key('hourly', 'gone@x')!;
  const recent = l.key('hourly', 'busy@x')!;
  const weekly = l.key('weekly', 'any@x')!;
  l.record(old, 1, T0);
  l.record(recent, 1, T0);
  l.record(recent, 2, T0 + 50 * MINUTE);
  l.record(weekly, 5, T0);
  const now = T0 + 61 * MINUTE;
  assert.deepEqual(l.snapshot(now).usage, {
    'hourly/busy@x': [[T0 + 50 * MINUTE, 1, 2]],
    weekly: [[T0, 1, 5]],
  });
  // The hour-only key kept nothing a week's horizon would have kept: the stale sender is gone, not just empty.
  assert.deepEqual(l.uses(now).map((u) => u.key), ['hourly/busy@x', 'weekly']);
  assert.deepEqual(l.snapshot(T0 + 8 * DAY).usage, {}, 'a week later nothing counts anywhere');
});

test('limitRules lists only the limits that are set', () => {
  assert.deepEqual(limitRules({ perMailbox: true, mode: 'fixed', messagesPerMinute: 30, recipientsPerDay: 10_000 }), [
    { unit: 'messages', window: 'minute', max: 30 },
    { unit: 'recipients', window: 'day', max: 10_000 },
  ]);
});
