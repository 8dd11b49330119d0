/**
 * Starting smarthost for tests, two ways: in this process (Daemon.start with a config built here, logs
 * captured), or as the built CLI in a child process (for SIGTERM/SIGKILL and restart scenarios).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import nodemailer from 'nodemailer';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { Daemon } from '../../src/daemon.js';
import type { Clock } from '../../src/delivery/clock.js';
import { createLogger } from '../../src/log.js';
import { freePort } from './net.js';
import { startSink, type Sink } from './sink.js';

export const CLI = fileURLToPath(new URL('../../src/cli.js', import.meta.url));

export interface TestConfigOptions {
  dir: string;
  /** Upstreams by name; default: one outbox in dir/outbox. */
  upstreams?: Record<string, unknown>;
  defaultUpstream?: string;
  /** Extra listener fields merged into both default listeners, or a full listener list. */
  listeners?: Record<string, unknown>[];
  users?: { name: string; passwordHash: string }[];
  retry?: Record<string, unknown>;
  extra?: Record<string, unknown>;
}

/** A config object for a test: relay and submission listeners on free loopback ports. */
export async function testConfig(o: TestConfigOptions): Promise<Record<string, unknown>> {
  const listeners =
    o.listeners ??
    [
      { name: 'relay', role: 'relay', host: '127.0.0.1', port: await freePort(), networks: ['127.0.0.1/32'] },
      { name: 'submission', role: 'submission', host: '127.0.0.1', port: await freePort(), allowInsecureAuth: true },
    ];
  return {
    hostname: 'smarthost.test',
    log: { level: 'debug' },
    spool: { dir: join(o.dir, 'spool') },
    state: { dir: join(o.dir, 'state') },
    listeners,
    users: o.users ?? [],
    upstreams: o.upstreams ?? { outbox: { type: 'outbox', dir: join(o.dir, 'outbox') } },
    routing: { default: o.defaultUpstream ?? Object.keys(o.upstreams ?? { outbox: 1 })[0] },
    delivery: { retry: { initialDelay: '5m', ...(o.retry ?? {}) }, shutdownTimeout: '5s' },
    // Never the default 9325: tests run in parallel.
    admin: { host: '127.0.0.1', port: await freePort() },
    ...(o.extra ?? {}),
  };
}

export async function tempDir(prefix = 'smarthost-test-'): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  // node:test runs after() hooks in the order they were added, so a daemon set up after its directory is often
  // still running (writing a state file into its queue) while the directory is removed: rm retries ENOTEMPTY.
  return { path, remove: () => rm(path, { recursive: true, force: true, maxRetries: 5, retryDelay: 20 }) };
}

export interface InProcessDaemon {
  daemon: Daemon;
  /** Every log line so far, parsed. */
  logs(): Record<string, unknown>[];
  /** Resolves with the first log line (past or future) for which match() is true. */
  waitForLog(match: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  port(listener: string): number;
  stop(): Promise<void>;
}

/**
 * A port picked by freePort can still be taken by a test running in parallel before the daemon binds it. On
 * EADDRINUSE the config's ports are picked anew (in place, so the caller sees them) and the start retried.
 */
async function withPortRetry<T>(config: Record<string, unknown>, start: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (err) {
      if (attempt >= 3 || !/EADDRINUSE/.test(String((err as Error).message))) throw err;
      for (const l of config.listeners as { port: number }[]) l.port = await freePort();
      const admin = config.admin as { port?: number } | undefined;
      if (admin?.port) admin.port = await freePort();
    }
  }
}

/** clock: the daemon's time (a test moves an offset clock instead of waiting). */
export async function startInProcess(config: Record<string, unknown>, clock?: Clock): Promise<InProcessDaemon> {
  return withPortRetry(config, () => startInProcessOnce(config, clock));
}

