import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import type { RetryConfig } from '../../src/config/schema.js';
import { Bouncer } from '../../src/delivery/bounce.js';
import type { Clock } from '../../src/delivery/clock.js';
import { SendLimiter } from '../../src/delivery/limits.js';
import { createPlanner } from '../../src/delivery/planner.js';
import { DeliveryScheduler } from '../../src/delivery/scheduler.js';
import { createLogger } from '../../src/log.js';
import { SmtpError } from '../../src/smtp-error.js';
import { newQueueId } from '../../src/spool/queue-id.js';
import { createRecord, type MessageRecord } from '../../src/spool/record.js';
import { Spool } from '../../src/spool/spool.js';
import type { DeliveryRequest, RecipientOutcome, Upstream } from '../../src/upstreams/upstream.js';

const T0 = Date.UTC(2025, 5, 3, 12, 0, 0);
const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const POSTFIX_RETRY: RetryConfig = { initialDelay: 5 * MINUTE, maxDelay: 4000 * SECOND, lifetime: 5 * DAY, bounceLifetime: 5 * DAY };
const SENDER = 'scanner@example.com';
const BODY = 'From: Scanner <scanner@example.com>\r\nTo: a@example.net\r\nSubject: scan\r\n\r\nscanned page\r\n';

const deferral = () => new SmtpError(451, '4.2.0', 'mailbox busy, try later');
const rejection = () => new SmtpError(550, '5.1.1', 'user unknown');

/**
 * A clock that only moves when told; timers are recorded and fired by advance(). A scheduler that reads it
 * endlessly without time passing is spinning (and would starve the event loop): now() then throws.
 */
class ManualClock implements Clock {
  #now: number;
  #reads = 0;
  readonly #timers = new Set<{ at: number; fn: () => void }>();

  constructor(start: number) {
    this.#now = start;
  }

