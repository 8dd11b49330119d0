import type { RetryConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import { toSmtpError } from '../smtp-error.js';
import type { Spool } from '../spool/spool.js';
import { nextDueAt, type MessageRecord } from '../spool/record.js';
import type { RouteDecision } from '../routing/route.js';
import type { Upstream } from '../upstreams/upstream.js';
import type { Bouncer } from './bounce.js';
import type { Clock } from './clock.js';
import { DueQueue } from './due-queue.js';
import type { DeliveryPlanner } from './planner.js';
import { applyOutcome, completeOutcomes, expire, sameOutcomeForAll } from './outcomes.js';
import { Semaphore } from './semaphore.js';

export interface SchedulerOptions {
  spool: Spool;
  upstreams: ReadonlyMap<string, { upstream: Upstream; maxConcurrency: number }>;
  /** Routing and rewriting: which upstream takes each recipient, and what is sent there. */
  planner: DeliveryPlanner;
  bouncer: Bouncer;
  retry: RetryConfig;
  maxConcurrency: number;
  clock: Clock;
  log: Logger;
  random?: () => number;
}

/** Longest single timer; later due times are reached by re-arming, which also tolerates clock jumps. */
const MAX_TIMER_MS = 60_000;

/**
 * Decides when each queued message is attempted. Holds every queued record in memory, ordered by due
 * time; runs at most maxConcurrency messages at once and at most each upstream's own limit per upstream.
 * The spool stays the truth: every state change is written before the next decision depends on it.
 */
export class DeliveryScheduler {
  readonly #o: SchedulerOptions;
  readonly #records = new Map<string, MessageRecord>();
  readonly #due = new DueQueue();
  readonly #active = new Map<string, Promise<void>>();
  readonly #slots: Map<string, Semaphore>;
  #timer: { cancel(): void } | undefined;
  #timerAt = Infinity;
  #stopping = false;

  constructor(options: SchedulerOptions) {
    this.#o = options;
    this.#slots = new Map([...options.upstreams].map(([name, u]) => [name, new Semaphore(u.maxConcurrency)]));
  }

  /** Number of messages in the queue (waiting or being attempted). */
  get size(): number {
    return this.#records.size;
  }

  get activeCount(): number {
    return this.#active.size;
  }

  records(): IterableIterator<MessageRecord> {
    return this.#records.values();
  }

  /** Adds a newly spooled or recovered message and attempts it as soon as it is due. */
  add(record: MessageRecord): void {
    this.#records.set(record.id, record);
    this.#schedule(record);
    this.#pump();
  }

  /** Re-checks due work, e.g. after a test advanced its manual clock. */
  poke(): void {
    this.#pump();
  }

  /** Stops starting new attempts and waits up to timeoutMs for those in flight; unfinished ones stay queued. */
  async stop(timeoutMs: number): Promise<boolean> {
    this.#stopping = true;
    this.#timer?.cancel();
    const all = Promise.allSettled([...this.#active.values()]).then(() => true);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    const finished = await Promise.race([all, timeout]);
    clearTimeout(timer);
    return finished;
  }

  #schedule(record: MessageRecord): void {
    const at = nextDueAt(record);
    if (at === undefined) this.#due.delete(record.id);
    else this.#due.set(record.id, at);
  }

  #pump(): void {
    if (this.#stopping) return;
    const now = this.#o.clock.now();
    while (this.#active.size < this.#o.maxConcurrency) {
      const id = this.#due.popDue(now);
      if (id === undefined) break;
      const record = this.#records.get(id);
      if (!record || this.#active.has(id)) continue;
      const run = this.#attempt(record)
        .catch((err: unknown) => {
          // Storage trouble while recording a result: keep the message and try again later.
          this.#o.log.error({ event: 'queue.error', queueId: id, err }, 'could not record delivery result; will retry');
          this.#due.set(id, this.#o.clock.now() + this.#o.retry.initialDelay);
        })
        .finally(() => {
          this.#active.delete(id);
          this.#pump();
        });
      this.#active.set(id, run);
    }
    this.#arm();
  }

  #arm(): void {
    const next = this.#due.peekTime();
    // While every slot is busy, the attempt that frees one pumps again; a timer now would only spin.
    if (next === undefined || this.#stopping || this.#active.size >= this.#o.maxConcurrency) return;
    const at = Math.min(next, this.#o.clock.now() + MAX_TIMER_MS);
    if (this.#timer && this.#timerAt <= at) return;
    this.#timer?.cancel();
    this.#timerAt = at;
    this.#timer = this.#o.clock.setTimer(() => {
      this.#timer = undefined;
      this.#timerAt = Infinity;
      this.#pump();
    }, Math.max(0, at - this.#o.clock.now()));
  }

  async #attempt(initial: MessageRecord): Promise<void> {
    let record = this.#expireOld(initial);
    const now = this.#o.clock.now();
    // Recipients split by route, as Postfix splits by destination: one delivery per route decision.
    const groups = new Map<string, { decision: RouteDecision; recipients: string[] }>();
    for (const r of record.recipients) {
      if (r.status !== 'pending' || r.nextAttemptAt > now) continue;
      const decision = this.#o.planner.route(record, r.address);
      const key = `${decision.via}\0${decision.upstream}`;
      const group = groups.get(key) ?? { decision, recipients: [] };
      group.recipients.push(r.address);
      groups.set(key, group);
    }
    const results = await Promise.all([...groups.values()].map((g) => this.#deliverGroup(record, g.decision, g.recipients)));
    const changed = new Map(results.flat().map((s) => [s.address, s]));
    // Nothing attempted and no DSN owed (e.g. one recovered from a crash before it was sent): only reschedule.
    // Returning here while a DSN is owed would leave the message due at 0 and re-attempt it forever.
    if (changed.size === 0 && record === initial && !owesDsn(record)) return this.#schedule(record);
    record = { ...record, recipients: record.recipients.map((r) => changed.get(r.address) ?? r) };
    if (nextDueAt(record) !== undefined) await this.#save(record);
    if (owesDsn(record)) {
      record = await this.#o.bouncer.notify(record);
      if (nextDueAt(record) !== undefined) await this.#save(record);
    }
    await this.#finishOrKeep(record);
  }

  /** Writes a record and keeps the in-memory copy equal to it, so a later failure cannot resurrect older state. */
  async #save(record: MessageRecord): Promise<void> {
    await this.#o.spool.update(record);
    this.#records.set(record.id, record);
  }

  async #deliverGroup(record: MessageRecord, decision: RouteDecision, recipients: string[]) {
    const name = decision.upstream;
    const configured = this.#o.upstreams.get(name);
    const prepared = this.#o.planner.prepare(record, decision, recipients);
    this.#o.log.info(
      { event: 'routed', queueId: record.id, via: decision.via, upstream: name, recipients, sender: prepared.request.sender, ...(decision.testMode ? { testModeTo: decision.testMode.to } : {}) },
      'recipients routed',
    );
    if (prepared.rewrittenSender !== undefined) {
      this.#o.log.info({ event: 'rewritten', queueId: record.id, via: decision.via, sender: record.sender, rewrittenSender: prepared.rewrittenSender }, 'sender rewritten');
    }
    const started = this.#o.clock.now();
    const release = await (this.#slots.get(name) ?? new Semaphore(1)).acquire();
    let outcomes;
    try {
      if (!configured) throw new Error(`route names unknown upstream "${name}"`);
      const delivered = completeOutcomes(prepared.request.recipients, await configured.upstream.deliver(prepared.request));
      outcomes = prepared.expand(delivered);
    } catch (err) {
      outcomes = sameOutcomeForAll(recipients, toSmtpError(err));
    } finally {
      release();
    }
    const now = this.#o.clock.now();
    const ctx = { now, upstream: name, retry: this.#o.retry, random: this.#o.random };
    const states = outcomes.map((o) => applyOutcome(record.recipients.find((r) => r.address === o.recipient)!, o, ctx));
    for (const o of outcomes) {
      const state = states.find((s) => s.address === o.recipient)!;
      this.#o.log.info(
        {
          event: 'delivery',
          queueId: record.id,
          upstream: name,
          recipient: o.recipient,
          result: o.delivered ? 'delivered' : state.status === 'failed' ? 'bounced' : 'deferred',
          reply: o.delivered ? o.reply : o.error.reply,
          attempt: state.attempts,
          delayMs: now - record.receivedAt,
          durationMs: now - started,
          ...(state.status === 'pending' ? { nextAttemptAt: new Date(state.nextAttemptAt).toISOString() } : {}),
        },
        'delivery attempt',
      );
    }
    return states;
  }

  #expireOld(record: MessageRecord): MessageRecord {
    const lifetime = record.sender === '' ? this.#o.retry.bounceLifetime : this.#o.retry.lifetime;
    if (this.#o.clock.now() - record.receivedAt < lifetime) return record;
    return { ...record, recipients: record.recipients.map((r) => (r.status === 'pending' ? expire(r, lifetime) : r)) };
  }

  async #finishOrKeep(record: MessageRecord): Promise<void> {
    if (nextDueAt(record) === undefined) {
      await this.#o.spool.remove(record.id);
      this.#records.delete(record.id);
      this.#due.delete(record.id);
      this.#o.log.info({ event: 'queue.removed', queueId: record.id }, 'message finished');
      return;
    }
    this.#records.set(record.id, record);
    this.#schedule(record);
  }
}

/** A recipient failed and its DSN is not yet safely queued. */
function owesDsn(record: MessageRecord): boolean {
  return record.recipients.some((r) => r.status === 'failed' && !r.notified);
}
