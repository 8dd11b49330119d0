/**
 * The Redis connection behind the shared state (send-limit counters, upstream down marks, inbound rate counters),
 * used when `state.redis` is configured. The client module is imported only then, so the default start-up does
 * not load it.
 *
 * Commands fail at once while Redis cannot be reached (no offline queue) and time out after a few seconds: the
 * callers decide what that means (a limited delivery waits; an inbound limit falls back to this process's own
 * counter), rather than hanging behind a queue of commands that may never run.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Gauge, type Registry } from 'prom-client';
import type { RedisClientType } from 'redis';
import type { Logger } from '../log.js';
import { SCRIPTS } from './redis-scripts.js';

type Scripts = { [K in keyof typeof SCRIPTS]: (typeof SCRIPTS)[K] & { SHA1: string } };
export type StateClient = RedisClientType<{}, {}, Scripts>;

/** What a key of the shared state is for; each kind is its own namespace under the prefix. */
export type StateKeyKind = 'limit' | 'rate' | 'down' | 'probe';

export interface RedisStateOptions {
  url: string;
  keyPrefix: string;
  log: Logger;
  /** Gets smarthost_state_backend_up. */
  registry?: Registry;
  /** How long the start waits for a first connection before it goes on without (and keeps trying). */
  connectWaitMs?: number;
  commandTimeoutMs?: number;
}

/** The URL without its password, for logs and `limits show`. */
export function describeRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    u.password = '';
    u.username = '';
    return u.toString();
  } catch {
    return 'redis (unparsable URL)';
  }
}

export class RedisState {
  /** Tells this instance's locks from another's. */
  readonly instanceId = `${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`;
  readonly where: string;
  /** When the connection was lost (undefined while up, or before the first connection). */
  downSince: number | undefined;
  #closing = false;

  private constructor(
    readonly client: StateClient,
    readonly keyPrefix: string,
    url: string,
  ) {
    this.where = describeRedisUrl(url);
  }

  static async open(o: RedisStateOptions): Promise<RedisState> {
    const { createClient, defineScript } = await import('redis');
    const scripts = Object.fromEntries(Object.entries(SCRIPTS).map(([name, s]) => [name, defineScript(s)])) as Scripts;
    const client: StateClient = createClient({
      url: o.url,
      disableOfflineQueue: true,
      commandOptions: { timeout: o.commandTimeoutMs ?? 3000 },
      socket: { connectTimeout: 3000, reconnectStrategy: (retries: number) => Math.min(100 * 2 ** retries, 2000) },
      scripts,
    });
    const state = new RedisState(client, o.keyPrefix, o.url);
    state.downSince = Date.now();
    let reported = false;
    client.on('error', (err: Error) => {
      if (state.#closing) return;
      // Every reconnection attempt fails with an error: one warning per outage, the rest at debug level.
      if (!reported) o.log.warn({ event: 'state.unavailable', backend: 'redis', url: state.where, err }, `shared state in Redis unreachable (${err.message}); limited deliveries wait, inbound limits count locally`);
      else o.log.debug({ event: 'state.error', backend: 'redis', err }, err.message);
      reported = true;
    });
    client.on('ready', () => {
      o.log.info({ event: 'state.connected', backend: 'redis', url: state.where }, 'shared state in Redis reachable');
      state.downSince = undefined;
      reported = false;
    });
    client.on('reconnecting', () => (state.downSince ??= Date.now()));
    client.on('end', () => (state.downSince ??= Date.now()));
    if (o.registry) {
      new Gauge({
        name: 'smarthost_state_backend_up',
        help: 'Whether the shared state backend (Redis) is reachable',
        registers: [o.registry],
        collect() {
          this.set(client.isReady ? 1 : 0);
        },
      });
    }
    // connect() retries until it succeeds; the start waits a little for it, not for ever: mail is still accepted.
    const connected = client.connect().then(
      () => true,
      () => false,
    );
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([connected, new Promise((r) => (timer = setTimeout(r, o.connectWaitMs ?? 3000)))]);
    clearTimeout(timer);
    return state;
  }

  get up(): boolean {
    return this.client.isReady;
  }

  key(kind: StateKeyKind, name: string): string {
    return `${this.keyPrefix}${kind}:${name}`;
  }

  /** A SCAN pattern for keys of this kind whose name matches `pattern` (a glob; the prefix is escaped). */
  pattern(kind: StateKeyKind, pattern: string): string {
    return `${globEscape(this.key(kind, ''))}${pattern}`;
  }

  /** Every key matching a pattern from pattern(). */
  async scan(match: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const batch of this.client.scanIterator({ MATCH: match, COUNT: 500 })) keys.push(...batch);
    return [...new Set(keys)];
  }

  async close(): Promise<void> {
    this.#closing = true;
    if (this.client.isReady) await this.client.close().catch(() => this.client.destroy());
    else if (this.client.isOpen) this.client.destroy();
  }
}

export function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&');
}
