import { configPath, loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { limiterFromFile, limitsFile, readLimitsFile } from '../delivery/limit-store.js';
import type { LimitUse } from '../delivery/limits.js';
import { configuredLimits } from '../delivery/limits-config.js';
import { AdminApiError, adminClientFor } from './admin-client.js';
import { CONFIG_OPTION, parseCommandLine, UsageError, type Command } from './command.js';

export const limits: Command = {
  name: 'limits',
  summary: 'show the outbound send limits and their use, or reset them (limits --help)',
  takesConfig: true,
  usage: `Usage: smarthost limits show [--json]
       smarthost limits reset [UPSTREAM]

show   each limit (per upstream, or per upstream and the mailbox it sends as: UPSTREAM/MAILBOX), its use
       and when it resets, from the counters the daemon saves in state.dir/limits.json (every few seconds
       and at stop), or with state.redis, read live from Redis (shared by every instance, limits as this
       config sets them)
reset  forgets what was sent through UPSTREAM (every upstream without a name), through the running
       daemon's admin API; mail already waiting for a window keeps its time ("queue retry --all" sends it now)

Exit status: 0 done, 1 failure (daemon unreachable for reset, unreadable state file, Redis unreachable),
2 a wrong command line.

Options:
${CONFIG_OPTION}
  --json             show: print JSON
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, { config: { type: 'string' }, json: { type: 'boolean' } });
    if (values.help) return (console.log(this.usage), 0);
    const [action, ...operands] = positionals;
    if (action === 'show') {
      if (operands.length > 0) throw new UsageError(`"limits show" takes no argument, got "${operands[0]}"`);
      const config = loadConfig(configPath(values.config));
      if (config.state.redis) return showRedis(config, values.json === true);
      const file = limitsFile(config.state.dir);
      const data = await readLimitsFile(file);
      const uses = data ? limiterFromFile(data).uses(Date.now()) : [];
      if (values.json) console.log(JSON.stringify({ file, savedAt: data?.savedAt, limits: uses.map(jsonUse) }, null, 2));
      else console.log(formatUses(uses, file, data?.savedAt));
      return 0;
    }
    if (action === 'reset') {
      if (operands.length > 1) throw new UsageError(`"limits reset" takes at most one upstream name, got ${operands.length}`);
      if (values.json) throw new UsageError('--json is only for "limits show"');
      try {
        const api = adminClientFor(values.config);
        const result = await api.post<{ reset: string; counters: number }>('/api/limits/reset', operands[0] !== undefined ? { name: operands[0] } : {});
        console.log(`send limits reset for ${result.reset === 'all' ? 'every upstream' : result.reset} (${result.counters} counter${result.counters === 1 ? '' : 's'} cleared)`);
        return 0;
      } catch (err) {
        if (err instanceof AdminApiError) return (console.error(`smarthost limits: ${err.message}`), 1);
        throw err;
      }
    }
    throw new UsageError(action === undefined ? 'expected "show" or "reset"' : `unknown action "${action}"; expected "show" or "reset"`);
  },
};

/** The counters every instance shares, read from Redis (its module loaded only here). */
async function showRedis(config: Readonly<Config>, json: boolean): Promise<number> {
  const redisConfig = config.state.redis!;
  const [{ RedisState }, { readRedisLimiter }, { createLogger }] = await Promise.all([import('../state/redis.js'), import('../state/redis-limits.js'), import('../log.js')]);
  const redis = await RedisState.open({ url: redisConfig.url.reveal(), keyPrefix: redisConfig.keyPrefix, log: createLogger('fatal'), connectWaitMs: 5000 });
  try {
    if (!redis.up) return (console.error(`smarthost limits: cannot reach Redis at ${redis.where}`), 1);
    const uses = (await readRedisLimiter(redis, configuredLimits(config.upstreams))).uses(Date.now());
    const source = `${redis.where} (keys ${redis.key('limit', '*')})`;
    if (json) console.log(JSON.stringify({ redis: redis.where, keyPrefix: redis.keyPrefix, limits: uses.map(jsonUse) }, null, 2));
    else console.log(formatUses(uses, source, undefined, true));
    return 0;
  } finally {
    await redis.close();
  }
}

function jsonUse(u: LimitUse) {
  return { ...u, ...(u.resetsAt !== undefined ? { resetsAt: new Date(u.resetsAt).toISOString() } : {}) };
}

/** live: read from Redis as they are now, not from a file saved earlier. */
export function formatUses(uses: readonly LimitUse[], file: string, savedAt: string | undefined, live = false): string {
  const head = `${file}${live ? '' : savedAt ? ` (saved ${savedAt})` : ' (no counters saved yet)'}`;
  if (uses.length === 0) return `${head}\nno send limit has been used`;
  const rows = uses.map((u) => [u.key, `${u.unit}/${u.window}`, `${u.used}/${u.max}`, u.resetsAt === undefined ? '-' : new Date(u.resetsAt).toISOString()]);
  const table = [['LIMITED', 'LIMIT', 'USED', 'RESETS'], ...rows];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  return [head, ...table.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd())].join('\n');
}
