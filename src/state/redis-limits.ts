/**
 * Send-limit counters in Redis, shared by every instance that uses the same Redis and key prefix: one sorted
 * set of sends per limited key (<prefix>limit:<upstream> or <prefix>limit:<upstream>/<mailbox>), checked and
 * counted by one Lua script (redis-scripts.ts) with the semantics of SendLimiter. A key expires a week after
 * its last send. The limits themselves come from each instance's own config: give every instance the same.
 */
import { LIMIT_WINDOWS, limitRules, longestWindow, SendLimiter, windowOffset, type LimitCheck, type LimitsConfig, type LimitUse, type SendLimits } from '../delivery/limits.js';
import { globEscape, type RedisState } from './redis.js';

/** A week: the longest window, so nothing a limit could still count expires. */
export const LIMIT_KEY_TTL_MS = LIMIT_WINDOWS.week;

export class RedisSendLimits implements SendLimits {
  /** For key() and the limits of a key, and to compute uses() from what Redis holds. */
  readonly #local: SendLimiter;
  #seq = 0;

  constructor(
    private readonly redis: RedisState,
    private readonly limits: ReadonlyMap<string, LimitsConfig>,
  ) {
    this.#local = new SendLimiter(limits);
  }

  key(upstream: string, sendsAs: string): string | undefined {
    return this.#local.key(upstream, sendsAs);
  }

  async take(key: string, recipients: number, now: number): Promise<LimitCheck> {
    const config = this.#local.configFor(key);
    if (!config) return { ok: true };
    const rules = limitRules(config);
    // The member is unique per send, so two sends at the same millisecond count twice.
    const member = `${now}:${recipients}:${this.redis.instanceId}:${++this.#seq}`;
    const args = [
      String(now),
      String(recipients),
      config.mode,
      member,
      String(LIMIT_KEY_TTL_MS),
      String(now - longestWindow(rules)),
      ...rules.flatMap((r) => [r.unit, String(LIMIT_WINDOWS[r.window]), String(windowOffset(r.window)), String(r.max)]),
    ];
    const [ok, retryAt, rule] = await this.redis.client.takeLimit(this.redis.key('limit', key), args);
    if (ok === 1) return { ok: true };
    return { ok: false, retryAt: Number(retryAt), rule: rules[Number(rule) - 1]! };
  }

  async uses(now: number): Promise<LimitUse[]> {
    return (await readRedisLimiter(this.redis, this.limits)).uses(now);
  }

  async reset(upstream?: string): Promise<number> {
    const keys =
      upstream === undefined
        ? await this.redis.scan(this.redis.pattern('limit', '*'))
        : [...(await this.redis.scan(this.redis.pattern('limit', globEscape(upstream)))), ...(await this.redis.scan(this.redis.pattern('limit', `${globEscape(upstream)}/*`)))];
    if (keys.length === 0) return 0;
    return Number(await this.redis.client.del(keys));
  }

  /** The connection belongs to whoever opened it. */
  async close(): Promise<void> {}
}

/** What Redis holds, as a SendLimiter with these limits (keys of upstreams no longer limited are left out). */
export async function readRedisLimiter(redis: RedisState, limits: ReadonlyMap<string, LimitsConfig>): Promise<SendLimiter> {
  const prefix = redis.key('limit', '');
  const usage: Record<string, [number, number, number][]> = {};
  for (const key of (await redis.scan(redis.pattern('limit', '*'))).sort()) {
    const members = await redis.client.zRange(key, 0, -1);
    const events = members.flatMap((m): [number, number, number][] => {
      const match = /^(-?\d+):(\d+):/.exec(String(m));
      return match ? [[Number(match[1]), 1, Number(match[2])]] : [];
    });
    if (events.length > 0) usage[key.slice(prefix.length)] = events;
  }
  const limiter = new SendLimiter(limits);
  limiter.restore({ version: 1, usage });
  return limiter;
}