  now(): number {
    if (++this.#reads > 10_000) throw new Error('clock read 10000 times without time passing: busy loop');
    return this.#now;
  }

  setTimer(fn: () => void, ms: number): { cancel(): void } {
    const timer = { at: this.#now + ms, fn };
    this.#timers.add(timer);
    return { cancel: () => this.#timers.delete(timer) };
  }

  /** Timers armed for a time that has already come. */
  overdueTimers(): number {
    return [...this.#timers].filter((t) => t.at <= this.#now).length;
  }

  /** The next timer due at or before `limit`, removed from the set. */
  takeNext(limit: number): { at: number; fn: () => void } | undefined {
    let next: { at: number; fn: () => void } | undefined;
    for (const t of this.#timers) if (t.at <= limit && (!next || t.at < next.at)) next = t;
    if (next) this.#timers.delete(next);
    return next;
  }

  set(now: number): void {
    this.#now = now;
    this.#reads = 0;
  }
}

type Step = 'ok' | 'omit' | SmtpError;

interface Call {
  at: number;
  queueId: string;
  sender: string;
  recipients: string[];
  body: string;
}

/**
 * An upstream whose answers are scripted per recipient: each call takes the next step of each recipient's
 * script ('ok' once it is used up). `throwOnCall` makes the next call fail as a whole; with `hold` set,
 * each call waits until release() so concurrency can be observed.
 */
class ScriptedUpstream implements Upstream {
  readonly name = 'fake';
  readonly calls: Call[] = [];
  readonly #script = new Map<string, Step[]>();
  throwOnCall: Error | undefined;
  hold = false;
  inFlight = 0;
  maxInFlight = 0;
  readonly #held: (() => void)[] = [];

  constructor(private readonly clock: Clock) {}

  script(recipient: string, ...steps: Step[]): void {
    this.#script.set(recipient, steps);
  }

  get heldCount(): number {
    return this.#held.length;
  }

  releaseOne(): void {
    this.#held.shift()?.();
  }

  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      const chunks: Buffer[] = [];
      for await (const chunk of request.openMessage()) chunks.push(chunk as Buffer);
      this.calls.push({
        at: this.clock.now(),
        queueId: request.queueId,
        sender: request.sender,
        recipients: [...request.recipients],
        body: Buffer.concat(chunks).toString('utf8'),
      });
      if (this.hold) await new Promise<void>((resolve) => this.#held.push(resolve));
      const error = this.throwOnCall;
      this.throwOnCall = undefined;
      if (error) throw error;
      return request.recipients.flatMap((recipient): RecipientOutcome[] => {
        const step = this.#script.get(recipient)?.shift() ?? 'ok';
        if (step === 'omit') return [];
        if (step === 'ok') return [{ recipient, delivered: true, reply: '250 2.0.0 queued' }];
        return [{ recipient, delivered: false, error: step }];
      });
    } finally {
      this.inFlight--;
    }
  }

  async close(): Promise<void> {}
}

/** Lets the event loop run until `done()` holds; spool I/O completes in the thread pool, so this is no sleep. */
async function turnsUntil(done: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 100_000; i++) {
    if (done()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.fail(`never happened: ${what}`);
}

interface Harness {
  dir: string;
  spool: Spool;
  clock: ManualClock;
  upstream: ScriptedUpstream;
  backup: ScriptedUpstream;
  scheduler: DeliveryScheduler;
  logs: Record<string, unknown>[];
  /** Spools a message from SENDER (or `sender`) and hands it to the scheduler, then lets it run. */
  queue(recipients: string[], sender?: string): Promise<MessageRecord>;
  /** Runs until no attempt is in flight. */
  settle(): Promise<void>;
  /** Moves the clock forward, firing each timer at its own time and letting the work it starts finish. */
  advance(ms: number): Promise<void>;
  events(event: string): Record<string, unknown>[];
  queueFiles(): Promise<string[]>;
}

interface HarnessOptions {
  retry?: Partial<RetryConfig>;
  maxConcurrency?: number;
  upstreamConcurrency?: number;
  dir?: string;
  /** The spool that recovered the queue in dir, as the daemon hands its scheduler what its spool loaded. */
  spool?: Spool;
  start?: number;
  /** The first DSN cannot be queued (e.g. the disk is full). */
  failFirstDsn?: boolean;
  limits?: SendLimiter;
  /** A second upstream "backup", listed as the fallback of a catch-all route to "fake". */
  fallback?: boolean;
}

/** A Bouncer whose first notify() fails as if the spool could not store the DSN. */
class FlakyBouncer extends Bouncer {
  failNext = true;
  override async notify(record: MessageRecord): Promise<MessageRecord> {
    if (this.failNext) {
      this.failNext = false;
      throw new Error('ENOSPC: no space left on device');
    }
    return super.notify(record);
  }
}

async function harness(t: TestContext, o: HarnessOptions = {}): Promise<Harness> {
  const dir = o.dir ?? (await mkdtemp(join(tmpdir(), 'smarthost-scheduler-')));
  if (!o.dir) t.after(() => rm(dir, { recursive: true, force: true }));
  const spool = o.spool ?? (await Spool.open(dir));
  const clock = new ManualClock(o.start ?? T0);
  const upstream = new ScriptedUpstream(clock);
  const backup = new ScriptedUpstream(clock);
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      callback();
    },
  });
  const log = createLogger('info', sink);
  let scheduler: DeliveryScheduler | undefined;
  const bouncerOptions = { spool, hostname: 'relay.test', clock, log, enqueue: (r: MessageRecord) => scheduler!.add(r) };
  const bouncer = o.failFirstDsn ? new FlakyBouncer(bouncerOptions) : new Bouncer(bouncerOptions);
  scheduler = new DeliveryScheduler({
    spool,
    upstreams: new Map([
      ['fake', { upstream, maxConcurrency: o.upstreamConcurrency ?? 4 }],
      ...(o.fallback ? [['backup', { upstream: backup, maxConcurrency: 4 }] as const] : []),
    ]),
    planner: createPlanner(
      {
        routing: { routes: o.fallback ? [{ name: 'all', match: {}, upstream: 'fake', fallbacks: ['backup'] }] : [], default: 'fake' },
        users: [],
        listeners: [],
        rewrite: [],
      },
      spool,
    ),
    bouncer,
    retry: { ...POSTFIX_RETRY, ...o.retry },
    maxConcurrency: o.maxConcurrency ?? 10,
    clock,
    log,
    random: () => 0.5,
    ...(o.limits ? { limits: o.limits } : {}),
  });
  const s = scheduler;
  t.after(() => s.stop(0));

  const settle = () => turnsUntil(() => s.activeCount === 0, 'scheduler idle');
  return {
    dir,
    spool,
    clock,
    upstream,
    backup,
    scheduler: s,
    logs,
    settle,
    async queue(recipients, sender = SENDER) {
      const now = clock.now();
      const record = createRecord({
        id: newQueueId(now),
        sender,
        recipients,
        receivedAt: now,
        size: BODY.length,
        client: { address: '192.0.2.10', listener: 'relay', tls: false },
      });
      await spool.store(Readable.from([Buffer.from(BODY)]), record);
      s.add(record);
      await settle();
      return record;
    },
    async advance(ms) {
      const target = clock.now() + ms;
      await settle();
      for (let fired = 0; ; fired++) {
        assert.ok(fired < 100_000, 'timers keep firing without time passing');
        const timer = clock.takeNext(target);
        if (!timer) break;
        clock.set(Math.max(clock.now(), timer.at));
        timer.fn();
        await settle();
      }
      clock.set(target);
    },
    events: (event) => logs.filter((l) => l.event === event),
    async queueFiles() {
      return (await readdir(spool.queueDir)).sort();
    },
  };
}

const isBounce = (c: Call) => c.sender === '';

test('mixed outcomes: one delivered, one deferred, one rejected → one DSN, and only the deferred one is retried at +5m', async (t) => {
  const h = await harness(t);
  h.upstream.script('b@example.net', deferral());
  h.upstream.script('c@example.net', rejection());
  const message = await h.queue(['a@example.net', 'b@example.net', 'c@example.net']);

  const [first, dsn, ...rest] = h.upstream.calls;
  assert.deepEqual(rest, []);
  assert.ok(first);
  assert.deepEqual({ at: first.at, sender: first.sender, recipients: first.recipients }, {
    at: T0,
    sender: SENDER,
    recipients: ['a@example.net', 'b@example.net', 'c@example.net'],
  });
  assert.equal(first.body, BODY);

  // The DSN travels through the same upstream, from the null sender to the original sender.
  assert.ok(dsn);
  assert.equal(dsn.sender, '');
  assert.deepEqual(dsn.recipients, [SENDER]);
  assert.notEqual(dsn.queueId, message.id);
  assert.match(dsn.body, /^Final-Recipient: rfc822; c@example\.net\r$/m);
  assert.match(dsn.body, /^Status: 5\.1\.1\r$/m);
  assert.match(dsn.body, /^Diagnostic-Code: smtp; 550 5\.1\.1 user unknown\r$/m);
  assert.doesNotMatch(dsn.body, /Final-Recipient: rfc822; [ab]@/);
  assert.ok(dsn.body.includes('Subject: scan'), 'the DSN quotes the original headers');
  assert.equal(h.events('bounce.queued').length, 1);

  const stored = await h.spool.readRecord(message.id);
  assert.deepEqual(
    stored.recipients.map((r) => [r.address, r.status, r.attempts, r.notified]),
    [
      ['a@example.net', 'delivered', 1, undefined],
      ['b@example.net', 'pending', 1, undefined],
      ['c@example.net', 'failed', 1, true],
    ],
  );
  assert.equal(stored.recipients[1]!.nextAttemptAt, T0 + 5 * MINUTE);
  assert.deepEqual(stored.recipients[1]!.lastReply, { code: 451, enhanced: '4.2.0', text: 'mailbox busy, try later' });

  await h.advance(4 * MINUTE + 59 * SECOND);
  assert.equal(h.upstream.calls.length, 2, 'no retry before +5m');

  await h.advance(1 * SECOND);
  const retry = h.upstream.calls[2];
  assert.deepEqual(retry && { at: retry.at, queueId: retry.queueId, recipients: retry.recipients }, {
    at: T0 + 5 * MINUTE,
    queueId: message.id,
    recipients: ['b@example.net'],
  });
  assert.equal(h.upstream.calls.filter(isBounce).length, 1, 'still exactly one DSN');

  assert.deepEqual(await h.queueFiles(), [], 'message and DSN have left the spool');
  assert.equal(h.scheduler.size, 0);
  assert.deepEqual(
    h.events('delivery').filter((e) => e.queueId === message.id).map((e) => [e.recipient, e.result, e.attempt]),
    [
      ['a@example.net', 'delivered', 1],
      ['b@example.net', 'deferred', 1],
      ['c@example.net', 'bounced', 1],
      ['b@example.net', 'delivered', 2],
    ],
  );
  const deferred = h.events('delivery').find((e) => e.result === 'deferred');
  assert.equal(deferred?.nextAttemptAt, new Date(T0 + 5 * MINUTE).toISOString());
  assert.equal(deferred?.reply, '451 4.2.0 mailbox busy, try later');
});

test('backoff: retries at +5m, +15m, +35m, +75m, then every 4000s', async (t) => {
  const h = await harness(t);
  h.upstream.script('slow@example.net', ...Array.from({ length: 8 }, deferral));
  await h.queue(['slow@example.net']);
  await h.advance(75 * MINUTE + 3 * 4000 * SECOND);

  const offsets = h.upstream.calls.map((c) => c.at - T0);
  assert.deepEqual(offsets, [
    0,
    5 * MINUTE,
    15 * MINUTE,
    35 * MINUTE,
    75 * MINUTE,
    75 * MINUTE + 4000 * SECOND,
    75 * MINUTE + 8000 * SECOND,
    75 * MINUTE + 12_000 * SECOND,
  ]);
  assert.deepEqual(
    h.events('delivery').map((e) => e.attempt),
    [1, 2, 3, 4, 5, 6, 7, 8],
  );
});

test('expiry: after the retry lifetime the pending recipient fails with its last error and the sender gets a DSN', async (t) => {
  const h = await harness(t, { retry: { lifetime: HOUR } });
  h.upstream.script('slow@example.net', ...Array.from({ length: 10 }, deferral));
  const message = await h.queue(['slow@example.net']);

  await h.advance(74 * MINUTE);
  assert.deepEqual(
    h.upstream.calls.map((c) => c.at - T0),
    [0, 5 * MINUTE, 15 * MINUTE, 35 * MINUTE],
  );

  await h.advance(1 * MINUTE);
  const later = h.upstream.calls.slice(4);
  assert.equal(later.length, 1, 'the expired recipient is not tried again; only the DSN goes out');
  const dsn = later[0]!;
  assert.equal(dsn.sender, '');
  assert.deepEqual(dsn.recipients, [SENDER]);
  assert.match(dsn.body, /^Final-Recipient: rfc822; slow@example\.net\r$/m);
  assert.match(dsn.body, /^Status: 4\.2\.0\r$/m);
  assert.match(dsn.body, /delivery time expired: gave up after 1 hour in the queue; last error: 451 4\.2\.0 mailbox busy, try later/);
  assert.deepEqual(await h.queueFiles(), []);
  assert.equal(h.events('bounce.queued')[0]?.queueId, message.id);
});

test('expiry of a bounce: the undeliverable DSN is logged as bounce.dropped and no DSN is made for it', async (t) => {
  const h = await harness(t, { retry: { bounceLifetime: HOUR } });
  h.upstream.script('gone@example.org', ...Array.from({ length: 10 }, deferral));
  const bounce = await h.queue(['gone@example.org'], '');

  await h.advance(2 * HOUR);
  assert.equal(h.upstream.calls.length, 4, 'attempts at +0, +5m, +15m, +35m only');
  assert.ok(h.upstream.calls.every((c) => c.queueId === bounce.id), 'no new message was made');
  const dropped = h.events('bounce.dropped');
  assert.equal(dropped.length, 1);
  assert.equal(dropped[0]?.queueId, bounce.id);
  assert.deepEqual(dropped[0]?.recipients, ['gone@example.org']);
  assert.equal(h.events('bounce.queued').length, 0);
  assert.deepEqual(await h.queueFiles(), []);
});

test('a null-sender message rejected permanently is dropped with bounce.dropped, never bounced', async (t) => {
  const h = await harness(t);
  h.upstream.script('gone@example.org', rejection());
  await h.queue(['gone@example.org'], '');
  assert.equal(h.upstream.calls.length, 1);
  assert.equal(h.events('bounce.dropped').length, 1);
  assert.deepEqual(await h.queueFiles(), []);
});

test('an upstream that throws (connection refused) defers every recipient of the attempt', async (t) => {
  const h = await harness(t);
  h.upstream.throwOnCall = Object.assign(new Error('connect ECONNREFUSED 192.0.2.25:587'), { code: 'ECONNREFUSED' });
  const message = await h.queue(['a@example.net', 'b@example.net']);

  const stored = await h.spool.readRecord(message.id);
  for (const r of stored.recipients) {
    assert.equal(r.status, 'pending');
    assert.equal(r.nextAttemptAt, T0 + 5 * MINUTE);
    assert.equal(r.lastReply?.code, 451);
    assert.match(r.lastReply?.text ?? '', /ECONNREFUSED/);
  }
  assert.deepEqual(
    h.events('delivery').map((e) => [e.recipient, e.result]),
    [
      ['a@example.net', 'deferred'],
      ['b@example.net', 'deferred'],
    ],
  );
  assert.equal(h.upstream.calls.filter(isBounce).length, 0);

  await h.advance(5 * MINUTE);
  assert.deepEqual(h.upstream.calls[1]?.recipients, ['a@example.net', 'b@example.net']);
  assert.deepEqual(await h.queueFiles(), []);
});

test('an upstream that gives no outcome for a recipient defers that recipient, not silently drops it', async (t) => {
  const h = await harness(t);
  h.upstream.script('b@example.net', 'omit');
  const message = await h.queue(['a@example.net', 'b@example.net']);

  const stored = await h.spool.readRecord(message.id);
  assert.deepEqual(
    stored.recipients.map((r) => [r.address, r.status]),
    [
      ['a@example.net', 'delivered'],
      ['b@example.net', 'pending'],
    ],
  );
  assert.equal(stored.recipients[1]!.lastReply?.enhanced, '4.3.0');
  await h.advance(5 * MINUTE);
  assert.deepEqual(h.upstream.calls[1]?.recipients, ['b@example.net']);
  assert.deepEqual(await h.queueFiles(), []);
});

test('per-upstream concurrency: with maxConcurrency 2, five due messages never run more than two deliveries at once', async (t) => {
  const h = await harness(t, { upstreamConcurrency: 2, maxConcurrency: 10 });
  h.upstream.hold = true;
  for (let i = 0; i < 5; i++) {
    const record = createRecord({
      id: newQueueId(T0),
      sender: SENDER,
      recipients: [`r${i}@example.net`],
      receivedAt: T0,
      client: { address: '192.0.2.10', listener: 'relay', tls: false },
    });
    await h.spool.store(Readable.from([Buffer.from(BODY)]), record);
    h.scheduler.add(record);
  }
  assert.equal(h.scheduler.activeCount, 5, 'all five messages are taken up');

  for (let released = 0; released < 5; released++) {
    await turnsUntil(() => h.upstream.heldCount === Math.min(2, 5 - released), `${Math.min(2, 5 - released)} deliveries waiting`);
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(h.upstream.inFlight, Math.min(2, 5 - released));
    h.upstream.releaseOne();
  }
  await h.settle();
  assert.equal(h.upstream.calls.length, 5);
  assert.equal(h.upstream.maxInFlight, 2);
  assert.deepEqual(await h.queueFiles(), []);
});

test('overall concurrency: a saturated scheduler runs one message at a time and arms no timer that would spin', async (t) => {
  const h = await harness(t, { upstreamConcurrency: 10, maxConcurrency: 1 });
  h.upstream.hold = true;
  for (let i = 0; i < 3; i++) {
    const record = createRecord({
      id: newQueueId(T0),
      sender: SENDER,
      recipients: [`r${i}@example.net`],
      receivedAt: T0,
      client: { address: '192.0.2.10', listener: 'relay', tls: false },
    });
    await h.spool.store(Readable.from([Buffer.from(BODY)]), record);
    h.scheduler.add(record);
  }
  await turnsUntil(() => h.upstream.heldCount === 1, 'first delivery waiting');
  assert.equal(h.scheduler.activeCount, 1);
  assert.equal(h.clock.overdueTimers(), 0, 'no zero-delay timer while every slot is busy');

  for (let i = 0; i < 3; i++) {
    await turnsUntil(() => h.upstream.heldCount === 1, 'next delivery waiting');
    assert.equal(h.upstream.inFlight, 1);
    h.upstream.releaseOne();
  }
  await h.settle();
  assert.equal(h.upstream.calls.length, 3);
  assert.equal(h.upstream.maxInFlight, 1);
});

test('recovery: a deferred record read back by a new Spool keeps attempts and nextAttemptAt, and a new scheduler waits for it', async (t) => {
  const first = await harness(t);
  first.upstream.script('b@example.net', deferral());
  const message = await first.queue(['a@example.net', 'b@example.net']);
  await first.scheduler.stop(0);

  // A restart one minute later: a new spool over the same directory, a new scheduler and clock.
  const restarted = await Spool.open(first.dir);
  const { records, removed, corrupt } = await restarted.recover();
  assert.deepEqual(removed, []);
  assert.deepEqual(corrupt, []);
  assert.equal(records.length, 1);
  const recovered = records[0]!;
  assert.equal(recovered.id, message.id);
  assert.deepEqual(
    recovered.recipients.map((r) => [r.address, r.status, r.attempts, r.nextAttemptAt]),
    [
      ['a@example.net', 'delivered', 1, T0],
      ['b@example.net', 'pending', 1, T0 + 5 * MINUTE],
    ],
  );

  const second = await harness(t, { dir: first.dir, spool: restarted, start: T0 + MINUTE });
  second.scheduler.add(recovered);
  await second.advance(3 * MINUTE + 59 * SECOND);
  assert.equal(second.upstream.calls.length, 0, 'nothing before nextAttemptAt');
  await second.advance(1 * SECOND);
  assert.deepEqual(
    second.upstream.calls.map((c) => [c.at, c.recipients]),
    [[T0 + 5 * MINUTE, ['b@example.net']]],
  );
  assert.equal(second.events('delivery')[0]?.attempt, 2);
  assert.deepEqual(await second.queueFiles(), []);
});

test('recovery: a failure whose DSN was not yet queued gets exactly one DSN after restart', async (t) => {
  const h = await harness(t);
  // As left by a crash after the failure was written but before the DSN was queued.
  const base = createRecord({
    id: newQueueId(T0),
    sender: SENDER,
    recipients: ['c@example.net', 'later@example.net'],
    receivedAt: T0,
    client: { address: '192.0.2.10', listener: 'relay', tls: false },
  });
  await h.spool.store(Readable.from([Buffer.from(BODY)]), base);
  const crashed: MessageRecord = {
    ...base,
    recipients: [
      { ...base.recipients[0]!, status: 'failed', attempts: 1, lastReply: { code: 550, enhanced: '5.1.1', text: 'user unknown' }, notified: false },
      { ...base.recipients[1]!, attempts: 1, nextAttemptAt: T0 + 5 * MINUTE, lastReply: { code: 451, enhanced: '4.2.0', text: 'busy' } },
    ],
  };
  await h.spool.update(crashed);

  h.scheduler.add(crashed);
  await h.settle();
  assert.deepEqual(h.events('queue.error'), []);
  assert.equal(h.upstream.calls.length, 1, 'only the DSN goes out now');
  assert.equal(h.upstream.calls[0]?.sender, '');
  assert.match(h.upstream.calls[0]?.body ?? '', /^Final-Recipient: rfc822; c@example\.net\r$/m);
  const stored = await h.spool.readRecord(base.id);
  assert.equal(stored.recipients[0]!.notified, true);

  await h.advance(5 * MINUTE);
  assert.deepEqual(
    h.upstream.calls.map((c) => c.recipients),
    [[SENDER], ['later@example.net']],
  );
  assert.equal(h.upstream.calls.filter(isBounce).length, 1);
  assert.deepEqual(await h.queueFiles(), []);
});

test('a DSN that could not be queued is retried later without delivering the delivered recipients again', async (t) => {
  const h = await harness(t, { failFirstDsn: true });
  h.upstream.script('c@example.net', rejection());
  const message = await h.queue(['a@example.net', 'c@example.net']);
  assert.equal(h.events('queue.error').length, 1);
  assert.equal(h.upstream.calls.length, 1);

  await h.advance(5 * MINUTE);
  assert.deepEqual(
    h.upstream.calls.map((c) => [c.queueId === message.id ? 'message' : 'dsn', c.recipients]),
    [
      ['message', ['a@example.net', 'c@example.net']],
      ['dsn', [SENDER]],
    ],
  );
  assert.match(h.upstream.calls[1]?.body ?? '', /^Final-Recipient: rfc822; c@example\.net\r$/m);
  assert.deepEqual(await h.queueFiles(), []);
});

const readOnlyFs = () => Object.assign(new Error('EROFS: read-only file system, unlink'), { code: 'EROFS' });
const diskFull = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });

