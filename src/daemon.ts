import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import type { Registry } from 'prom-client';
import { adminRoutes } from './admin/api.js';
import { createRegistry } from './admin/metrics.js';
import { planReload, ReloadRefused } from './admin/reload.js';
import { AdminServer, type Readiness } from './admin/server.js';
import { version } from './cli/command.js';
import type { Config } from './config/schema.js';
import { Bouncer } from './delivery/bounce.js';
import { systemClock, type Clock } from './delivery/clock.js';
import type { SendLimits } from './delivery/limits.js';
import { DeliveryMetrics, registerQueueMetrics } from './delivery/metrics.js';
import { createPlanner } from './delivery/planner.js';
import { DeliveryScheduler } from './delivery/scheduler.js';
import { UpstreamHealth } from './delivery/upstream-health.js';
import { Listener, type ListenerDeps } from './inbound/listener.js';
import { InboundMetrics } from './inbound/metrics.js';
import { LocalUsers } from './inbound/users.js';
import type { Logger } from './log.js';
import { SuppressionList, type SuppressionSettings } from './policy/suppression.js';
import { freeBytes, registerSpoolMetrics } from './spool/metrics.js';
import { Spool } from './spool/spool.js';
import { RedisWindowCounter } from './state/redis-window-counter.js';
import { openSharedState, type SharedState } from './state/shared-state.js';
import { MemoryWindowCounter, type WindowCounter } from './state/window-counter.js';
import { createUpstreams, remoteHost } from './upstreams/index.js';
import { TokenMetrics } from './upstreams/oauth/metrics.js';

export interface DaemonOptions {
  /** Re-reads the configuration for a reload (SIGHUP, `smarthost reload`); without it a reload is refused. */
  loadConfig?: () => Readonly<Config>;
}

export interface ReloadResult {
  ok: boolean;
  /** Why the new config was refused (the old one stays in force). */
  error?: string;
  changed?: string[];
  restartRequired?: string[];
}

/** What listeners read at every decision, so a reload reaches sessions already connected. */
interface LiveSettings {
  config: Readonly<Config>;
  users: LocalUsers;
  suppression: SuppressionSettings;
}

/** The running relay: listeners in front, the spool in the middle, the scheduler and upstreams behind. */
export class Daemon {
  admin: AdminServer | undefined;
  /** Send-limit counters (state.dir/limits.json, or Redis with state.redis). */
  limits: SendLimits | undefined;
  /** Where the send limits, down marks and rate counters live (src/state/shared-state.ts). */
  sharedState: SharedState | undefined;
  /** Inbound message and recipient rates (listeners[].rateLimits). */
  rateCounter: WindowCounter | undefined;
  #reloading: Promise<ReloadResult> | undefined;

  private constructor(
    private readonly live: LiveSettings,
    readonly spool: Spool,
    readonly scheduler: DeliveryScheduler,
    readonly listeners: Listener[],
    private readonly upstreams: Awaited<ReturnType<typeof createUpstreams>>,
    readonly suppression: SuppressionList,
    readonly log: Logger,
    readonly registry: Registry,
    readonly clock: Clock,
    private readonly options: DaemonOptions,
  ) {}

  /** The configuration in force (changed by a reload). */
  get config(): Readonly<Config> {
    return this.live.config;
  }

