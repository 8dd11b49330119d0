import type { Config, UpstreamConfig } from '../config/schema.js';
import { createLogger, type Logger } from '../log.js';
import { googleMailbox } from './google/config.js';
import { graphMailbox } from './graph/config.js';
import { M365ConnectorUpstream } from './m365/connector.js';
import { acceptsRecipient as directSendAccepts, connectorHost } from './m365/direct-send.js';
import { M365SmtpUpstream } from './m365/smtp-auth.js';
import type { MailjetUpstreamConfig } from './mailjet/config.js';
import type { MicrosoftApps, MsalTokenSourceOptions } from './oauth/msal.js';
import { OutboxUpstream } from './outbox.js';
import { SmtpUpstream } from './smtp.js';
import type { DeliveryRequest, ProbeOptions, ProbeStep, RecipientOutcome, Upstream } from './upstream.js';

// The SMTP-speaking upstreams share nodemailer (about 6 MB), which nearly every config needs; the HTTP upstreams
// (graph, mailjet: about 19 MB each with mailparser; google) and msal-node (9 MB) are imported only when a
// configured upstream needs them.

/** What upstreams share: the relay's name, the logger, and one token source per Microsoft app registration. */
export interface UpstreamServices {
  log: Logger;
  /** Needed by graph and m365-smtp upstreams only; createUpstreams leaves it out (and msal-node unloaded) otherwise. */
  microsoft?: MicrosoftApps;
  /** Every configured upstream, for one that names another (mailjet's smtpFallback). */
  upstreams?: Readonly<Record<string, UpstreamConfig>>;
  /** The tag header (tags.header), for upstreams with a field for it (mailjet: EventPayload). */
  tagHeader?: string;
  /** Told of every token a Google upstream requests (Microsoft apps are told through MicrosoftApps). */
  onRefresh?: MsalTokenSourceOptions['onRefresh'];
}

/**
 * The upstream `name`, once its type's module is loaded. Throws what the upstream's constructor throws (a bad
 * smtpFallback, an undefined Microsoft app).
 */
export async function openUpstream(name: string, config: UpstreamConfig, hostname: string, services: UpstreamServices = defaultServices()): Promise<Upstream> {
  switch (config.type) {
    case 'mailjet': {
      const [{ MailjetUpstream }, fallback] = await Promise.all([import('./mailjet/mailjet.js'), withFallback(name, config, hostname, services)]);
      return new MailjetUpstream(name, config, {
        log: services.log,
        ...fallback,
        ...(services.tagHeader ? { tagHeader: services.tagHeader } : {}),
      });
    }
    case 'google': {
      const { GoogleUpstream } = await import('./google/google.js');
      return new GoogleUpstream(name, config, { hostname, log: services.log, ...(services.onRefresh ? { onRefresh: services.onRefresh } : {}) });
    }
    case 'graph': {
      const { GraphUpstream } = await import('./graph/graph.js');
      const tokens = microsoftOf(services, name).tokenSource(config.app);
      return new GraphUpstream(name, config, { tokens, appGraphBaseUrl: tokens.graphBaseUrl, ...(tokens.ca ? { ca: tokens.ca } : {}) });
    }
    default:
      return createUpstream(name, config, hostname, services);
  }
}

/**
 * The upstream `name` at once. The SMTP-speaking ones are built here; an HTTP upstream's module loads in the
 * background and its first call waits for it (a construction error surfaces there): use openUpstream to wait.
 */
export function createUpstream(name: string, config: UpstreamConfig, hostname: string, services: UpstreamServices = defaultServices()): Upstream {
  switch (config.type) {
    case 'outbox':
      return new OutboxUpstream(name, config);
    case 'smtp':
      return new SmtpUpstream(name, config, hostname);
    case 'm365-smtp':
      return new M365SmtpUpstream(name, config, { hostname, ...services, microsoft: microsoftOf(services, name) });
    case 'm365-connector':
      return new M365ConnectorUpstream(name, config, { hostname, log: services.log });
    case 'graph':
      return new LazyUpstream(name, openUpstream(name, config, hostname, services), (sender) => graphMailbox(config, sender));
    case 'google':
      return new LazyUpstream(name, openUpstream(name, config, hostname, services), (sender) => googleMailbox(config, sender));
    default:
      return new LazyUpstream(name, openUpstream(name, config, hostname, services));
  }
}

class LazyUpstream implements Upstream {
  /** sendsAs: the loaded upstream's, from its config (send limits ask before anything is loaded). */
  constructor(
    readonly name: string,
    private readonly upstream: Promise<Upstream>,
    private readonly mailboxOf: (sender: string) => string = (sender) => sender,
  ) {
    // Reported by the first call; not an unhandled rejection meanwhile.
    upstream.catch(() => {});
  }

