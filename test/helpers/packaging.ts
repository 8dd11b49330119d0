/**
 * For the packaging tests (test/packaging/): run a command to its end, install from the local npm cache,
 * and prove that an installed or copied smarthost really relays: start it with a loopback config, send one
 * message with nodemailer, see it delivered to the outbox, stop it with SIGTERM.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { stringify } from 'yaml';
import { testConfig } from './daemon.js';
import { freePort } from './net.js';

export const PROJECT = new URL('../../../', import.meta.url).pathname;

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end; never rejects for a non-zero exit (the caller asserts on `code`). */
export function run(file: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      { cwd: options.cwd, env: options.env ?? process.env, timeout: options.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number' && !child.killed) return reject(err);
        resolve({ code: child.exitCode, stdout, stderr });
      },
    );
    child.stdin?.end();
  });
}

export const NPM = 'npm';
/** npm without its update check, audit and funding notes, for quiet and registry-free runs. */
const NPM_QUIET = ['--no-audit', '--no-fund', '--no-update-notifier'];

export interface NpmFromCache extends RunResult {
  /** How the install was done: "offline" (cache only) or "prefer-offline" (the registry for what the cache lacks). */
  mode: 'offline' | 'prefer-offline';
}

/**
 * An npm command that installs packages, served from the local npm cache (.ci/run's own `npm ci` warms it).
 * Only if the cache lacks something (ENOTCACHED) is it retried with --prefer-offline, which asks the registry
 * for the missing metadata; a caller skips when that fails for want of a network.
 */
export async function npmFromCache(args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<NpmFromCache> {
  const offline = await run(NPM, [...args, ...NPM_QUIET, '--offline'], options);
  if (offline.code === 0 || !/ENOTCACHED|only-if-cached/.test(offline.stderr)) return { ...offline, mode: 'offline' };
  const online = await run(NPM, [...args, ...NPM_QUIET, '--prefer-offline', '--fetch-retries=0', '--fetch-timeout=20000'], options);
  return { ...online, mode: 'prefer-offline' };
}

/** Whether a failed npm run failed for want of a registry (then a test skips rather than fails). */
export function npmHadNoNetwork(result: RunResult): boolean {
  return result.code !== 0 && /ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNREFUSED|ECONNRESET|ENETUNREACH|ENOTCACHED/.test(result.stderr);
}

export interface RelayProof {
  queueId: string;
  /** Every JSON log line the daemon wrote. */
  logs: Record<string, unknown>[];
}

export interface RelayProofOptions {
  /** `start --config FILE`, or SMARTHOST_CONFIG=FILE. */
  configVia: 'option' | 'env';
  /** Working directory of the process; default `dir`. */
  cwd?: string;
  /** Changes the test config (a testConfig() with its files in `dir`) before it is written. */
  configure?: (config: Record<string, any>) => void | Promise<void>;
  /** Where the outbox's files appear to this process, when the config's own path is not visible here. */
  outbox?: string;
  /** Runs once the message is delivered, before SIGTERM, with the config as written. */
  whileRunning?: (config: Record<string, any>) => Promise<void>;
}

/**
 * Starts `command` (an installed `smarthost`, or node plus a cli.js) with a loopback config in `dir`, given
 * either as `start --config FILE` or through SMARTHOST_CONFIG, sends one message to its relay listener and
 * waits until the outbox upstream has written it; then SIGTERM, which must end the process with code 0.
 */
export async function proveItRelays(command: string[], dir: string, how: RelayProofOptions): Promise<RelayProof> {
  const config = await testConfig({ dir });
  (config.log as { level: string }).level = 'info';
  // The admin listener defaults to the fixed port 9325; a free one keeps parallel runs apart.
  config.admin ??= { port: await freePort() };
  await how.configure?.(config);
  const configFile = join(dir, 'smarthost.yaml');
  await writeFile(configFile, stringify(config));
  const [file, ...prefix] = command;
  const args = how.configVia === 'option' ? [...prefix, 'start', '--config', configFile] : [...prefix, 'start'];
  const env = { ...process.env };
  delete env.SMARTHOST_CONFIG;
  if (how.configVia === 'env') env.SMARTHOST_CONFIG = configFile;
  const proc = spawn(file!, args, { cwd: how.cwd ?? dir, env, stdio: ['ignore', 'pipe', 'pipe'] });

  const logs: Record<string, unknown>[] = [];
  let partial = '';
  let stderr = '';
  const waiters = new Set<() => void>();
  proc.stdout.on('data', (chunk: Buffer) => {
    partial += chunk.toString('utf8');
    let nl: number;
    while ((nl = partial.indexOf('\n')) !== -1) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        logs.push({ unparsed: line });
      }
    }
    waiters.forEach((w) => w());
  });
  proc.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('exit', (code, signal) => (waiters.forEach((w) => w()), resolve({ code, signal }))),
  );

  /** Resolves once `count` log lines match; rejects if the process exits first or after timeoutMs. */
  const waitForLogs = (what: string, match: (l: Record<string, unknown>) => boolean, count = 1, timeoutMs = 15_000) =>
    new Promise<Record<string, unknown>[]>((resolve, reject) => {
      const check = () => {
        const found = logs.filter(match);
        if (found.length >= count) return done(), resolve(found);
        if (proc.exitCode !== null || proc.signalCode !== null) return done(), reject(new Error(`smarthost exited before ${what}; stderr: ${stderr}; log: ${JSON.stringify(logs)}`));
      };
      const timer = setTimeout(() => (done(), reject(new Error(`timed out waiting for ${what}; stderr: ${stderr}`))), timeoutMs);
      const done = () => (clearTimeout(timer), waiters.delete(check));
      waiters.add(check);
      check();
    });

  try {
    const listening = await waitForLogs('both listeners', (l) => l.event === 'listening', 2);
    const relay = listening.find((l) => l.listener === 'relay');
    assert.ok(relay, 'the relay listener logged "listening"');
    const started = logs.find((l) => l.event === 'starting');
    assert.equal(started?.config, configFile, 'the daemon read the config it was given');

    const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port as number, secure: false, ignoreTLS: true });
    const raw = 'Subject: packaging check\r\nFrom: scanner@printer.test\r\nMessage-ID: <packaging@printer.test>\r\n\r\nhello from the packaged build\r\n';
    const info = await client.sendMail({ envelope: { from: 'scanner@printer.test', to: ['alice@example.test'] }, raw });
    client.close();
    const queueId = /queued as ([0-9A-Z]+)$/.exec(info.response)?.[1];
    assert.ok(queueId, `250 with a queue ID, got ${info.response}`);

    const [delivery] = await waitForLogs('the delivery', (l) => l.event === 'delivery' && l.queueId === queueId);
    assert.equal(delivery!.result, 'delivered', JSON.stringify(delivery));
    const outbox = how.outbox ?? join(dir, 'outbox');
    const files = (await readdir(outbox)).filter((f) => f.endsWith('.eml'));
    assert.equal(files.length, 1, `one .eml in the outbox, found ${files.join(', ')}`);
    assert.match(await readFile(join(outbox, files[0]!), 'utf8'), /hello from the packaged build/);

    await how.whileRunning?.(config);

    proc.kill('SIGTERM');
    const end = await exited;
    assert.deepEqual(end, { code: 0, signal: null }, `clean exit on SIGTERM; stderr: ${stderr}`);
    assert.ok(logs.some((l) => l.event === 'stopped'), 'logged "stopped"');
    return { queueId, logs };
  } finally {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await exited;
    }
  }
}