test('a delivered message whose files cannot be removed (spool remounted read-only) is not delivered again; the unlink is retried until it works', async (t) => {
  const h = await harness(t);
  const remove = h.spool.remove.bind(h.spool);
  let readOnly = true;
  h.spool.remove = async (id: string) => {
    if (readOnly) throw readOnlyFs();
    return remove(id);
  };
  const message = await h.queue(['a@example.net']);
  await h.advance(30 * MINUTE);
  assert.deepEqual(h.upstream.calls.map((c) => [c.at, c.recipients]), [[T0, ['a@example.net']]]);
  assert.equal(h.events('queue.error').length, 7, 'the unlink was tried at 0, 5, 10, ... 30 minutes');

  readOnly = false;
  await h.advance(5 * MINUTE);
  assert.equal(h.upstream.calls.length, 1);
  assert.equal(h.scheduler.get(message.id), undefined);
  assert.deepEqual(await h.queueFiles(), []);
});

test('a partly delivered message whose state cannot be written (disk full) delivers only the deferred recipient again', async (t) => {
  const h = await harness(t);
  h.upstream.script('b@example.net', deferral());
  const update = h.spool.update.bind(h.spool);
  let full = true;
  h.spool.update = async (record: MessageRecord) => {
    if (full) {
      full = false;
      throw diskFull();
    }
    return update(record);
  };
  await h.queue(['a@example.net', 'b@example.net']);
  assert.equal(h.events('queue.error').length, 1);

  await h.advance(5 * MINUTE);
  assert.deepEqual(
    h.upstream.calls.map((c) => [c.at, c.recipients]),
    [
      [T0, ['a@example.net', 'b@example.net']],
      [T0 + 5 * MINUTE, ['b@example.net']],
    ],
  );
  assert.deepEqual(await h.queueFiles(), []);
});

