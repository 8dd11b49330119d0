/**
 * A throwaway redis-server for the shared-state tests: on loopback, on a free port, nothing saved to disk, stopped
 * by the test. Debian's redis-server package provides the binary (.ci/run installs it); tests skip with
 * REDIS_MISSING as their reason where it is not installed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { createLogger } from '../../src/log.js';
import { RedisState } from '../../src/state/redis.js';
import { freePort } from './net.js';

const found = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
/** Why the Redis tests are skipped, or false when redis-server is there. */
export const REDIS_MISSING: string | false = found.error || found.status !== 0 ? 'redis-server is not installed (Debian package redis-server; .ci/run installs it)' : false;

export interface TestRedis {
  port: number;
  url: string;
  proc: ChildProcess;
  /** Stops the server (SIGTERM) and waits for it to exit. */
  stop(): Promise<void>;
}

/** Starts redis-server on `port` (default: a free one) and resolves once it accepts connections. */
export async function startRedis(port?: number): Promise<TestRedis> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(port ?? (await freePort()));
    } catch (err) {
      // A freshly picked port taken in the meantime: pick another (a port the caller chose is kept).
      if (port !== undefined || attempt >= 3 || !/already in use|bind/i.test((err as Error).message)) throw err;
    }
  }
}

async function startOnce(port: number): Promise<TestRedis> {
  const dir = await mkdtemp(join(tmpdir(), 'smarthost-redis-'));
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  try {
    await new Promise<void>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        output += chunk.toString();
        if (/Ready to accept connections/.test(output)) resolve();
      };
      proc.stdout!.on('data', onData);
      proc.stderr!.on('data', onData);
      proc.once('exit', (code) => reject(new Error(`redis-server exited (${code}) before it was ready: ${output}`)));
      proc.once('error', reject);
    });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    proc,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface FileRedis {
  /** The server's URL (once the file's tests run). */
  readonly url: string;
  /** A connection with its own key prefix (to the file's server, or to `url`), closed after the file's tests. */
  connect(prefix: string, url?: string): Promise<RedisState>;
  /** Runs after the file's tests, before the connections close. */
  onClose(close: () => Promise<void>): void;
}

/** One redis-server for a test file: started before its tests (unless REDIS_MISSING), stopped after them. */
export function redisForFile(): FileRedis {
  let server: TestRedis | undefined;
  const closing: (() => Promise<void>)[] = [];
  const connections: RedisState[] = [];
  before(async () => {
    if (!REDIS_MISSING) server = await startRedis();
  });
  after(async () => {
    for (const close of closing) await close();
    await Promise.all(connections.map((r) => r.close()));
    await server?.stop();
  });
  return {
    get url() {
      if (!server) throw new Error('the file\'s redis-server is not running');
      return server.url;
    },
    async connect(prefix, url) {
      const redis = await RedisState.open({ url: url ?? this.url, keyPrefix: prefix, log: createLogger('silent') });
      connections.push(redis);
      return redis;
    },
    onClose(close) {
      closing.push(close);
    },
  };
}
