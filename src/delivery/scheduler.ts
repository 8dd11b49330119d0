import type { Spool } from '../spool/spool.js';
import { nextDueAt, type MessageRecord } from '../spool/record.js';
import { DeliveryAttempts, type AttemptOptions } from './attempt.js';
import type { Bouncer } from './bounce.js';
import { DueQueue } from './due-queue.js';
import { NO_UPSTREAM } from './metrics.js';
import type { UpstreamHealth } from './upstream-health.js';

export interface SchedulerOptions extends AttemptOptions {
  spool: Spool;
  bouncer: Bouncer;
  /** Messages attempted at the same time, across all upstreams. */
  maxConcurrency: number;
}

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
  /** Messages whose record in memory is newer than their spool file: an attempt's write or unlink failed. */
  readonly #unwritten = new Set<string>();
  readonly #attempts: DeliveryAttempts;
  #timer: { cancel(): void } | undefined;
  #timerAt = Infinity;
  #stopping = false;

  constructor(options: SchedulerOptions) {
    this.#o = options;
    // The attempts read the options on every call, so a reload's planner, retry and suppression apply at once.
    this.#attempts = new DeliveryAttempts(() => this.#o);
    this.health = this.#attempts.health;
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
        this.#unwritten.delete(id);
        this.#o.log.info({ event: 'queue.removed', queueId: id, by: 'admin' }, 'message deleted by the administrator');
        return undefined;
      }
      let record = next;
      if (nextDueAt(record) !== undefined) await this.#save(record);
      this.#countBounced(initial, record);
      if (owesDsn(record)) {
        record = await this.#o.bouncer.notify(record);
        if (nextDueAt(record) !== undefined) await this.#save(record);
      }
      await this.#finishOrKeep(record);
      this.#unwritten.delete(id);
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
      // While the change ran, #pump may have taken the message off the due list as in flight; a change that
      // failed (e.g. disk full) did not put it back, and the message would wait for the next restart.
      const record = this.#records.get(id);
      if (record) this.#schedule(record);
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
    const id = initial.id;
    let { record, attempted } = await this.#attempts.run(initial).finally(() => this.#o.spool.release(id));
    // Nothing attempted, no DSN owed and nothing left unwritten (e.g. one recovered from a crash before it was
    // sent): only reschedule. Returning here while a DSN is owed would leave the message due at 0 and
    // re-attempt it forever; while a write is owed, the retry of that write would never come.
    if (!attempted && record === initial && !owesDsn(record) && !this.#unwritten.has(id)) return this.#schedule(record);
    // What the upstreams accepted has happened whether or not the spool can record it, so memory takes each
    // result before the write: when a write or unlink fails, the retry repeats only that, never a delivery
    // this attempt made. Should the daemon stop before a write succeeds, the spool holds older state and a
    // restart may deliver again: that is the at-least-once window. While the daemon runs, it must not.
    this.#unwritten.add(id);
    this.#records.set(id, record);
    if (nextDueAt(record) !== undefined) await this.#o.spool.update(record);
    if (owesDsn(record)) {
      record = await this.#o.bouncer.notify(record);
      this.#records.set(id, record);
      if (nextDueAt(record) !== undefined) await this.#o.spool.update(record);
    }
    await this.#finishOrKeep(record);
    this.#unwritten.delete(id);
  }

  /** Writes an administrator's record, then keeps it in memory: a change the spool refused is not made. */
  async #save(record: MessageRecord): Promise<void> {
    await this.#o.spool.update(record);
    this.#records.set(record.id, record);
  }

  /**
   * Recipients an administrator's change failed (queue bounce) are counted as bounced, once the change is written,
   * as an expired one is: the sender gets a DSN either way. A deleted message ends no recipient: nothing is counted.
   */
  #countBounced(before: MessageRecord, after: MessageRecord): void {
    for (const [i, r] of after.recipients.entries()) {
      if (before.recipients[i]?.status !== 'pending' || r.status !== 'failed') continue;
      this.#o.metrics?.recipient(r.upstream ?? NO_UPSTREAM, 'bounced', r.lastReply?.enhanced, after.tag);
    }
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