  static async start(config: Readonly<Config>, log: Logger, clock: Clock = systemClock, options: DaemonOptions = {}): Promise<Daemon> {
    warnAboutTestMode(config, log);
    const spool = await Spool.open(config.spool.dir);
    // A damaged list stops the start: mail to listed recipients must not slip through.
    const list = await SuppressionList.open(config.state.dir);
    log.info({ event: 'suppression.loaded', file: list.file, entries: list.size, action: config.suppression.action }, 'suppression list loaded');
    const suppression: SuppressionSettings = { list, ...config.suppression };
    const registry = createRegistry({ version: version() });
    const upstreamNames = Object.keys(config.upstreams);
    // Google upstreams have no app of their own: their tokens are counted under the upstream's name.
    const googleUpstreams = upstreamNames.filter((n) => config.upstreams[n]!.type === 'google');
    const tokenMetrics = new TokenMetrics(registry, [...Object.keys(config.microsoft.apps), ...googleUpstreams]);
    const upstreams = await createUpstreams(config, log, { onRefresh: tokenMetrics.onRefresh });
    const health = new UpstreamHealth(upstreamNames, config.admin.upstreamDownAfter, config.admin.upstreamProbeAfter);
    const shared = await openSharedState(config, { log, registry, health, now: () => clock.now() });
    const limits = shared.limits;
    let scheduler: DeliveryScheduler | undefined;
    const remoteMta = (name: string) => (Object.hasOwn(config.upstreams, name) ? remoteHost(config.upstreams[name]!) : undefined);
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
      suppression,
      metrics: new DeliveryMetrics(registry, upstreamNames, config.tags),
      health,
      limits,
      limitMetrics: shared.limitMetrics,
    });
    registerQueueMetrics(registry, { records: () => scheduler!.records(), now: () => clock.now(), health });
    registerSpoolMetrics(registry, spool.dir);
    const inboundMetrics = new InboundMetrics(registry, config.listeners.map((l) => l.name), config.tags);

    // Only the listing before the listeners are bound; the envelopes are read after (see spool.load below).
    const queued = await spool.scan();
    if (queued.removed.length > 0) log.info({ event: 'spool.cleaned', files: queued.removed.length }, 'removed files of messages never acknowledged');

    const rateCounter = shared.redis ? new RedisWindowCounter(shared.redis, log) : new MemoryWindowCounter();
    const live: LiveSettings = { config, users: new LocalUsers(config.users), suppression };
    const deps: ListenerDeps = {
      hostname: config.hostname,
      spool,
      accept: (r) => scheduler!.add(r),
      log,
      metrics: inboundMetrics,
      rateCounter,
      now: () => clock.now(),
      get users() {
        return live.users;
      },
      get policy() {
        return live.config;
      },
      get suppression() {
        return live.suppression;
      },
    };
    const listeners = config.listeners.map((l) => new Listener(l, deps));
    for (const l of listeners) warnAboutListener(l, log);
    const daemon = new Daemon(live, spool, scheduler, listeners, upstreams, list, log, registry, clock, options);
    daemon.limits = limits;
    daemon.sharedState = shared;
    daemon.rateCounter = rateCounter;
    try {
      for (const l of listeners) await l.listen();
      if (config.admin.enabled) {
        daemon.admin = await AdminServer.listen({
          host: config.admin.host,
          port: config.admin.port,
          ...(config.admin.token ? { token: config.admin.token.reveal() } : {}),
          registry,
          readiness: () => daemon.readiness(),
          routes: adminRoutes(daemon),
          log,
        });
      }
    } catch (err) {
      await daemon.admin?.close();
      await Promise.all(listeners.map((l) => l.close(0)));
      await scheduler.stop(0);
      await Promise.all([...upstreams.values()].map((u) => u.upstream.close()));
      await rateCounter.close().catch(() => undefined);
      await shared.close();
      throw err;
    }
    // Watched only once the start cannot fail any more (the poll keeps the process alive); a change made
    // since the list was read is caught by the first poll.
    list.watch({
      intervalMs: SUPPRESSION_POLL_MS,
      onReload: (entries) => log.info({ event: 'suppression.reloaded', file: list.file, entries }, 'suppression list changed; reloaded'),
      onError: (err) => log.error({ event: 'suppression.error', file: list.file, err }, 'suppression list unreadable; keeping the previous one'),
    });
    // Recovered mail is handed over only once every listener is bound: a start that fails delivers nothing.
    // Each record as soon as it is read, so a large queue starts draining while the rest loads. Damaged and unreadable
    // files are reported, not thrown: nothing here can fail the start once the listeners are bound.
    const recovered = await spool.load(queued, (record) => scheduler.add(record));
    for (const c of recovered.corrupt) {
      log.error({ event: 'spool.corrupt', queueId: c.id, reason: c.reason, movedTo: c.movedTo }, c.movedTo ? 'damaged queue file moved aside' : 'damaged queue file left in place');
    }
    for (const u of recovered.unreadable) {
      log.error({ event: 'spool.unreadable', queueId: u.id, reason: u.reason }, 'queued message could not be read; left in queue/ and not delivered until the next start');
    }
    if (recovered.removed.length > 0) log.info({ event: 'spool.cleaned', files: recovered.removed.length }, 'removed files of messages never acknowledged');
    log.info({ event: 'spool.recovered', messages: recovered.loaded }, 'queue loaded');
    for (const l of listeners) {
      log.info({ event: 'listening', listener: l.config.name, role: l.config.role, host: l.config.host, port: l.port }, 'listening');
    }
    if (daemon.admin) log.info({ event: 'admin.listening', host: config.admin.host, port: daemon.admin.port }, 'admin API listening');
    return daemon;
  }

  /** /readyz: listeners bound, spool writable with room to spare, no upstream down for too long. */
  async readiness(): Promise<Readiness> {
    const admin = this.config.admin;
    const checks: Readiness['checks'] = [];
    const down = this.listeners.filter((l) => !l.server.server.listening).map((l) => l.config.name);
    checks.push({ name: 'listeners', ok: down.length === 0, detail: down.length === 0 ? `${this.listeners.length} listening` : `not listening: ${down.join(', ')}` });
    try {
      await access(this.spool.queueDir, constants.W_OK);
      const free = await freeBytes(this.spool.dir);
      checks.push({ name: 'spool', ok: free >= admin.minFreeBytes, detail: `${free} bytes free (minimum ${admin.minFreeBytes})` });
    } catch (err) {
      checks.push({ name: 'spool', ok: false, detail: `not writable: ${(err as Error).message}` });
    }
    const gone = this.scheduler.health.downLongerThan(admin.upstreamDownReadyAfter, this.clock.now());
    checks.push({
      name: 'upstreams',
      ok: gone.length === 0,
      detail: gone.length === 0 ? 'none down for too long' : gone.map((u) => `${u.name} down since ${new Date(u.downSince!).toISOString()}: ${u.lastError ?? ''}`).join('; '),
    });
    const state = this.sharedState?.readiness();
    if (state) checks.push(state);
    return { ready: checks.every((c) => c.ok), checks };
  }

  /**
   * Re-reads the config (SIGHUP, `smarthost reload`). Users, routes, rewrite rules, sender restrictions,
   * suppression settings, retry timings, the log level and TLS certificates apply at once, also to connected
   * clients; listener addresses and upstreams need a restart (see src/admin/reload.ts). An invalid config is
   * refused and the old one stays in force.
   */
  reload(): Promise<ReloadResult> {
    this.#reloading ??= this.#reload().finally(() => (this.#reloading = undefined));
    return this.#reloading;
  }

  async #reload(): Promise<ReloadResult> {
    const refuse = (error: string): ReloadResult => {
      this.log.error({ event: 'reload.failed', error }, `configuration not reloaded, the old one stays in force: ${error}`);
      return { ok: false, error };
    };
    if (!this.options.loadConfig) return refuse('this daemon was started without a configuration file to re-read');
    let plan;
    try {
      plan = planReload(this.config, this.options.loadConfig());
    } catch (err) {
      if (err instanceof ReloadRefused || (err as Error).name === 'ConfigError') return refuse((err as Error).message);
      throw err;
    }
    const { config, changed, restartRequired } = plan;
    // Certificates first, every listener's loaded before any is put in force: one that cannot be loaded refuses
    // the whole reload and leaves every listener on its old certificate.
    const tlsUpdates: (() => void)[] = [];
    if (!restartRequired.includes('listeners')) {
      for (const [i, listener] of this.listeners.entries()) {
        const tls = config.listeners[i]!.tls;
        if (!tls) continue;
        try {
          tlsUpdates.push(listener.prepareTls(tls));
        } catch (err) {
          return refuse(`cannot load the TLS certificate listeners[${i}].tls.cert (${tls.cert}) with listeners[${i}].tls.key (${tls.key}): ${(err as Error).message}`);
        }
      }
    }
    for (const putInForce of tlsUpdates) putInForce();
    this.live.users = new LocalUsers(config.users);
    this.live.suppression = { list: this.suppression, ...config.suppression };
    this.live.config = config;
    this.scheduler.reconfigure({ planner: createPlanner(config, this.spool), retry: config.delivery.retry, suppression: this.live.suppression });
    this.log.level = config.log.level;
    this.log.info({ event: 'reload', changed, restartRequired }, changed.length > 0 ? `configuration reloaded: ${changed.join(', ')}` : 'configuration reloaded: nothing changed');
    if (restartRequired.length > 0) {
      this.log.warn({ event: 'reload.restart_required', keys: restartRequired }, `changed settings that need a restart to take effect: ${restartRequired.join(', ')}`);
    }
    warnAboutTestMode(config, this.log);
    return { ok: true, changed, restartRequired };
  }

  /** Stops accepting, ends idle SMTP sessions, lets messages being received and deliveries in flight finish within the timeout, keeps the rest queued. */
  async stop(timeoutMs = this.config.delivery.shutdownTimeout): Promise<void> {
    this.log.info({ event: 'stopping', timeoutMs }, 'stopping');
    // No delivery starts from here on (one started while a listener drains would get no time of its own and be
    // cut short after the upstream had the message: a second delivery at the next start); those in flight and
    // the SMTP sessions share the one deadline.
    const deliveries = this.scheduler.stop(timeoutMs);
    await this.admin?.close();
    await Promise.all(this.listeners.map((l) => l.close(timeoutMs)));
    const finished = await deliveries;
    await Promise.all([...this.upstreams.values()].map((u) => u.upstream.close()));
    await this.suppression.close();
    await this.spool.close();
    await this.rateCounter?.close().catch((err: unknown) => this.log.warn({ event: 'state.error', err }, 'could not close the rate-limit counter'));
    await this.sharedState?.close();
    this.log.info({ event: 'stopped', queued: this.scheduler.size, deliveriesCutShort: !finished }, 'stopped');
  }
}

/** How often the daemon looks at the suppression file for changes made by `smarthost suppress`. */
const SUPPRESSION_POLL_MS = 500;

/** A banner, so nobody wonders for a week why mail never reaches its recipients. */
function warnAboutTestMode(config: Readonly<Config>, log: Logger): void {
  const global = config.routing.testMode?.to;
  const routes = config.routing.routes.filter((r) => r.testMode).map((r) => ({ route: r.name, to: r.testMode!.to }));
  if (!global && routes.length === 0) return;
  const parts = [
    ...(global ? [`every recipient is redirected to ${global}${routes.length > 0 ? ' unless its route has a test address of its own' : ''}`] : []),
    ...routes.map((r) => `route ${r.route}: recipients are redirected to ${r.to}`),
  ];
  log.warn({ event: 'config.test_mode', ...(global ? { testModeTo: global } : {}), routes }, `TEST MODE is on, mail does not reach its recipients: ${parts.join('; ')}`);
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
