import type { RetryConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import type { SuppressionSettings } from '../policy/suppression.js';
import { toSmtpError } from '../smtp-error.js';
import type { Spool } from '../spool/spool.js';
import { nextDueAt, type MessageRecord, type RecipientState } from '../spool/record.js';
import type { RouteDecision } from '../routing/route.js';
import type { RecipientOutcome, Upstream } from '../upstreams/upstream.js';
import type { Bouncer } from './bounce.js';
import type { Clock } from './clock.js';
import { DueQueue } from './due-queue.js';
import { LocalSendLimits, SendLimiter, type LimitCheck, type SendLimits } from './limits.js';
import type { LimitMetrics } from './limit-metrics.js';
import type { DeliveryPlanner, PreparedDelivery } from './planner.js';
import type { DeliveryMetrics } from './metrics.js';
import { NO_UPSTREAM } from './metrics.js';
import { applyOutcome, completeOutcomes, expire, sameOutcomeForAll } from './outcomes.js';
import { Semaphore } from './semaphore.js';
import { UpstreamHealth } from './upstream-health.js';

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
  /** Recipients never to deliver to; hard bounces may add to it. */
  suppression?: SuppressionSettings;
  metrics?: DeliveryMetrics;
  /** Consecutive connection-level failures per upstream; default: down after 3. */
  health?: UpstreamHealth;
  /**
   * Send limits per upstream or mailbox: mail over a limit waits for its window, without counting an attempt.
   * A bare SendLimiter counts in memory only.
   */
  limits?: SendLimits | SendLimiter;
  limitMetrics?: LimitMetrics;
  /** How soon mail waits to try again when the limit counters cannot be reached (Redis down); default 30 s. */
  limitsUnavailableRetry?: number;
}

/** Default wait when the shared limit counters cannot be reached: short, the outage may be a restart. */
const LIMITS_UNAVAILABLE_RETRY_MS = 30_000;

/** What a reload may change without a restart. */
export type SchedulerSettings = Partial<Pick<SchedulerOptions, 'planner' | 'retry' | 'suppression'>>;

/** An administrator's change that cannot be made: the message is unknown, or an attempt would not finish. */
export class QueueChangeError extends Error {
  override name = 'QueueChangeError';
  constructor(
    message: string,
    readonly reason: 'not_found' | 'busy',
  ) {
    super(message);
  }
}

/** Longest single timer; later due times are reached by re-arming, which also tolerates clock jumps. */
const MAX_TIMER_MS = 60_000;

/**
 * Decides when each queued message is attempted. Holds every queued record in memory, ordered by due
 * time; runs at most maxConcurrency messages at once and at most each upstream's own limit per upstream.
 * The spool stays the truth: every state change is written before the next decision depends on it.
 */
export class DeliveryScheduler {
  #o: SchedulerOptions;
  readonly health: UpstreamHealth;
  readonly #records = new Map<string, MessageRecord>();
  readonly #due = new DueQueue();
  readonly #active = new Map<string, Promise<void>>();
  readonly #slots: Map<string, Semaphore>;
  readonly #limits: SendLimits | undefined;
  #timer: { cancel(): void } | undefined;
  #timerAt = Infinity;
  #stopping = false;

