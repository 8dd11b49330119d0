/**
 * One delivery attempt of a queued message: its due recipients are routed, split by route decision (as Postfix
 * splits by destination) and sent to each route's upstream within its concurrency limit and send limits, failing
 * over to the route's fallbacks; the answers become the recipients' new states. Timing (when a message is due,
 * how many run at once) and storage are the scheduler's.
 */
import type { RetryConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import type { SuppressionSettings } from '../policy/suppression.js';
import type { RouteDecision } from '../routing/route.js';
import { toSmtpError } from '../smtp-error.js';
import type { MessageRecord, RecipientState } from '../spool/record.js';
import type { RecipientOutcome, Upstream } from '../upstreams/upstream.js';
import type { Clock } from './clock.js';
import type { LimitMetrics } from './limit-metrics.js';
import { LocalSendLimits, SendLimiter, type LimitCheck, type SendLimits } from './limits.js';
import type { DeliveryMetrics } from './metrics.js';
import { NO_UPSTREAM } from './metrics.js';
import { applyOutcome, completeOutcomes, expire, sameOutcomeForAll } from './outcomes.js';
import type { DeliveryPlanner, PreparedDelivery } from './planner.js';
import { Semaphore } from './semaphore.js';
import { UpstreamHealth } from './upstream-health.js';

export interface AttemptOptions {
  upstreams: ReadonlyMap<string, { upstream: Upstream; maxConcurrency: number }>;
  /** Routing and rewriting: which upstream takes each recipient, and what is sent there. */
  planner: DeliveryPlanner;
  retry: RetryConfig;
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

export class DeliveryAttempts {
  readonly health: UpstreamHealth;
  readonly #options: () => AttemptOptions;
  readonly #slots: Map<string, Semaphore>;
  readonly #limits: SendLimits | undefined;

  /** options: read on every use, so settings a reload changes apply to the next attempt. */
  constructor(options: () => AttemptOptions) {
    this.#options = options;
    const o = options();
    this.health = o.health ?? new UpstreamHealth(o.upstreams.keys());
    this.#limits = o.limits instanceof SendLimiter ? new LocalSendLimits(o.limits) : o.limits;
    this.#slots = new Map([...o.upstreams].map(([name, u]) => [name, new Semaphore(u.maxConcurrency)]));
  }

  get #o(): AttemptOptions {
    return this.#options();
  }

  /**
   * Attempts the message's due recipients. Answers the record with their new states (not yet saved), also
   * when suppression or expiry changed it; `attempted` is false when no recipient was due.
   */
  async run(initial: MessageRecord): Promise<{ record: MessageRecord; attempted: boolean }> {
    const record = this.#expireOld(this.#suppress(initial));
    const now = this.#o.clock.now();
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
    if (changed.size === 0) return { record, attempted: false };
    return { record: { ...record, recipients: record.recipients.map((r) => changed.get(r.address) ?? r) }, attempted: true };
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
      const { outcomes, started, local } = await this.#send(record, decision, name, prepared, remaining);
      // A message smarthost cannot read fails the same way at every fallback.
      const moving = last || local ? [] : outcomes.filter((o) => !o.delivered && o.error.temporary).map((o) => o.recipient);
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

  /**
   * One delivery to one upstream, within its concurrency limit; a thrown error becomes every recipient's outcome.
   * `local`: it failed on smarthost's side (the message could not be read or rewritten), whatever the upstream
   * made of that; such a failure is every undelivered recipient's outcome, and the upstream is not judged by it.
   */
  async #send(
    record: MessageRecord,
    decision: RouteDecision,
    name: string,
    prepared: PreparedDelivery,
    recipients: readonly string[],
  ): Promise<{ outcomes: RecipientOutcome[]; started: number; local: boolean }> {
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
    const local = prepared.localFailure();
    const failed = outcomes.filter((o) => !o.delivered).map((o) => o.recipient);
    if (!local || failed.length === 0) {
      this.#judgeUpstream(name, outcomes, this.#o.clock.now());
      return { outcomes, started, local: false };
    }
    this.health.unjudged(name);
    this.#o.log.error(
      { event: 'delivery.local_failure', queueId: record.id, upstream: name, recipients: failed, reply: local.reply },
      `delivery stopped by smarthost itself, not by ${name}: ${local.message}`,
    );
    return { outcomes: outcomes.map((o) => (o.delivered ? o : { ...o, error: local })), started, local: true };
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
      this.#o.metrics?.recipient(name, o.delivered ? 'delivered' : state.status === 'failed' ? 'bounced' : 'deferred', o.delivered ? '2.0.0' : o.error.enhanced, record.tag);
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
    // Counted against whom the provider counts: the mailbox that logs in, not each sender it carries.
    const sendsAs = this.#o.upstreams.get(upstream)?.upstream.sendsAs?.(sender) ?? sender;
    const key = limits?.key(upstream, sendsAs);
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
      this.#o.metrics?.recipient(NO_UPSTREAM, dropped ? 'suppressed' : 'bounced', reply.enhanced, record.tag);
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
      this.#o.metrics?.recipient(r.upstream ?? NO_UPSTREAM, 'bounced', expired.lastReply?.enhanced, record.tag);
      return expired;
    });
    return { ...record, recipients };
  }

}
