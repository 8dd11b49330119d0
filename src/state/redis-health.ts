/**
 * Upstream down marks shared through Redis, so every instance skips an upstream one of them found down, and
 * only one instance at a time probes it.
 *
 * - <prefix>down:<upstream>: {downSince, probeAt, lastError, by}, set when an instance marks the upstream down
 *   and again after each failed probe (so probeAt moves on for everybody), deleted when it answers; it expires
 *   after DOWN_MARK_TTL_MS without a failure, in case the instance that set it is gone.
 * - <prefix>probe:<upstream>: the probe lease, SET NX PX by the instance that wants to probe; released after
 *   the probe's answer, or it expires.
 *
 * Each instance's UpstreamHealth stays the synchronous view the scheduler reads; this mirror writes its
 * transitions to Redis and polls the marks every pollMs. While Redis cannot be reached each instance judges
 * and probes on its own, as without Redis; when Redis is back, its marks are the truth again.
 */
import type { HealthMirror, SharedDownMark, UpstreamHealth, UpstreamState } from '../delivery/upstream-health.js';
import type { Logger } from '../log.js';
import type { RedisState } from './redis.js';

/** A mark nobody renewed for this long is dropped: no instance has tried the upstream since. */
export const DOWN_MARK_TTL_MS = 60 * 60_000;
/** Long enough for one probe delivery (an SMTP attempt times out after 2 minutes by default). */
export const PROBE_LEASE_MS = 2 * 60_000;

export interface RedisHealthOptions {
  log: Logger;
  /** The scheduler's clock. */
  now: () => number;
  pollMs?: number;
  markTtlMs?: number;
  probeLeaseMs?: number;
}

export class RedisHealthSync implements HealthMirror {
  /** Bumped by each local transition, so a poll answered after it cannot undo it with an older view. */
  readonly #generation = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;
  #polling: Promise<void> | undefined;
  readonly #writes = new Set<Promise<void>>();

  constructor(
    private readonly redis: RedisState,
    private readonly health: UpstreamHealth,
    private readonly names: readonly string[],
    private readonly o: RedisHealthOptions,
  ) {
    health.mirror = this;
  }

  /** Polls every pollMs (default 1 s) until close(). */
  start(): void {
    this.#timer = setInterval(() => void this.poll(), this.o.pollMs ?? 1000);
    this.#timer.unref();
  }

  marked(state: Readonly<UpstreamState>): void {
    this.#bump(state.name);
    const mark = { downSince: state.downSince ?? this.o.now(), probeAt: state.probeAt ?? this.o.now(), lastError: state.lastError, by: this.redis.instanceId };
    // Both sent at once, so a poll issued after this transition already reads them.
    this.#write('mark', state.name, [
      this.redis.client.set(this.redis.key('down', state.name), JSON.stringify(mark), { expiration: { type: 'PX', value: this.o.markTtlMs ?? DOWN_MARK_TTL_MS } }),
      this.redis.client.releaseLock(this.redis.key('probe', state.name), [this.redis.instanceId]),
    ]);
  }

  cleared(name: string): void {
    this.#bump(name);
    this.#write('clear', name, [this.redis.client.del(this.redis.key('down', name)), this.redis.client.releaseLock(this.redis.key('probe', name), [this.redis.instanceId])]);
  }

  /** Takes over the shared marks, and asks for the probe lease of down upstreams a delivery wanted to probe. */
  poll(): Promise<void> {
    this.#polling ??= this.#poll().finally(() => (this.#polling = undefined));
    return this.#polling;
  }

  async #poll(): Promise<void> {
    this.health.sharedProbes = this.redis.up;
    if (!this.redis.up || this.names.length === 0) return;
    try {
      const generations = this.names.map((n) => this.#generation.get(n) ?? 0);
      const marks = await this.redis.client.mGet(this.names.map((n) => this.redis.key('down', n)));
      this.names.forEach((name, i) => {
        if ((this.#generation.get(name) ?? 0) !== generations[i]) return;
        const mark = parseMark(marks[i]);
        const change = this.health.adopt(name, mark);
        if (change === 'down') {
          this.o.log.warn({ event: 'upstream.down', upstream: name, shared: true, markedBy: mark?.by, reply: mark?.lastError }, `upstream ${name} is marked down by ${mark?.by ?? 'another instance'}`);
        } else if (change === 'up') {
          this.o.log.info({ event: 'upstream.up', upstream: name, shared: true }, `upstream ${name} is no longer marked down`);
        }
      });
      const leaseMs = this.o.probeLeaseMs ?? PROBE_LEASE_MS;
      for (const name of this.health.probesWanted(this.o.now())) {
        const got = await this.redis.client.set(this.redis.key('probe', name), this.redis.instanceId, { condition: 'NX', expiration: { type: 'PX', value: leaseMs } });
        if (got === 'OK') {
          this.health.grantProbe(name, this.o.now() + leaseMs);
          this.o.log.debug({ event: 'upstream.probe_lease', upstream: name }, `this instance probes ${name} next`);
        }
      }
    } catch (err) {
      this.o.log.debug({ event: 'state.error', backend: 'redis', err }, 'could not read the shared upstream marks');
    }
  }

  /** Stops polling and waits for the writes under way (a final mark or clear should reach the others). */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.#polling;
    await Promise.allSettled([...this.#writes]);
    if (this.health.mirror === this) this.health.mirror = undefined;
  }

  #bump(name: string): void {
    this.#generation.set(name, (this.#generation.get(name) ?? 0) + 1);
  }

  #write(what: 'mark' | 'clear', upstream: string, commands: Promise<unknown>[]): void {
    const done: Promise<void> = Promise.all(commands)
      .then(() => undefined)
      .catch((err: unknown) => this.o.log.warn({ event: 'state.error', backend: 'redis', upstream, what, err }, `could not share that upstream ${upstream} is ${what === 'mark' ? 'down' : 'up'}`))
      .finally(() => this.#writes.delete(done));
    this.#writes.add(done);
  }
}

function parseMark(value: unknown): (SharedDownMark & { by?: string }) | undefined {
  if (typeof value !== 'string') return undefined;
  try {
    const m = JSON.parse(value) as Record<string, unknown>;
    if (typeof m.downSince !== 'number' || typeof m.probeAt !== 'number') return undefined;
    return { downSince: m.downSince, probeAt: m.probeAt, lastError: typeof m.lastError === 'string' ? m.lastError : undefined, ...(typeof m.by === 'string' ? { by: m.by } : {}) };
  } catch {
    return undefined;
  }
}