  constructor(options: SchedulerOptions) {
    this.#o = options;
    this.health = options.health ?? new UpstreamHealth(options.upstreams.keys());
    this.#limits = options.limits instanceof SendLimiter ? new LocalSendLimits(options.limits) : options.limits;
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

  get clock() {
    return this.#o.clock;
  }

  /** The queued message with this ID, if any. */
  get(id: string): MessageRecord | undefined {
    return this.#records.get(id);
  }

  /** Whether a delivery attempt (or an administrator's change) for this message is running. */
  inFlight(id: string): boolean {
    return this.#active.has(id);
  }

  /** Applies a reload: later attempts route, retry and suppress with the new settings. */
  reconfigure(settings: SchedulerSettings): void {
    this.#o = { ...this.#o, ...settings };
  }

  /**
   * Changes one message for an administrator once no attempt for it is in flight (waiting up to waitMs), and
   * keeps new attempts away while `change` runs. `change` answers the new record, or 'delete' to remove the
   * message. A record that now owes a DSN gets it; one with nothing left to do leaves the queue.
   */
  async change(id: string, change: (record: MessageRecord) => MessageRecord | 'delete', waitMs = 30_000): Promise<MessageRecord | undefined> {
    const deadline = Date.now() + waitMs;
    for (let active = this.#active.get(id); active; active = this.#active.get(id)) {
      const left = deadline - Date.now();
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([active.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), Math.max(0, left))))]);
      clearTimeout(timer);
      if (timedOut) throw new QueueChangeError(`message ${id} is being delivered right now and the attempt did not finish within ${Math.round(waitMs / 1000)}s; try again`, 'busy');
    }
    const initial = this.#records.get(id);
    if (!initial) throw new QueueChangeError(`no message ${id} in the queue`, 'not_found');
    const run = (async (): Promise<MessageRecord | undefined> => {
      const next = change(initial);
      if (next === 'delete') {
        await this.#o.spool.remove(id);
        this.#records.delete(id);
        this.#due.delete(id);
        this.#o.log.info({ event: 'queue.removed', queueId: id, by: 'admin' }, 'message deleted by the administrator');
        return undefined;
      }
      let record = next;
      if (nextDueAt(record) !== undefined) await this.#save(record);
      if (owesDsn(record)) {
        record = await this.#o.bouncer.notify(record);
        if (nextDueAt(record) !== undefined) await this.#save(record);
      }
      await this.#finishOrKeep(record);
      return this.#records.get(id);
    })();
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.#active.set(id, settled);
    try {
      return await run;
    } finally {
      this.#active.delete(id);
      this.#pump();
    }
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
    const at = record.held ? undefined : nextDueAt(record);
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
    let record = this.#expireOld(this.#suppress(initial));
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

  /**
   * Delivers one route group: to the route's upstream, then, for the recipients a temporary failure, an
   * unreachable (down) upstream or an exhausted send limit left over, to each fallback in turn within the
   * same attempt. A permanent answer never fails over. The last upstream's answer is applied as it is.
   */
  async #deliverGroup(record: MessageRecord, decision: RouteDecision, recipients: string[]): Promise<RecipientState[]> {
    const chain = [decision.upstream, ...(decision.fallbacks ?? [])];
    const states: RecipientState[] = [];
    let remaining = recipients;
    let limitedUntil: number | undefined;
    for (const [i, name] of chain.entries()) {
      const last = i === chain.length - 1;
      const now = this.#o.clock.now();
      if (!last && !this.health.usable(name, now)) {
        this.#o.log.info({ event: 'failover', queueId: record.id, upstream: name, next: chain[i + 1], reason: 'down', recipients: remaining }, `upstream ${name} is down; trying ${chain[i + 1]}`);
        continue;
      }
      const prepared = this.#o.planner.prepare(record, decision, remaining);
      const over = await this.#overLimit(record, name, prepared.request.sender, prepared.request.recipients.length, remaining);
      if (over !== undefined) {
        limitedUntil = Math.min(limitedUntil ?? Infinity, over);
        if (!last) this.#o.log.info({ event: 'failover', queueId: record.id, upstream: name, next: chain[i + 1], reason: 'limit', recipients: remaining }, `send limit of ${name} reached; trying ${chain[i + 1]}`);
        continue;
      }
      this.health.attempt(name);
      const { outcomes, started } = await this.#send(record, decision, name, prepared, remaining);
      const moving = last ? [] : outcomes.filter((o) => !o.delivered && o.error.temporary).map((o) => o.recipient);
      if (moving.length > 0) {
        const reply = outcomes.find((o) => !o.delivered && moving.includes(o.recipient));
        this.#o.log.info(
          { event: 'failover', queueId: record.id, upstream: name, next: chain[i + 1], reason: 'temporary', recipients: moving, ...(reply && !reply.delivered ? { reply: reply.error.reply } : {}) },
          `temporary failure at ${name}; trying ${chain[i + 1]}`,
        );
      }
      states.push(...(await this.#applyOutcomes(record, decision, name, outcomes.filter((o) => !moving.includes(o.recipient)), started)));
      remaining = moving;
      if (remaining.length === 0) break;
    }
    // Every upstream left was over its limit: wait for the first window to free, counting no attempt.
    if (remaining.length > 0 && limitedUntil !== undefined) {
      const at = limitedUntil;
      states.push(...record.recipients.filter((r) => remaining.includes(r.address)).map((r) => ({ ...r, nextAttemptAt: at })));
    }
    return states;
  }

  /** One delivery to one upstream, within its concurrency limit; a thrown error becomes every recipient's outcome. */
  async #send(record: MessageRecord, decision: RouteDecision, name: string, prepared: PreparedDelivery, recipients: readonly string[]): Promise<{ outcomes: RecipientOutcome[]; started: number }> {
    this.#o.log.info(
      { event: 'routed', queueId: record.id, via: decision.via, upstream: name, recipients, sender: prepared.request.sender, ...(decision.testMode ? { testModeTo: decision.testMode.to } : {}) },
      'recipients routed',
    );
    if (prepared.rewrittenSender !== undefined) {
      this.#o.log.info({ event: 'rewritten', queueId: record.id, via: decision.via, sender: record.sender, rewrittenSender: prepared.rewrittenSender }, 'sender rewritten');
    }
    const configured = this.#o.upstreams.get(name);
    const started = this.#o.clock.now();
    const release = await (this.#slots.get(name) ?? new Semaphore(1)).acquire();
    let outcomes: RecipientOutcome[];
    try {
      if (!configured) throw new Error(`route names unknown upstream "${name}"`);
      const delivered = completeOutcomes(prepared.request.recipients, await configured.upstream.deliver(prepared.request));
      outcomes = prepared.expand(delivered);
    } catch (err) {
      outcomes = sameOutcomeForAll(recipients, toSmtpError(err));
    } finally {
      release();
    }
    this.#judgeUpstream(name, outcomes, this.#o.clock.now());
    return { outcomes, started };
  }

  async #applyOutcomes(record: MessageRecord, decision: RouteDecision, name: string, outcomes: readonly RecipientOutcome[], started: number): Promise<RecipientState[]> {
    const now = this.#o.clock.now();
    // One spread per group: recipients deferred together come back together, in one delivery.
    const spread = (this.#o.random ?? Math.random)();
    const ctx = { now, upstream: name, retry: this.#o.retry, random: () => spread };
    const states = outcomes.map((o) => applyOutcome(record.recipients.find((r) => r.address === o.recipient)!, o, ctx));
    this.#o.metrics?.duration.observe({ upstream: name }, (now - started) / 1000);
    for (const o of outcomes) {
      const state = states.find((s) => s.address === o.recipient)!;
      this.#o.metrics?.recipient(name, o.delivered ? 'delivered' : state.status === 'failed' ? 'bounced' : 'deferred', o.delivered ? '2.0.0' : o.error.enhanced);
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
    // In test mode the reply is the test address's, not the recipients'.
    if (!decision.testMode) await this.#addHardBounces(record.id, states);
    return states;
  }

  /**
   * Takes from the send limits: checked and counted in one atomic step (in this process, or in Redis across
   * instances), so concurrent attempts never overspend a budget. Over a limit: answers the exact time the
   * window frees (the caller fails over or lets the recipients wait until then, keeping their attempt count: a
   * limit is not a failure). Counters out of reach: answers a short wait, for the same reasons; mail is never
   * sent unchecked and never bounced for it. Counted when handed to the upstream.
   */
  async #overLimit(record: MessageRecord, upstream: string, sender: string, count: number, recipients: readonly string[]): Promise<number | undefined> {
    const limits = this.#limits;
    const key = limits?.key(upstream, sender);
    if (!limits || key === undefined) return undefined;
    const now = this.#o.clock.now();
    let check: LimitCheck;
    try {
      check = await limits.take(key, count, now);
    } catch (err) {
      const retryAt = this.#o.clock.now() + (this.#o.limitsUnavailableRetry ?? LIMITS_UNAVAILABLE_RETRY_MS);
      this.#o.limitMetrics?.deferred(upstream, 'state_unavailable');
      this.#o.log.warn(
        { event: 'limit.unavailable', queueId: record.id, upstream, key, recipients, nextAttemptAt: new Date(retryAt).toISOString(), err },
        'send-limit counters cannot be reached; waiting rather than sending over the limit',
      );
      return retryAt;
    }
    if (check.ok) return undefined;
    const limit = `${check.rule.max} ${check.rule.unit} per ${check.rule.window}`;
    this.#o.limitMetrics?.deferred(upstream, 'limit');
    this.#o.log.info(
      { event: 'limit.deferred', queueId: record.id, upstream, key, limit, recipients, nextAttemptAt: new Date(check.retryAt).toISOString() },
      `send limit reached (${limit}); waiting for the window`,
    );
    return check.retryAt;
  }

  /** Connection-level failures of every recipient count against the upstream; any other answer shows it is up. */
  #judgeUpstream(name: string, outcomes: readonly { delivered: boolean; error?: { enhanced: string; reply: string } }[], now: number): void {
    if (!this.#o.upstreams.has(name)) return;
    const failures = outcomes.map((o) => (o.delivered ? '2.0.0' : o.error!.enhanced));
    if (UpstreamHealth.isConnectionFailure(failures)) {
      const wasUp = this.health.states().find((s) => s.name === name)?.up ?? true;
      this.health.failed(name, now, outcomes[0]!.error!.reply);
      if (wasUp && !this.health.states().find((s) => s.name === name)!.up) {
        this.#o.log.warn({ event: 'upstream.down', upstream: name, reply: outcomes[0]!.error!.reply }, `upstream ${name} does not answer`);
      }
    } else if (outcomes.length > 0) {
      const wasDown = this.health.states().some((s) => s.name === name && !s.up);
      this.health.answered(name);
      if (wasDown) this.#o.log.info({ event: 'upstream.up', upstream: name }, `upstream ${name} answers again`);
    }
  }

  /**
   * Pending recipients on the suppression list never reach an upstream: with action drop they are dropped
   * silently; with refuse they fail as a refused RCPT would have (the sender gets a DSN). This covers mail
   * queued before the address was added, and every message in drop mode.
   */
  #suppress(record: MessageRecord): MessageRecord {
    const s = this.#o.suppression;
    if (!s || !record.recipients.some((r) => r.status === 'pending' && s.list.has(r.address))) return record;
    const reply = { code: 550, enhanced: '5.7.1', text: 'Recipient is on the suppression list' };
    const recipients = record.recipients.map((r): RecipientState => {
      if (r.status !== 'pending' || !s.list.has(r.address)) return r;
      const dropped = s.action === 'drop';
      this.#o.metrics?.recipient(NO_UPSTREAM, dropped ? 'suppressed' : 'bounced', reply.enhanced);
      this.#o.log.info(
        {
          event: 'delivery',
          queueId: record.id,
          recipient: r.address,
          result: dropped ? 'suppressed' : 'bounced',
          ...(dropped ? {} : { reply: `${reply.code} ${reply.enhanced} ${reply.text}` }),
          suppression: s.action,
          delayMs: this.#o.clock.now() - record.receivedAt,
        },
        dropped ? 'recipient on the suppression list dropped' : 'recipient on the suppression list refused',
      );
      return dropped ? { ...r, status: 'dropped' } : { ...r, status: 'failed', lastReply: reply, notified: false };
    });
    return { ...record, recipients };
  }

  /** With addHardBounces: a recipient refused permanently for its address (5.1.x, not the sender's 5.1.7/5.1.8) joins the list. */
  async #addHardBounces(queueId: string, states: readonly RecipientState[]): Promise<void> {
    const s = this.#o.suppression;
    if (!s?.addHardBounces) return;
    for (const state of states) {
      const r = state.lastReply;
      if (state.status !== 'failed' || !r || r.code < 500 || !/^5\.1\.(?!7$|8$)\d{1,3}$/.test(r.enhanced)) continue;
      const reason = `hard bounce: ${r.code} ${r.enhanced} ${r.text}`;
      try {
        await s.list.add(state.address, reason, new Date(this.#o.clock.now()));
        this.#o.log.info({ event: 'suppression.added', queueId, recipient: state.address, reason }, 'hard-bouncing recipient added to the suppression list');
      } catch (err) {
        // The bounce itself is still recorded and reported; only the list missed an entry.
        this.#o.log.error({ event: 'suppression.error', queueId, recipient: state.address, err }, 'could not add a hard bounce to the suppression list');
      }
    }
  }

  #expireOld(record: MessageRecord): MessageRecord {
    const lifetime = record.sender === '' ? this.#o.retry.bounceLifetime : this.#o.retry.lifetime;
    if (this.#o.clock.now() - record.receivedAt < lifetime) return record;
    const recipients = record.recipients.map((r) => {
      if (r.status !== 'pending') return r;
      const expired = expire(r, lifetime);
      this.#o.metrics?.recipient(r.upstream ?? NO_UPSTREAM, 'bounced', expired.lastReply?.enhanced);
      return expired;
    });
    return { ...record, recipients };
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
