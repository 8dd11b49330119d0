/**
 * Inbound rate limits without sockets: the sliding minute with an injected clock, per client address and per
 * user, listeners kept apart in one shared counter, exempt networks, a failing counter letting mail in (with a
 * warning at most once a minute), and the config keys with their error paths.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import type { RateLimitsConfig } from '../../src/inbound/limits-config.js';
import { InboundRateLimiter, type RateKind } from '../../src/inbound/rate-limits.js';
import { createLogger } from '../../src/log.js';
import { MemoryWindowCounter, type TakeResult, type WindowCounter } from '../../src/state/window-counter.js';

const T0 = Date.parse('2025-03-03T09:00:00Z');

function captureLog() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: createLogger('debug', stream), lines };
}

function limiter(config: RateLimitsConfig | undefined, o: { counter?: WindowCounter; listener?: string } = {}) {
  const clock = { t: T0 };
  const { log, lines } = captureLog();
  const l = new InboundRateLimiter(o.listener ?? 'relay', config, o.counter ?? new MemoryWindowCounter(), log, () => clock.t);
  return { limiter: l, clock, lines };
}

/** The reply take() answers with: undefined for accepted, else "450 4.7.1 ...". */
async function reply(l: InboundRateLimiter, kind: RateKind, address: string, user?: string): Promise<string | undefined> {
  const refusal = await l.take(kind, { address, user });
  return refusal?.error.reply;
}

const ADDRESS_FULL = '450 4.7.1 Too many messages from your address, try again later';

test('messages per client address: a sliding minute, refused with 450 4.7.1 until the oldest message leaves the window', async () => {
  const { limiter: l, clock } = limiter({ perClient: { messagesPerMinute: 3 }, exempt: [] });
  for (const at of [0, 10_000, 20_000]) {
    clock.t = T0 + at;
    assert.equal(await reply(l, 'messages', '192.0.2.1'), undefined, `message at +${at}ms`);
  }
  clock.t = T0 + 30_000;
  assert.equal(await reply(l, 'messages', '192.0.2.1'), ADDRESS_FULL);
  clock.t = T0 + 59_999;
  assert.equal(await reply(l, 'messages', '192.0.2.1'), ADDRESS_FULL, 'the first message is still inside the minute');
  clock.t = T0 + 60_000;
  assert.equal(await reply(l, 'messages', '192.0.2.1'), undefined, 'the first message left the window');
  assert.equal(await reply(l, 'messages', '192.0.2.1'), ADDRESS_FULL, 'and only one slot was freed');
  // Refused attempts use no budget: at +70s the second message (at +10s) leaves and one more fits.
  clock.t = T0 + 70_000;
  assert.equal(await reply(l, 'messages', '192.0.2.1'), undefined);
  // Another address has a budget of its own.
  assert.equal(await reply(l, 'messages', '192.0.2.2'), undefined);
});

test('a refusal says when the window allows the next one', async () => {
  const { limiter: l, clock } = limiter({ perClient: { recipientsPerMinute: 2 }, exempt: [] });
  await l.take('recipients', { address: '192.0.2.1' });
  clock.t = T0 + 5_000;
  await l.take('recipients', { address: '192.0.2.1' });
  clock.t = T0 + 6_000;
  const refusal = await l.take('recipients', { address: '192.0.2.1' });
  assert.ok(refusal);
  assert.equal(refusal.error.reply, '450 4.7.1 Too many recipients from your address, try again later');
  assert.equal(refusal.reason, 'recipient rate per client address');
  assert.equal(refusal.limit, 2);
  assert.equal(refusal.retryAt, T0 + 60_000);
});

test('messages and recipients are separate budgets', async () => {
  const { limiter: l } = limiter({ perClient: { messagesPerMinute: 1, recipientsPerMinute: 3 }, exempt: [] });
  assert.equal(await reply(l, 'messages', '192.0.2.1'), undefined);
  for (let i = 0; i < 3; i++) assert.equal(await reply(l, 'recipients', '192.0.2.1'), undefined, `recipient ${i + 1}`);
  assert.equal(await reply(l, 'recipients', '192.0.2.1'), '450 4.7.1 Too many recipients from your address, try again later');
  assert.equal(await reply(l, 'messages', '192.0.2.1'), ADDRESS_FULL);
});