test('a state write that failed is retried after the initial delay, before any recipient is due again', async (t) => {
  const h = await harness(t);
  h.upstream.script('b@example.net', deferral(), deferral());
  const update = h.spool.update.bind(h.spool);
  let updates = 0;
  h.spool.update = async (record: MessageRecord) => {
    if (++updates === 2) throw diskFull();
    return update(record);
  };
  const message = await h.queue(['a@example.net', 'b@example.net']);
  await h.advance(5 * MINUTE); // b is deferred again, due at +15m, and that cannot be written
  assert.equal(h.events('queue.error').length, 1);
  const stale = await h.spool.readRecord(message.id);
  assert.equal(stale.recipients[1]!.attempts, 1, 'the spool still holds the first attempt');

  await h.advance(5 * MINUTE);
  assert.equal(h.upstream.calls.length, 2, 'nothing delivered at +10m');
  const stored = await h.spool.readRecord(message.id);
  assert.deepEqual(
    stored.recipients.map((r) => [r.address, r.status, r.attempts]),
    [
      ['a@example.net', 'delivered', 1],
      ['b@example.net', 'pending', 2],
    ],
  );
  assert.equal(stored.recipients[1]!.nextAttemptAt, T0 + 15 * MINUTE);

  await h.advance(5 * MINUTE);
  assert.deepEqual(
    h.upstream.calls.map((c) => [c.at, c.recipients]),
    [
      [T0, ['a@example.net', 'b@example.net']],
      [T0 + 5 * MINUTE, ['b@example.net']],
      [T0 + 15 * MINUTE, ['b@example.net']],
    ],
  );
  assert.deepEqual(await h.queueFiles(), []);
});