async function startInProcessOnce(config: Record<string, unknown>, clock?: Clock): Promise<InProcessDaemon> {
  const parsed = parseConfig(stringify(config), 'test');
  const lines: Record<string, unknown>[] = [];
  const waiters = new Set<{ match: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }>();
  const sink = new PassThrough();
  let partial = '';
  sink.on('data', (chunk: Buffer) => {
    partial += chunk.toString('utf8');
    let nl: number;
    while ((nl = partial.indexOf('\n')) !== -1) {
      const line = JSON.parse(partial.slice(0, nl)) as Record<string, unknown>;
      partial = partial.slice(nl + 1);
      lines.push(line);
      for (const w of waiters) if (w.match(line)) (waiters.delete(w), w.resolve(line));
    }
  });
  const daemon = await Daemon.start(parsed, createLogger(parsed.log.level, sink), clock);
  return {
    daemon,
    logs: () => lines,
    waitForLog(match, timeoutMs = 10_000) {
      const found = lines.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const w = { match, resolve: (l: Record<string, unknown>) => (clearTimeout(timer), resolve(l)) };
        const timer = setTimeout(() => (waiters.delete(w), reject(new Error('timed out waiting for a log line'))), timeoutMs);
        waiters.add(w);
      });
    },
    port: (name) => daemon.listeners.find((l) => l.config.name === name)!.port,
    stop: () => daemon.stop(5000),
  };
}

export interface ChildDaemon {
  proc: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves when the process has exited, with its exit code or signal. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<void>;
}

/**
 * Runs the built CLI; resolves once every configured listener logged "listening". `runUnder` is a command
 * the daemon runs under (strace and its options).
 */
export async function spawnDaemon(config: Record<string, unknown>, dir: string, args: string[] = [], runUnder: string[] = []): Promise<ChildDaemon> {
  return withPortRetry(config, () => spawnDaemonOnce(config, dir, args, runUnder));
}

async function spawnDaemonOnce(config: Record<string, unknown>, dir: string, args: string[], runUnder: string[]): Promise<ChildDaemon> {
  const configFile = join(dir, `config-${Date.now()}.yaml`);
  await writeFile(configFile, stringify(config));
  const [command, ...commandArgs] = [...runUnder, process.execPath, CLI, 'start', '--config', configFile, ...args] as [string, ...string[]];
  const proc = spawn(command, commandArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const listeners = new Set<() => void>();
  proc.stdout!.on('data', (c: Buffer) => ((out += c.toString()), listeners.forEach((l) => l())));
  proc.stderr!.on('data', (c: Buffer) => ((err += c.toString()), listeners.forEach((l) => l())));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('exit', (code, signal) => (listeners.forEach((l) => l()), resolve({ code, signal }))),
  );
  const child: ChildDaemon = {
    proc,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitForOutput(pattern, timeoutMs = 15_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (pattern.test(out)) return done(), resolve();
          if (proc.exitCode !== null || proc.signalCode !== null) return done(), reject(new Error(`daemon exited before ${pattern}: ${err || out}`));
        };
        const timer = setTimeout(() => (done(), reject(new Error(`timed out waiting for ${pattern}; stderr: ${err}`))), timeoutMs);
        const done = () => (clearTimeout(timer), listeners.delete(check));
        listeners.add(check);
        check();
      });
    },
  };
  const count = (config.listeners as unknown[]).length;
  await child.waitForOutput(new RegExp(`("event":"listening"[^\\n]*\\n[^]*){${count}}`));
  return child;
}

/** Sends one raw message to the daemon's relay listener with nodemailer; returns the queue ID of the 250 reply. */
export async function sendRaw(relay: InProcessDaemon, from: string, to: string[], raw: string | Buffer): Promise<string> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  try {
    const info = await client.sendMail({ envelope: { from, to }, raw });
    const m = /queued as ([0-9A-Z]{22})$/.exec(info.response);
    assert.ok(m, `unexpected reply: ${info.response}`);
    return m[1]!;
  } finally {
    client.close();
  }
}

/** The common set-up: a sink upstream and a default test daemon relaying to it; stop() tears down all three. */
export async function startRelayToSink(): Promise<{ relay: InProcessDaemon; sink: Sink; stop(): Promise<void> }> {
  const dir = await tempDir();
  const sink = await startSink();
  const relay = await startInProcess(
    await testConfig({ dir: dir.path, upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' } } }),
  );
  return {
    relay,
    sink,
    async stop() {
      await relay.stop();
      await sink.close();
      await dir.remove();
    },
  };
}
