/**
 * The scheduler with send-limit counters it cannot reach (Redis down): a limited delivery waits a short while,
 * is never sent unchecked, never bounced and counts no attempt; it goes once the counters answer again.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { Bouncer } from '../../src/delivery/bounce.js';
import type { Clock } from '../../src/delivery/clock.js';
import { LimitMetrics } from '../../src/delivery/limit-metrics.js';
import { SendLimiter, type LimitCheck, type LimitUse, type SendLimits } from '../../src/delivery/limits.js';
import { createPlanner } from '../../src/delivery/planner.js';
import { DeliveryScheduler } from '../../src/delivery/scheduler.js';
import { createLogger } from '../../src/log.js';
import { newQueueId } from '../../src/spool/queue-id.js';
import { createRecord } from '../../src/spool/record.js';
import { Spool } from '../../src/spool/spool.js';
import type { DeliveryRequest, RecipientOutcome, Upstream } from '../../src/upstreams/upstream.js';

const T0 = Date.UTC(2025, 5, 3, 12, 0, 0);
const BODY = 'From: erp@example.com\r\nTo: a@example.net\r\nSubject: invoice\r\n\r\nhello\r\n';

/** Counters in memory that can be switched off, as Redis going away looks to the scheduler. */
class SwitchableLimits implements SendLimits {
  reachable = false;
  readonly #local = new SendLimiter(new Map([['fake', { messagesPerHour: 10, perMailbox: true, mode: 'fixed' as const }]]));
  key(upstream: string, sender: string): string | undefined {
    return this.#local.key(upstream, sender);
  }
  async take(key: string, recipients: number, now: number): Promise<LimitCheck> {
    if (!this.reachable) throw new Error('The client is offline');
    return this.#local.take(key, recipients, now);
  }
  async uses(now: number): Promise<LimitUse[]> {
    return this.#local.uses(now);
  }
  async reset(): Promise<number> {
    return 0;
  }
  async close(): Promise<void> {}
}

class Recorder implements Upstream {
  readonly name = 'fake';
  readonly calls: string[][] = [];
  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    this.calls.push([...request.recipients]);
    return request.recipients.map((recipient) => ({ recipient, delivered: true, reply: '250 2.0.0 ok' }));
  }
  async close(): Promise<void> {}
}

test('limit counters out of reach: the delivery waits 30 s with no attempt counted, then goes when they answer', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'smarthost-limits-unavailable-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const spool = await Spool.open(dir);
  let now = T0;
  const timers: { at: number; fn: () => void }[] = [];
  const clock: Clock = { now: () => now, setTimer: (fn, ms) => (timers.push({ at: now + ms, fn }), { cancel() {} }) };
  const logs: Record<string, unknown>[] = [];
  const log = createLogger('info', new Writable({ write: (c: Buffer, _e, cb) => (c.toString().split('\n').filter(Boolean).forEach((l) => logs.push(JSON.parse(l) as Record<string, unknown>)), cb()) }));
  const registry = new Registry();
  const limits = new SwitchableLimits();
  const upstream = new Recorder();
  let scheduler: DeliveryScheduler | undefined;
  scheduler = new DeliveryScheduler({
    spool,
    upstreams: new Map([['fake', { upstream, maxConcurrency: 2 }]]),
    planner: createPlanner({ routing: { routes: [], default: 'fake' }, users: [], listeners: [], rewrite: [] }, spool),
    bouncer: new Bouncer({ spool, hostname: 'relay.test', clock, log, enqueue: (r) => scheduler!.add(r) }),
    retry: { initialDelay: 300_000, maxDelay: 4_000_000, lifetime: 5 * 86_400_000, bounceLifetime: 5 * 86_400_000 },
    maxConcurrency: 4,
    clock,
    log,
    limits,
    limitMetrics: new LimitMetrics(registry, ['fake'], true),
  });
  t.after(() => scheduler!.stop(0));
  const idle = async () => {
    // Turns of the event loop, not time: the spool's writes finish in their own time.
    for (let i = 0; i < 100_000 && (scheduler!.activeCount > 0 || i < 3); i++) await new Promise((r) => setImmediate(r));
    assert.equal(scheduler!.activeCount, 0, 'scheduler idle');
  };

  const record = createRecord({ id: newQueueId(T0), sender: 'erp@example.com', recipients: ['a@example.net'], receivedAt: T0, size: BODY.length, client: { address: '192.0.2.1', listener: 'relay', tls: false } });
  await spool.store(Readable.from([Buffer.from(BODY)]), record);
  scheduler.add(record);
  await idle();

  assert.deepEqual(upstream.calls, [], 'nothing sent without a limit check');
  const waiting = await spool.readRecord(record.id);
  assert.deepEqual(
    waiting.recipients.map((r) => [r.status, r.attempts, r.nextAttemptAt]),
    [['pending', 0, T0 + 30_000]],
    'deferred for a short while, no attempt counted, not bounced',
  );
  const event = logs.find((l) => l.event === 'limit.unavailable');
  assert.equal(event?.queueId, record.id);
  assert.equal(event?.level, 'warn');
  const metric = await registry.getSingleMetric('smarthost_send_limit_deferrals_total')!.get();
  assert.deepEqual(
    metric.values.map((v) => [v.labels.reason, v.value]),
    [
      ['limit', 0],
      ['state_unavailable', 1],
    ],
  );

  limits.reachable = true;
  now = T0 + 30_000;
  for (const timer of timers.splice(0)) if (timer.at <= now) timer.fn();
  scheduler.poke();
  await idle();
  assert.deepEqual(upstream.calls, [['a@example.net']]);
  assert.deepEqual((await limits.uses(now)).map((u) => u.used), [1], 'counted once it went');
});
