import type { Config, UpstreamConfig } from '../config/schema.js';
import { OutboxUpstream } from './outbox.js';
import { SmtpUpstream } from './smtp.js';
import type { Upstream } from './upstream.js';

export function createUpstream(name: string, config: UpstreamConfig, hostname: string): Upstream {
  switch (config.type) {
    case 'outbox':
      return new OutboxUpstream(name, config);
    case 'smtp':
      return new SmtpUpstream(name, config, hostname);
  }
}

export function upstreamConcurrency(config: UpstreamConfig): number {
  return config.type === 'smtp' ? config.maxConnections : config.maxConcurrency;
}

export function createUpstreams(config: Pick<Config, 'upstreams' | 'hostname'>) {
  return new Map(
    Object.entries(config.upstreams).map(([name, c]) => [name, { upstream: createUpstream(name, c, config.hostname), maxConcurrency: upstreamConcurrency(c) }]),
  );
}
