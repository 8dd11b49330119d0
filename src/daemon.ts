import type { Config } from './config/schema.js';
import { Bouncer } from './delivery/bounce.js';
import { systemClock, type Clock } from './delivery/clock.js';
import { createPlanner } from './delivery/planner.js';
import { DeliveryScheduler } from './delivery/scheduler.js';
import { Listener } from './inbound/listener.js';
import { LocalUsers } from './inbound/users.js';
import type { Logger } from './log.js';
import { Spool } from './spool/spool.js';
import { createUpstreams } from './upstreams/index.js';

/** The running relay: listeners in front, the spool in the middle, the scheduler and upstreams behind. */
export class Daemon {
  private constructor(
    readonly config: Readonly<Config>,
    readonly spool: Spool,
    readonly scheduler: DeliveryScheduler,
    readonly listeners: Listener[],
    private readonly upstreams: ReturnType<typeof createUpstreams>,
    private readonly log: Logger,
  ) {}

  static async start(config: Readonly<Config>, log: Logger, clock: Clock = systemClock): Promise<Daemon> {
    const spool = await Spool.open(config.spool.dir);
    const upstreams = createUpstreams(config);
    let scheduler: DeliveryScheduler | undefined;
    const remoteMta = (name: string) => {
      const upstream = config.upstreams[name];
      return upstream?.type === 'smtp' ? upstream.host : undefined;
    };
    const bouncer = new Bouncer({ spool, hostname: config.hostname, clock, log, enqueue: (r) => scheduler!.add(r), remoteMta });
    scheduler = new DeliveryScheduler({
      spool,
      upstreams,
      planner: createPlanner(config, spool),
      bouncer,
      retry: config.delivery.retry,
      maxConcurrency: config.delivery.maxConcurrency,
      clock,
      log,
    });

    const recovered = await spool.recover();
    for (const c of recovered.corrupt) {
      log.error({ event: 'spool.corrupt', queueId: c.id, reason: c.reason, movedTo: spool.corruptDir }, 'damaged queue file moved aside');
    }
    if (recovered.removed.length > 0) log.info({ event: 'spool.cleaned', files: recovered.removed.length }, 'removed files of messages never acknowledged');
    log.info({ event: 'spool.recovered', messages: recovered.records.length }, 'queue loaded');

    const users = new LocalUsers(config.users);
    const listeners = config.listeners.map((l) => new Listener(l, { hostname: config.hostname, spool, users, accept: (r) => scheduler!.add(r), log, policy: config }));
    for (const l of listeners) warnAboutListener(l, log);
    try {
      for (const l of listeners) await l.listen();
    } catch (err) {
      await Promise.all(listeners.map((l) => l.close(0)));
      await scheduler.stop(0);
      await Promise.all([...upstreams.values()].map((u) => u.upstream.close()));
      throw err;
    }
    // Recovered mail is handed over only once every listener is bound: a start that fails delivers nothing.
    for (const record of recovered.records) scheduler.add(record);
    for (const l of listeners) {
      log.info({ event: 'listening', listener: l.config.name, role: l.config.role, host: l.config.host, port: l.port }, 'listening');
    }
    return new Daemon(config, spool, scheduler, listeners, upstreams, log);
  }

  /** Stops accepting, lets SMTP sessions and deliveries in flight finish within the timeout, keeps the rest queued. */
  async stop(timeoutMs = this.config.delivery.shutdownTimeout): Promise<void> {
    this.log.info({ event: 'stopping', timeoutMs }, 'stopping');
    const deadline = Date.now() + timeoutMs;
    await Promise.all(this.listeners.map((l) => l.close(timeoutMs)));
    const finished = await this.scheduler.stop(Math.max(0, deadline - Date.now()));
    await Promise.all([...this.upstreams.values()].map((u) => u.upstream.close()));
    this.log.info({ event: 'stopped', queued: this.scheduler.size, deliveriesCutShort: !finished }, 'stopped');
  }
}

function warnAboutListener(listener: Listener, log: Logger): void {
  const c = listener.config;
  if (c.allowInsecureAuth) {
    log.warn({ event: 'config.warning', listener: c.name }, `listener ${c.name}: AUTH is allowed without TLS; passwords cross the network in clear`);
  } else if (!c.tls) {
    log.warn(
      { event: 'config.warning', listener: c.name },
      `listener ${c.name}: no tls configured and allowInsecureAuth is off, so no client can authenticate here`,
    );
  }
}