test('per user: counted across client addresses; other users and unauthenticated sessions are not counted by it', async () => {
  const { limiter: l, clock } = limiter({ perUser: { messagesPerMinute: 2 }, exempt: [] });
  assert.equal(await reply(l, 'messages', '192.0.2.1', 'alice'), undefined);
  assert.equal(await reply(l, 'messages', '198.51.100.7', 'alice'), undefined);
  assert.equal(await reply(l, 'messages', '203.0.113.9', 'alice'), '450 4.7.1 Too many messages from your account, try again later');
  assert.equal(await reply(l, 'messages', '203.0.113.9', 'bob'), undefined);
  for (let i = 0; i < 5; i++) assert.equal(await reply(l, 'messages', '203.0.113.9'), undefined, 'no user, no per-user limit');
  assert.equal(l.applies('messages', { address: '203.0.113.9' }), false);
  clock.t = T0 + 60_000;
  assert.equal(await reply(l, 'messages', '203.0.113.9', 'alice'), undefined);
});

test('per client and per user together: whichever is used up first refuses', async () => {
  const { limiter: l } = limiter({ perClient: { messagesPerMinute: 2 }, perUser: { messagesPerMinute: 3 }, exempt: [] });
  assert.equal(await reply(l, 'messages', '192.0.2.1', 'alice'), undefined);
  assert.equal(await reply(l, 'messages', '192.0.2.1', 'alice'), undefined);
  assert.equal(await reply(l, 'messages', '192.0.2.1', 'alice'), ADDRESS_FULL);
  assert.equal(await reply(l, 'messages', '192.0.2.2', 'alice'), undefined);
  assert.equal(await reply(l, 'messages', '192.0.2.3', 'alice'), '450 4.7.1 Too many messages from your account, try again later');
});

test('exempt networks are counted by no limit; the rest of the listener is', async () => {
  const { limiter: l } = limiter({ perClient: { messagesPerMinute: 1 }, perUser: { messagesPerMinute: 1 }, exempt: ['10.1.0.0/16', '2001:db8::/32'] });
  for (let i = 0; i < 5; i++) {
    assert.equal(await reply(l, 'messages', '10.1.200.3', 'alice'), undefined);
    assert.equal(await reply(l, 'messages', '::ffff:10.1.0.9'), undefined, 'an IPv4 client of a dual-stack socket');
    assert.equal(await reply(l, 'messages', '2001:db8::25'), undefined);
  }
  assert.equal(l.exempts('10.1.0.1'), true);
  assert.equal(l.exempts('10.2.0.1'), false);
  assert.equal(await reply(l, 'messages', '10.2.0.1'), undefined);
  assert.equal(await reply(l, 'messages', '10.2.0.1'), ADDRESS_FULL);
  // alice's messages from the exempt network did not use her budget.
  assert.equal(await reply(l, 'messages', '10.2.0.2', 'alice'), undefined);
});

test('listeners sharing one counter keep their own budgets', async () => {
  const counter = new MemoryWindowCounter();
  const relay = limiter({ perClient: { messagesPerMinute: 1 }, exempt: [] }, { counter, listener: 'relay' }).limiter;
  const submission = limiter({ perClient: { messagesPerMinute: 1 }, exempt: [] }, { counter, listener: 'submission' }).limiter;
  assert.equal(await reply(relay, 'messages', '192.0.2.1'), undefined);
  assert.equal(await reply(relay, 'messages', '192.0.2.1'), ADDRESS_FULL);
  assert.equal(await reply(submission, 'messages', '192.0.2.1'), undefined);
});

/** A counter whose every take fails, as Redis does when it is down; counts the calls. */
class BrokenCounter implements WindowCounter {
  calls = 0;
  async take(): Promise<TakeResult> {
    this.calls++;
    throw new Error('connect ECONNREFUSED 127.0.0.1:6379');
  }
  async close(): Promise<void> {}
}

test('a counter that fails lets mail in, with a warning at most once a minute', async () => {
  const counter = new BrokenCounter();
  const { limiter: l, clock, lines } = limiter({ perClient: { messagesPerMinute: 1 }, exempt: [] }, { counter });
  const warnings = () => lines.filter((x) => x.event === 'smtp.rate_limit_unavailable');
  for (let i = 0; i < 5; i++) {
    clock.t = T0 + i * 10_000;
    assert.equal(await reply(l, 'messages', '192.0.2.1'), undefined, `message ${i + 1} accepted`);
  }
  assert.equal(counter.calls, 5);
  assert.equal(warnings().length, 1);
  assert.equal(warnings()[0]!.level, 'warn');
  assert.equal(warnings()[0]!.listener, 'relay');
  clock.t = T0 + 60_000;
  assert.equal(await reply(l, 'messages', '192.0.2.1'), undefined);
  assert.equal(warnings().length, 2);
  assert.equal(warnings()[1]!.failures, 5, 'the second warning counts the failures it stands for');
});

