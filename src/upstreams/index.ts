import type { Config, UpstreamConfig } from '../config/schema.js';
import { createLogger, type Logger } from '../log.js';
import { GoogleUpstream } from './google/google.js';
import { GraphUpstream } from './graph/graph.js';
import { M365ConnectorUpstream } from './m365/connector.js';
import { acceptsRecipient as directSendAccepts, connectorHost } from './m365/direct-send.js';
import { M365SmtpUpstream } from './m365/smtp-auth.js';
import { inlineRelayConfig, type MailjetUpstreamConfig } from './mailjet/config.js';
import { MailjetUpstream } from './mailjet/mailjet.js';
import { MicrosoftApps, type MsalTokenSourceOptions } from './oauth/msal.js';
import { OutboxUpstream } from './outbox.js';
import { SmtpUpstream } from './smtp.js';
import type { Upstream } from './upstream.js';

/** What upstreams share: the relay's name, the logger, and one token source per Microsoft app registration. */
export interface UpstreamServices {
  log: Logger;
  microsoft: MicrosoftApps;
  /** Every configured upstream, for one that names another (mailjet's smtpFallback). */
  upstreams?: Readonly<Record<string, UpstreamConfig>>;
  /** The tag header (tags.header), for upstreams with a field for it (mailjet: EventPayload). */
  tagHeader?: string;
}

export function createUpstream(name: string, config: UpstreamConfig, hostname: string, services: UpstreamServices = defaultServices()): Upstream {
  switch (config.type) {
    case 'outbox':
      return new OutboxUpstream(name, config);
    case 'smtp':
      return new SmtpUpstream(name, config, hostname);
    case 'm365-smtp':
      return new M365SmtpUpstream(name, config, { hostname, ...services });
    case 'm365-connector':
      return new M365ConnectorUpstream(name, config, { hostname, log: services.log });
    case 'mailjet':
      return new MailjetUpstream(name, config, {
        log: services.log,
        ...withFallback(name, config, hostname, services),
        ...(services.tagHeader ? { tagHeader: services.tagHeader } : {}),
      });
    case 'google':
      return new GoogleUpstream(name, config, { hostname, log: services.log });
    case 'graph': {
      const tokens = services.microsoft.tokenSource(config.app);
      return new GraphUpstream(name, config, { tokens, appGraphBaseUrl: tokens.graphBaseUrl, ...(tokens.ca ? { ca: tokens.ca } : {}) });
    }
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
export function createUpstreams(
  config: Pick<Config, 'upstreams' | 'hostname' | 'microsoft'> & Partial<Pick<Config, 'tags'>>,
  log?: Logger,
  options: Pick<MsalTokenSourceOptions, 'onRefresh'> = {},
) {
  const logger = log ?? fallbackLogger();
  const services: UpstreamServices = {
    log: logger,
    microsoft: new MicrosoftApps(config.microsoft, { log: logger, ...options }),
    upstreams: config.upstreams,
    ...(config.tags ? { tagHeader: config.tags.header } : {}),
  };
  return new Map(
    Object.entries(config.upstreams).map(([name, c]) => [name, { upstream: createUpstream(name, c, config.hostname, services), maxConcurrency: upstreamConcurrency(c) }]),
  );
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
function withFallback(name: string, config: MailjetUpstreamConfig, hostname: string, services: UpstreamServices): { fallback?: Upstream } {
  const fallback = config.smtpFallback;
  // Without the other upstreams' configs (a caller probing this one upstream) a named fallback cannot be built.
  if (fallback === undefined || (typeof fallback === 'string' && !services.upstreams)) return {};
  const named = typeof fallback === 'string' && services.upstreams && Object.hasOwn(services.upstreams, fallback) ? services.upstreams[fallback] : undefined;
  const smtp = named?.type === 'smtp' ? named : inlineRelayConfig(config);
  if (!smtp) throw new Error(`upstream ${name}: smtpFallback ${String(fallback)} names no smtp upstream`);
  return { fallback: new SmtpUpstream(typeof fallback === 'string' ? fallback : `${name}-smtp-relay`, smtp, hostname) };
}

function defaultServices(): UpstreamServices {
  const log = fallbackLogger();
  return { log, microsoft: new MicrosoftApps({ apps: {} }, { log }) };
}

function fallbackLogger(): Logger {
  return createLogger('warn', process.stderr);
}
