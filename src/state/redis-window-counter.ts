import type { Logger } from '../log.js';
import type { RedisState } from './redis.js';
import { MemoryWindowCounter, type TakeResult, type WindowCounter } from './window-counter.js';

/**
 * Sliding-window counters shared by every instance on the same Redis (<prefix>rate:<key>, a sorted set of
 * events expiring with the window), with MemoryWindowCounter's semantics, atomic in one Lua script.
 *
 * While Redis cannot be reached, this process counts on its own (a MemoryWindowCounter): inbound limits then
 * hold per instance instead of across them, and mail is still accepted. The connection belongs to whoever
 * opened it; close() leaves it open.
 */
export class RedisWindowCounter implements WindowCounter {
  readonly #local = new MemoryWindowCounter();
  #seq = 0;
  #fallingBack = false;

  constructor(
    private readonly redis: RedisState,
    private readonly log?: Logger,
  ) {}

  async take(key: string, amount: number, max: number, windowMs: number, now: number): Promise<TakeResult> {
    const member = `${now}:${amount}:${this.redis.instanceId}:${++this.#seq}`;
    try {
      const [ok, retryAt] = await this.redis.client.takeWindow(this.redis.key('rate', key), [String(now), String(amount), String(max), String(windowMs), member]);
      this.#fallingBack = false;
      return ok === 1 ? { ok: true } : { ok: false, retryAt: Number(retryAt) };
    } catch (err) {
      if (!this.#fallingBack) this.log?.warn({ event: 'rate.local_fallback', err }, 'inbound rate counters in Redis unreachable; counting in this process until it is back');
      this.#fallingBack = true;
      return this.#local.takeNow(key, amount, max, windowMs, now);
    }
  }

  async close(): Promise<void> {
    await this.#local.close();
  }
}