test('a DSN queued before the state write failed is not queued again', async (t) => {
  const h = await harness(t);
  h.upstream.script('b@example.net', deferral());
  h.upstream.script('c@example.net', rejection());
  const update = h.spool.update.bind(h.spool);
  let updates = 0;
  h.spool.update = async (record: MessageRecord) => {
    if (++updates === 2) throw diskFull(); // the write that records the DSN as sent
    return update(record);
  };
  const message = await h.queue(['b@example.net', 'c@example.net']);
  assert.equal(h.events('queue.error').length, 1);

  await h.advance(5 * MINUTE);
  assert.deepEqual(
    h.upstream.calls.map((c) => [c.queueId === message.id ? 'message' : 'dsn', c.recipients]),
    [
      ['message', ['b@example.net', 'c@example.net']],
      ['dsn', [SENDER]],
      ['message', ['b@example.net']],
    ],
  );
  assert.deepEqual(await h.queueFiles(), []);
});

test('an administrator\'s change that fails (disk full) while the message fell due leaves it to be attempted, unchanged', async (t) => {
  const h = await harness(t, { maxConcurrency: 2 });
  h.upstream.hold = true;
  const spoolOne = async (recipient: string) => {
    const record = createRecord({
      id: newQueueId(T0),
      sender: SENDER,
      recipients: [recipient],
      receivedAt: T0,
      client: { address: '192.0.2.10', listener: 'relay', tls: false },
    });
    await h.spool.store(Readable.from([Buffer.from(BODY)]), record);
    h.scheduler.add(record);
    return record;
  };
  await spoolOne('busy1@example.net');
  await spoolOne('busy2@example.net');
  await turnsUntil(() => h.upstream.heldCount === 2, 'both slots delivering');
  const x = await spoolOne('x@example.net'); // due now, waiting for a slot

  const update = h.spool.update.bind(h.spool);
  let failUpdate: (() => void) | undefined;
  h.spool.update = () => new Promise<void>((_, reject) => (failUpdate = () => reject(diskFull())));
  const changing = h.scheduler.change(x.id, (r) => ({ ...r, held: true }));
  await turnsUntil(() => failUpdate !== undefined, 'the change writing');
  // The slots free up while the change runs: the pump takes x off the due list and skips it as in flight.
  h.upstream.hold = false;
  h.upstream.releaseOne();
  h.upstream.releaseOne();
  await turnsUntil(() => h.scheduler.activeCount === 1, 'only the change left');
  h.spool.update = update;
  failUpdate!();
  await assert.rejects(changing, /ENOSPC/);
  assert.equal(h.scheduler.get(x.id)?.held, undefined, 'the failed change did not hold x');

  await h.settle();
  assert.deepEqual(
    h.upstream.calls.filter((c) => c.queueId === x.id).map((c) => [c.at, c.recipients]),
    [[T0, ['x@example.net']]],
  );
  assert.equal(h.scheduler.size, 0);
  assert.deepEqual(await h.queueFiles(), []);
});

