/**
 * Where runtime state lives: embedded (the default: send-limit counters in state.dir/limits.json, upstream
 * health and inbound rate counters in memory) or, with `state.redis`, in Redis, shared by every instance
 * that uses it. The Redis modules are imported only then.
 */
import type { Registry } from 'prom-client';
import type { Config } from '../config/schema.js';
import { openLimitStore } from '../delivery/limit-store.js';
import { LimitMetrics } from '../delivery/limit-metrics.js';
import type { SendLimits } from '../delivery/limits.js';
import { configuredLimits } from '../delivery/limits-config.js';
import type { UpstreamHealth } from '../delivery/upstream-health.js';
import type { Logger } from '../log.js';
import type { RedisState } from './redis.js';

export interface SharedState {
  limits: SendLimits;
  limitMetrics: LimitMetrics;
  /** The connection, when state.redis is configured. */
  redis: RedisState | undefined;
  /** The readiness check for the shared state, when there is one. */
  readiness(): { name: string; ok: boolean; detail: string } | undefined;
  close(): Promise<void>;
}

export interface SharedStateOptions {
  log: Logger;
  registry: Registry;
  /** The daemon's upstream health, which Redis marks are mirrored into. */
  health: UpstreamHealth;
  /** The scheduler's clock. */
  now: () => number;
}

export async function openSharedState(config: Readonly<Config>, o: SharedStateOptions): Promise<SharedState> {
  const limited = configuredLimits(config.upstreams);
  const redisConfig = config.state.redis;
  const limitMetrics = new LimitMetrics(o.registry, [...limited.keys()], redisConfig !== undefined);
  if (!redisConfig) {
    const store = await openLimitStore(config.upstreams, config.state.dir, o.now);
    return {
      limits: store,
      limitMetrics,
      redis: undefined,
      readiness: () => undefined,
      close: () => store.close().catch((err: unknown) => o.log.error({ event: 'limits.error', file: store.file, err }, 'could not save the send-limit counters')),
    };
  }
  const [{ RedisState }, { RedisSendLimits }, { RedisHealthSync }] = await Promise.all([import('./redis.js'), import('./redis-limits.js'), import('./redis-health.js')]);
  const redis = await RedisState.open({ url: redisConfig.url.reveal(), keyPrefix: redisConfig.keyPrefix, log: o.log, registry: o.registry });
  o.log.info({ event: 'state.shared', backend: 'redis', url: redis.where, keyPrefix: redis.keyPrefix, connected: redis.up }, 'send limits, upstream down marks and inbound rate counters are shared through Redis');
  const sync = new RedisHealthSync(redis, o.health, Object.keys(config.upstreams), { log: o.log, now: o.now });
  await sync.poll();
  sync.start();
  return {
    limits: new RedisSendLimits(redis, limited),
    limitMetrics,
    redis,
    // Not a reason to leave the load balancer: mail is still accepted and queued; only limited deliveries wait.
    readiness: () => ({
      name: 'state',
      ok: true,
      detail: redis.up
        ? `redis reachable at ${redis.where}`
        : `redis unreachable at ${redis.where}${redis.downSince !== undefined ? ` since ${new Date(redis.downSince).toISOString()}` : ''}: mail is accepted and queued, limited deliveries wait, down marks and inbound rate counters are this instance's own`,
    }),
    async close() {
      await sync.close();
      await redis.close();
    },
  };
}