  sendsAs(sender: string): string {
    return this.mailboxOf(sender);
  }

  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    return (await this.upstream).deliver(request);
  }

  async close(): Promise<void> {
    const upstream = await this.upstream.catch(() => undefined);
    await upstream?.close();
  }

  async probe(report: (step: ProbeStep) => void, options?: ProbeOptions): Promise<boolean> {
    const upstream = await this.upstream;
    if (!upstream.probe) throw new Error(`upstream ${this.name} has no connection to test`);
    return upstream.probe(report, options);
  }
}

export function upstreamConcurrency(config: UpstreamConfig): number {
  switch (config.type) {
    case 'smtp':
    case 'm365-smtp':
    case 'm365-connector':
    case 'google':
      return config.maxConnections;
    default:
      return config.maxConcurrency;
  }
}

/**
 * The daemon's upstreams. Pass the daemon's logger: without one, upstream warnings and alerts go to stderr.
 * All upstreams naming the same Microsoft app share its token source (one msal application, one cache).
 */
export async function createUpstreams(
  config: Pick<Config, 'upstreams' | 'hostname' | 'microsoft'> & Partial<Pick<Config, 'tags'>>,
  log?: Logger,
  options: Pick<MsalTokenSourceOptions, 'onRefresh'> = {},
): Promise<Map<string, { upstream: Upstream; maxConcurrency: number }>> {
  const logger = log ?? fallbackLogger();
  // msal-node is loaded only when an upstream may need it (and MicrosoftApps builds an app's client when used).
  const needsMicrosoft = Object.keys(config.microsoft.apps).length > 0 || Object.values(config.upstreams).some((c) => c.type === 'm365-smtp');
  const microsoft = needsMicrosoft ? new (await import('./oauth/msal.js')).MicrosoftApps(config.microsoft, { log: logger, ...options }) : undefined;
  const services: UpstreamServices = {
    log: logger,
    ...(microsoft ? { microsoft } : {}),
    upstreams: config.upstreams,
    ...(config.tags ? { tagHeader: config.tags.header } : {}),
    ...options,
  };
  const entries = await Promise.all(
    Object.entries(config.upstreams).map(
      async ([name, c]) => [name, { upstream: await openUpstream(name, c, config.hostname, services), maxConcurrency: upstreamConcurrency(c) }] as const,
    ),
  );
  return new Map(entries);
}

/**
 * Whether `upstream` can deliver to `address` at all: false for a Direct Send upstream and a recipient outside
 * the tenant's accepted domains. Pure; meant for RCPT TO, so such a recipient is refused while the client is
 * still there instead of bouncing later.
 */
export function acceptsRecipient(upstream: UpstreamConfig, address: string): boolean {
  return upstream.type === 'm365-connector' ? directSendAccepts(upstream, address) : true;
}

/** The host an SMTP-speaking upstream delivers to, for a DSN's Remote-MTA; undefined for the others. */
export function remoteHost(upstream: UpstreamConfig): string | undefined {
  switch (upstream.type) {
    case 'smtp':
    case 'm365-smtp':
    case 'google':
      return upstream.host;
    case 'm365-connector':
      return connectorHost(upstream);
    default:
      return undefined;
  }
}

/**
 * mailjet's smtpFallback as an upstream of its own (its own connection pool): a named smtp / mailjet-smtp
 * upstream's config, or the inline relay settings with the API upstream's keys.
 */
async function withFallback(name: string, config: MailjetUpstreamConfig, hostname: string, services: UpstreamServices): Promise<{ fallback?: Upstream }> {
  const fallback = config.smtpFallback;
  // Without the other upstreams' configs (a caller probing this one upstream) a named fallback cannot be built.
  if (fallback === undefined || (typeof fallback === 'string' && !services.upstreams)) return {};
  const named = typeof fallback === 'string' && services.upstreams && Object.hasOwn(services.upstreams, fallback) ? services.upstreams[fallback] : undefined;
  // Imported here: a static import would run mailjet/config.js before config/schema.js, which extends its schemas.
  const { inlineRelayConfig } = await import('./mailjet/config.js');
  const smtp = named?.type === 'smtp' ? named : inlineRelayConfig(config);
  if (!smtp) throw new Error(`upstream ${name}: smtpFallback ${String(fallback)} names no smtp upstream`);
  return { fallback: new SmtpUpstream(typeof fallback === 'string' ? fallback : `${name}-smtp-relay`, smtp, hostname) };
}

function defaultServices(): UpstreamServices {
  return { log: fallbackLogger() };
}

/** The token sources a graph or m365-smtp upstream needs (createUpstreams provides them whenever one is configured). */
function microsoftOf(services: UpstreamServices, name: string): MicrosoftApps {
  if (!services.microsoft) throw new Error(`upstream ${name}: no Microsoft apps given (UpstreamServices.microsoft)`);
  return services.microsoft;
}

function fallbackLogger(): Logger {
  return createLogger('warn', process.stderr);
}
