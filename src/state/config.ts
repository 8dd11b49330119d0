/**
 * `state.redis`: share runtime state between several instances through one Redis (src/state/redis.ts):
 *
 *   state:
 *     dir: /var/lib/smarthost/state
 *     redis:
 *       url: { env: SMARTHOST_REDIS_URL }   # redis://[user:password@]host:port/db, rediss:// for TLS
 *       keyPrefix: "smarthost:"
 *
 * Without it everything stays embedded in this process and state.dir (the default).
 */
import { z } from 'zod';
import { secret } from '../config/secret.js';

export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379/0';

function isRedisUrl(value: string): boolean {
  try {
    const u = new URL(value);
    return (u.protocol === 'redis:' || u.protocol === 'rediss:') && u.hostname !== '';
  } catch {
    return false;
  }
}

export const redisStateSchema = z.strictObject({
  /** A secret (inline, { env }, { file }): the URL may carry the password. */
  url: secret.prefault(DEFAULT_REDIS_URL).refine((s) => isRedisUrl(s.reveal()), {
    // The value itself stays out of the message: it may hold a password.
    error: `expected a redis:// or rediss:// URL such as ${DEFAULT_REDIS_URL}`,
  }),
  /** Put before every key, so several smarthost groups (or other applications) can share one Redis. */
  keyPrefix: z.string().max(200).default('smarthost:'),
});

export type RedisStateConfig = z.output<typeof redisStateSchema>;
