/**
 * The JSON API behind the CLI (`smarthost queue`, `status`, `reload`, `log-level`, `send-test`). Queue changes
 * go through DeliveryScheduler.change, so none races a delivery attempt of the same message.
 */
import type { Daemon } from '../daemon.js';
import { queueState } from '../delivery/metrics.js';
import { bounce, hold, queueDetail, queueEntry, release, retryNow } from '../delivery/queue-admin.js';
import { QueueChangeError } from '../delivery/scheduler.js';
import type { MessageRecord } from '../spool/record.js';
import { version } from '../cli/command.js';
import { queueTestMessage } from './send-test.js';
import { ApiError, type ApiRoutes } from './server.js';

import { LOG_LEVELS } from './config.js';

/** Each send limit with its use and reset time, as `smarthost limits show` prints them. */
async function limitUses(daemon: Daemon) {
  return ((await daemon.limits?.uses(daemon.clock.now())) ?? []).map((u) => ({ ...u, ...(u.resetsAt !== undefined ? { resetsAt: new Date(u.resetsAt).toISOString() } : {}) }));
}

type QueueAction = 'retry' | 'hold' | 'release' | 'delete' | 'bounce';
const ACTIONS: readonly QueueAction[] = ['retry', 'hold', 'release', 'delete', 'bounce'];
/** Actions `--all` may apply to (hold and bounce of everything are one typo from disaster). */
const ALL_ALLOWED: readonly QueueAction[] = ['retry', 'delete', 'release'];

export function adminRoutes(daemon: Daemon): ApiRoutes {
  const s = daemon.scheduler;
  return {
    'GET /api/status': async () => ({
      version: version(),
      hostname: daemon.config.hostname,
      listeners: daemon.listeners.map((l) => ({ name: l.config.name, role: l.config.role, host: l.config.host, port: l.port, listening: l.server.server.listening })),
      upstreams: s.health.states().map((u) => ({
        ...u,
        type: daemon.config.upstreams[u.name]?.type,
        ...(u.downSince !== undefined ? { downSince: new Date(u.downSince).toISOString() } : {}),
      })),
      queue: summary([...s.records()], (id) => s.inFlight(id), daemon.clock.now()),
      ready: await daemon.readiness(),
    }),

    'GET /api/limits': async () => ({ limits: await limitUses(daemon) }),

    'POST /api/limits/reset': async ({ body }) => {
      const name = body.name;
      if (name !== undefined && typeof name !== 'string') throw new ApiError(400, 'expected "name": an upstream name, or no name for every limit');
      if (name !== undefined && !Object.hasOwn(daemon.config.upstreams, name)) throw new ApiError(404, `no upstream "${name}"`);
      const cleared = (await daemon.limits?.reset(name)) ?? 0;
      daemon.log.info({ event: 'limits.reset', upstream: name ?? '*', counters: cleared, by: 'admin' }, `send limits reset${name ? ` for ${name}` : ''}`);
      s.poke();
      return { reset: name ?? 'all', counters: cleared };
    },

    'GET /api/queue': async () => ({ messages: [...s.records()].map((r) => queueEntry(r, s.inFlight(r.id))) }),

    'GET /api/queue/:id': async ({ params }) => {
      const record = s.get(params[0]!);
      if (!record) throw new ApiError(404, `no message ${params[0]} in the queue`);
      const headers = await daemon.spool.readHeaderBlock(record, 64 * 1024).catch(() => Buffer.from('(the message file cannot be read)'));
      return queueDetail(record, s.inFlight(record.id), headers);
    },

    'POST /api/queue/:action': async ({ params, body }) => {
      const action = params[0] as QueueAction;
      if (!ACTIONS.includes(action)) throw new ApiError(404, `unknown queue action "${params[0]}"; expected ${ACTIONS.join(', ')}`);
      const all = body.all === true;
      if (all && !ALL_ALLOWED.includes(action)) throw new ApiError(400, `"${action}" takes one queue ID, not --all`);
      if (!all && typeof body.id !== 'string') throw new ApiError(400, 'expected "id": a queue ID, or "all": true');
      const ids = all ? [...s.records()].map((r) => r.id) : [body.id as string];
      const done: string[] = [];
      const failed: { id: string; error: string }[] = [];
      for (const id of ids) {
        try {
          await s.change(id, (record) => apply(action, record, daemon));
          done.push(id);
          daemon.log.info({ event: `queue.${action}`, queueId: id, by: 'admin' }, `queue ${action} by the administrator`);
        } catch (err) {
          if (!(err instanceof QueueChangeError)) throw err;
          // With --all a message that finished meanwhile is no failure.
          if (all && err.reason === 'not_found') continue;
          if (!all) throw new ApiError(err.reason === 'not_found' ? 404 : 409, err.message);
          failed.push({ id, error: err.message });
        }
      }
      return { action, done, failed };
    },

    'POST /api/send-test': async ({ body }) =>
      queueTestMessage({ config: daemon.config, spool: daemon.spool, clock: daemon.clock, log: daemon.log, enqueue: (r) => s.add(r) }, { to: body.to, route: body.route }),

    'GET /api/log-level': async () => ({ level: daemon.log.level }),

    'POST /api/log-level': async ({ body }) => {
      const level = body.level;
      if (typeof level !== 'string' || !(LOG_LEVELS as readonly string[]).includes(level)) throw new ApiError(400, `expected "level": one of ${LOG_LEVELS.join(', ')}`);
      const previous = daemon.log.level;
      daemon.log.level = level;
      daemon.log.warn({ event: 'log.level', level, previous }, `log level changed from ${previous} to ${level} (until the next restart or reload)`);
      return { level, previous };
    },

    'POST /api/reload': async () => {
      const result = await daemon.reload();
      if (!result.ok) throw new ApiError(422, `configuration not reloaded, the old one stays in force: ${result.error}`);
      return result;
    },
  };
}

function apply(action: QueueAction, record: MessageRecord, daemon: Daemon): MessageRecord | 'delete' {
  switch (action) {
    case 'hold':
      return hold(record);
    case 'release':
      return release(record);
    case 'retry':
      return retryNow(record, daemon.clock.now());
    case 'delete':
      return 'delete';
    case 'bounce': {
      const result = bounce(record);
      if (result.bounced.length === 0) throw new ApiError(409, `message ${record.id} has no recipient left to bounce`);
      return result.record;
    }
  }
}

function summary(records: MessageRecord[], inFlight: (id: string) => boolean, now: number) {
  const byState = { queued: 0, deferred: 0, held: 0 };
  for (const r of records) byState[queueState(r)]++;
  const oldest = records.reduce((min, r) => Math.min(min, r.receivedAt), Infinity);
  return {
    messages: records.length,
    ...byState,
    inFlight: records.filter((r) => inFlight(r.id)).length,
    recipientsPending: records.reduce((n, r) => n + r.recipients.filter((x) => x.status === 'pending').length, 0),
    oldestAgeSeconds: oldest === Infinity ? 0 : Math.round((now - oldest) / 1000),
  };
}