test('send limit: a burst of 100 messages through an upstream limited to 30 per minute goes out 30 a minute, none bounced', async (t) => {
  const limits = new SendLimiter(new Map([['fake', { messagesPerMinute: 30, perMailbox: true, mode: 'fixed' as const }]]));
  const h = await harness(t, { limits, maxConcurrency: 10 });
  for (let i = 0; i < 100; i++) {
    const record = createRecord({
      id: newQueueId(T0),
      sender: SENDER,
      recipients: [`r${i}@example.net`],
      receivedAt: T0,
      client: { address: '192.0.2.10', listener: 'relay', tls: false },
    });
    await h.spool.store(Readable.from([Buffer.from(BODY)]), record);
    h.scheduler.add(record);
  }
  await h.settle();
  for (let minute = 1; minute <= 4; minute++) await h.advance(MINUTE);

  const perMinute = new Map<number, number>();
  for (const c of h.upstream.calls) perMinute.set(c.at - T0, (perMinute.get(c.at - T0) ?? 0) + 1);
  assert.deepEqual([...perMinute], [
    [0, 30],
    [MINUTE, 30],
    [2 * MINUTE, 30],
    [3 * MINUTE, 10],
  ]);
  assert.equal(new Set(h.upstream.calls.map((c) => c.recipients[0])).size, 100, 'each message delivered once');
  assert.equal(h.upstream.calls.filter(isBounce).length, 0, 'none bounced');
  assert.equal(h.events('limit.deferred').length, 70 + 40 + 10);
  assert.equal(h.events('delivery').filter((e) => e.result !== 'delivered').length, 0, 'a limit is not a failed delivery');
  assert.ok(h.events('delivery').every((e) => e.attempt === 1), 'waiting for the window counts no attempt');
  assert.deepEqual(await h.queueFiles(), []);
});