test('without rateLimits nothing is counted and the counter is never asked', async () => {
  const counter = new BrokenCounter();
  for (const config of [undefined, { exempt: [] }, { perClient: { messagesPerMinute: 5 }, exempt: [] }]) {
    const { limiter: l } = limiter(config, { counter });
    assert.equal(l.applies('recipients', { address: '192.0.2.1', user: 'alice' }), false);
    assert.equal(await reply(l, 'recipients', '192.0.2.1', 'alice'), undefined);
  }
  assert.equal(counter.calls, 0);
});

// ---------------------------------------------------------------------------------------------------------
// configuration

function yaml(listener: string): string {
  return ['spool: { dir: /var/spool/smarthost }', 'listeners:', `  - { name: relay, role: relay, port: 2525, ${listener} }`, 'upstreams:', '  outbox: { type: outbox, dir: /var/outbox }', 'routing: { default: outbox }'].join('\n');
}

function problems(listener: string): string[] {
  try {
    parseConfig(yaml(listener), 'test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems;
  }
  assert.fail('the config was accepted');
}

test('config: rateLimits and proxyProtocol load; no limits and no PROXY unless configured', () => {
  const config = parseConfig(
    yaml(
      'rateLimits: { perClient: { messagesPerMinute: 60, recipientsPerMinute: 300 }, perUser: { messagesPerMinute: 120, recipientsPerMinute: 1000 }, exempt: [10.1.0.0/16] }, proxyProtocol: { from: [10.0.0.5, "2001:db8::5"] }',
    ),
  );
  const l = config.listeners[0]!;
  assert.deepEqual(l.rateLimits, { perClient: { messagesPerMinute: 60, recipientsPerMinute: 300 }, perUser: { messagesPerMinute: 120, recipientsPerMinute: 1000 }, exempt: ['10.1.0.0/16'] });
  assert.deepEqual(l.proxyProtocol, { from: ['10.0.0.5', '2001:db8::5'] });
  const plain = parseConfig(yaml('maxConnectionsPerIp: 20')).listeners[0]!;
  assert.equal(plain.rateLimits, undefined);
  assert.equal(plain.proxyProtocol, undefined);
  assert.equal(plain.maxConnectionsPerIp, 20);
});

test('config: rate-limit and PROXY mistakes are named by their key path', () => {
  const cases: [string, RegExp][] = [
    ['rateLimits: { perClient: { messagesPerMinute: 0 } }', /^listeners\[0\]\.rateLimits\.perClient\.messagesPerMinute: expected an integer 1-1000000/],
    ['rateLimits: { perUser: { recipientsPerMinute: 2.5 } }', /^listeners\[0\]\.rateLimits\.perUser\.recipientsPerMinute: expected an integer/],
    ['rateLimits: { perClient: { messagesPerHour: 10 } }', /^listeners\[0\]\.rateLimits\.perClient\.messagesPerHour: unknown key/],
    ['rateLimits: { exempt: [10.1.0.0/33] }', /^listeners\[0\]\.rateLimits\.exempt\[0\]: expected an IPv4 or IPv6 network/],
    ['proxyProtocol: { from: [10.0.0.0/24] }', /^listeners\[0\]\.proxyProtocol\.from\[0\]: expected the IP address of a load balancer/],
    ['proxyProtocol: { from: ["*"] }', /^listeners\[0\]\.proxyProtocol\.from\[0\]: expected the IP address/],
    ['proxyProtocol: { from: [] }', /^listeners\[0\]\.proxyProtocol\.from: expected at least one load balancer address/],
    ['proxyProtocol: true', /^listeners\[0\]\.proxyProtocol: /],
  ];
  for (const [listener, expected] of cases) {
    const found = problems(listener);
    assert.ok(found.some((p) => expected.test(p)), `${listener}: no problem matching ${String(expected)} in:\n${found.join('\n')}`);
  }
});
