/**
 * Sliding-window counters for rate limits (inbound messages and recipients per client or user). The interface is
 * async so that several smarthost instances can share one counter in Redis (src/state/redis-*.ts); the default
 * lives in memory, per process.
 */
export type TakeResult = { ok: true } | { ok: false; retryAt: number };

export interface WindowCounter {
  /**
   * Counts `amount` for `key` at `now` when the key's count over the last `windowMs` plus `amount` stays within
   * `max`, and answers ok; otherwise counts nothing and answers when enough will have left the window. Atomic:
   * concurrent takes never let the count pass `max` together.
   */
  take(key: string, amount: number, max: number, windowMs: number, now: number): Promise<TakeResult>;
  close(): Promise<void>;
}

/** One process's counters. Bounded: past maxKeys, the key used least recently is forgotten first. */
export class MemoryWindowCounter implements WindowCounter {
  readonly #events = new Map<string, [at: number, amount: number][]>();

  constructor(private readonly maxKeys = 100_000) {}

  async take(key: string, amount: number, max: number, windowMs: number, now: number): Promise<TakeResult> {
    return this.takeNow(key, amount, max, windowMs, now);
  }

  /** take() without the promise, for callers that must decide in the same tick. */
  takeNow(key: string, amount: number, max: number, windowMs: number, now: number): TakeResult {
    const from = now - windowMs;
    const events = (this.#events.get(key) ?? []).filter((e) => e[0] > from);
    let used = events.reduce((sum, e) => sum + e[1], 0);
    // An amount larger than the whole budget can never fit: let it through alone in an empty window.
    if (used > 0 && used + amount > max) {
      for (const [at, n] of events) {
        used -= n;
        if (used === 0 || used + amount <= max) return this.#keep(key, events, { ok: false, retryAt: at + windowMs });
      }
    }
    events.push([now, amount]);
    return this.#keep(key, events, { ok: true });
  }

  async close(): Promise<void> {
    this.#events.clear();
  }

  #keep(key: string, events: [number, number][], result: TakeResult): TakeResult {
    this.#events.delete(key);
    if (events.length > 0) this.#events.set(key, events);
    if (this.#events.size > this.maxKeys) this.#events.delete(this.#events.keys().next().value!);
    return result;
  }
}