test('send limit: mailboxes limited per mailbox do not wait for each other', async (t) => {
  const limits = new SendLimiter(new Map([['fake', { messagesPerMinute: 1, perMailbox: true, mode: 'fixed' as const }]]));
  const h = await harness(t, { limits });
  await h.queue(['a@example.net'], 'one@example.com');
  await h.queue(['b@example.net'], 'two@example.com');
  await h.queue(['c@example.net'], 'one@example.com');
  assert.deepEqual(h.upstream.calls.map((c) => c.recipients[0]), ['a@example.net', 'b@example.net']);
  await h.advance(MINUTE);
  assert.deepEqual(h.upstream.calls.map((c) => [c.recipients[0], c.at - T0]).slice(2), [['c@example.net', MINUTE]]);
});

const refused = () => new SmtpError(421, '4.4.1', 'connection refused');

test('failover: a temporary failure at the route\'s upstream moves the recipient to its fallback in the same attempt', async (t) => {
  const h = await harness(t, { fallback: true });
  h.upstream.script('a@example.net', deferral());
  await h.queue(['a@example.net']);
  assert.equal(h.upstream.calls.length, 1);
  assert.deepEqual(h.backup.calls.map((c) => [c.recipients, c.at]), [[['a@example.net'], T0]]);
  const [delivery] = h.events('delivery');
  assert.deepEqual([delivery!.upstream, delivery!.result, delivery!.attempt], ['backup', 'delivered', 1]);
  assert.equal(h.events('failover')[0]!.reason, 'temporary');
  assert.deepEqual(await h.queueFiles(), []);
});

