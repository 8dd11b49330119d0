/**
 * What a reload (SIGHUP, `smarthost reload`) may change in a running daemon. Users, routes, rewrite rules,
 * sender restrictions, suppression settings, retry timings, the log level and the listeners' TLS certificates
 * take effect at once; everything that owns a socket or a connection pool (listeners' addresses and limits,
 * upstreams, Microsoft apps, the spool, the admin listener) keeps its running value until a restart.
 */
import { createHash } from 'node:crypto';
import type { Config } from '../config/schema.js';
import { Secret } from '../config/secret.js';

export interface ReloadPlan {
  /** The config to run with: the new one, with the restart-only parts of the old one. */
  config: Readonly<Config>;
  /** Top-level keys (and listeners[n].tls) whose new values take effect now. */
  changed: string[];
  /** Keys whose new values wait for a restart. */
  restartRequired: string[];
}

/** A new config that cannot run beside the restart-only parts still in force; the old config stays. */
export class ReloadRefused extends Error {
  override name = 'ReloadRefused';
}

const LIVE = ['users', 'routing', 'rewrite', 'senderRestrictions', 'suppression', 'log'] as const;
const RESTART = ['hostname', 'spool', 'state', 'upstreams', 'microsoft', 'tags', 'admin'] as const;

export function planReload(old: Readonly<Config>, next: Readonly<Config>): ReloadPlan {
  const changed: string[] = LIVE.filter((k) => !same(old[k], next[k]));
  const restartRequired: string[] = RESTART.filter((k) => !same(old[k], next[k]));
  if (!same(old.delivery.retry, next.delivery.retry)) changed.push('delivery.retry');
  for (const k of ['maxConcurrency', 'shutdownTimeout'] as const) if (old.delivery[k] !== next.delivery[k]) restartRequired.push(`delivery.${k}`);

  const strip = (l: Config['listeners'][number]) => ({ ...l, tls: l.tls ? { ...l.tls, cert: '', key: '', minVersion: '' } : undefined });
  if (old.listeners.length !== next.listeners.length || old.listeners.some((l, i) => !same(strip(l), strip(next.listeners[i]!)))) {
    restartRequired.push('listeners');
  } else {
    // Certificates are re-read on every reload (the files may have been renewed in place).
    next.listeners.forEach((l, i) => l.tls && changed.push(`listeners[${i}].tls`));
  }

  // The running upstreams and listeners stay; a rule that names one only the new config has cannot work yet.
  // Listeners' own upstreams need no check: a changed listener waits for a restart. Upstreams that name another
  // (mailjet's smtpFallback) are restart-only as a whole.
  const upstreams = old.upstreams;
  const missing = [
    next.routing.default,
    ...next.routing.routes.flatMap((r) => [r.upstream, ...r.fallbacks]),
    ...next.users.flatMap((u) => (u.upstream ? [u.upstream] : [])),
  ].filter((u) => !Object.hasOwn(upstreams, u));
  if (missing.length > 0) {
    throw new ReloadRefused(`the new config routes mail to upstream ${[...new Set(missing)].join(', ')}, which is not running yet: restart smarthost to add upstreams`);
  }

  const config: Config = {
    ...next,
    hostname: old.hostname,
    spool: old.spool,
    state: old.state,
    upstreams,
    microsoft: old.microsoft,
    admin: old.admin,
    listeners: restartRequired.includes('listeners') ? old.listeners : next.listeners,
    delivery: { ...old.delivery, retry: next.delivery.retry },
    ...(old.tags ? { tags: old.tags } : {}),
  };
  if (!old.tags) delete config.tags;
  return { config, changed, restartRequired };
}

/** Compared by content, secrets included: they serialise as "[secret]", which would hide a changed password. */
function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a, revealDigest) === JSON.stringify(b, revealDigest);
}

/** A replacer sees a Secret only after its toJSON, so look it up on the holder; a digest keeps it out of memory dumps. */
function revealDigest(this: Record<string, unknown>, key: string, value: unknown): unknown {
  const raw = this[key];
  return raw instanceof Secret ? `secret:${createHash('sha256').update(raw.reveal()).digest('hex')}` : value;
}