test('failover: a permanent (5xx) answer never fails over; the sender gets a DSN', async (t) => {
  const h = await harness(t, { fallback: true });
  h.upstream.script('a@example.net', rejection());
  await h.queue(['a@example.net']);
  assert.deepEqual(h.backup.calls.filter((c) => !isBounce(c)), [], 'the fallback never saw the message');
  assert.equal(h.events('delivery')[0]!.result, 'bounced');
  assert.equal(h.events('failover').length, 0);
});

test('failover: an upstream down after refusing connections is skipped, probed with one delivery after its backoff, and used again once it answers', async (t) => {
  const h = await harness(t, { fallback: true });
  for (const r of ['a', 'b', 'c']) h.upstream.script(`${r}@example.net`, refused());
  for (const r of ['a', 'b', 'c']) await h.queue([`${r}@example.net`]);
  assert.equal(h.upstream.calls.length, 3, 'each tried the route\'s upstream first');
  assert.equal(h.scheduler.health.states().find((s) => s.name === 'fake')!.up, false, 'down after 3 refused connections');

  await h.queue(['d@example.net']);
  assert.equal(h.upstream.calls.length, 3, 'a down upstream is skipped');
  assert.ok(h.events('failover').some((e) => e.reason === 'down' && e.upstream === 'fake'));

  await h.advance(60 * SECOND);
  await h.queue(['e@example.net']);
  await h.queue(['f@example.net']);
  assert.deepEqual(h.upstream.calls.slice(3).map((c) => c.recipients), [['e@example.net'], ['f@example.net']], 'probed after the backoff; back in use once it answered');
  assert.equal(h.scheduler.health.states().find((s) => s.name === 'fake')!.up, true);
  assert.deepEqual(h.backup.calls.map((c) => c.recipients[0]), ['a@example.net', 'b@example.net', 'c@example.net', 'd@example.net']);
  assert.equal(h.events('delivery').filter((e) => e.result !== 'delivered').length, 0, 'nothing deferred or bounced');
});

test('failover: a failed probe keeps the upstream down for another backoff; meanwhile mail goes to the fallback', async (t) => {
  const h = await harness(t, { fallback: true });
  for (const r of ['a', 'b', 'c', 'p']) h.upstream.script(`${r}@example.net`, refused());
  for (const r of ['a', 'b', 'c']) await h.queue([`${r}@example.net`]);
  await h.advance(60 * SECOND);
  await h.queue(['p@example.net']);
  assert.equal(h.upstream.calls.at(-1)!.recipients[0], 'p@example.net', 'the probe');
  await h.queue(['q@example.net']);
  assert.equal(h.upstream.calls.length, 4, 'skipped again after the failed probe');
  assert.deepEqual(h.backup.calls.map((c) => c.recipients[0]).slice(-2), ['p@example.net', 'q@example.net']);
});

test('failover: a probe whose message cannot be read judges nothing: deferred 4.3.0, not sent to the fallback, and the next delivery probes', async (t) => {
  const h = await harness(t, { fallback: true });
  for (const r of ['a', 'b', 'c']) h.upstream.script(`${r}@example.net`, refused());
  for (const r of ['a', 'b', 'c']) await h.queue([`${r}@example.net`]);
  await h.advance(60 * SECOND);
  const now = h.clock.now();
  const cut = createRecord({ id: newQueueId(now), sender: SENDER, recipients: ['p@example.net'], receivedAt: now, size: BODY.length, client: { address: '192.0.2.10', listener: 'relay', tls: false } });
  await h.spool.store(Readable.from([Buffer.from(BODY)]), cut);
  await truncate(h.spool.messagePath(cut.id), 10);
  h.scheduler.add(cut);
  await h.settle();
  const [deferred] = h.events('delivery').filter((e) => e.queueId === cut.id);
  assert.deepEqual([deferred!.upstream, deferred!.result, deferred!.reply], ['fake', 'deferred', '451 4.3.0 queued message could not be read: the message file ended at byte 10, before the size its envelope gives']);
  assert.equal(h.backup.calls.filter((c) => c.queueId === cut.id).length, 0, 'no failover: the fallback could not read it either');
  assert.equal(h.scheduler.health.states().find((s) => s.name === 'fake')!.up, false, 'still down: nothing was learnt');

  await h.queue(['q@example.net']);
  assert.deepEqual(h.upstream.calls.at(-1)!.recipients, ['q@example.net'], 'the next delivery is the probe');
  assert.equal(h.scheduler.health.states().find((s) => s.name === 'fake')!.up, true);
});

test('failover: an upstream over its send limit hands the next messages to the fallback', async (t) => {
  const limits = new SendLimiter(new Map([['fake', { messagesPerMinute: 1, perMailbox: false, mode: 'fixed' as const }]]));
  const h = await harness(t, { fallback: true, limits });
  await h.queue(['a@example.net']);
  await h.queue(['b@example.net']);
  assert.deepEqual(h.upstream.calls.map((c) => c.recipients[0]), ['a@example.net']);
  assert.deepEqual(h.backup.calls.map((c) => c.recipients[0]), ['b@example.net']);
  assert.equal(h.events('failover')[0]!.reason, 'limit');
});
