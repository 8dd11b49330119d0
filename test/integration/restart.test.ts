/**
 * The queue survives the process: a clean SIGTERM with mail still queued, a SIGKILL right after the
 * last 250, and a start-up over a spool with leftovers and damaged files.
 */
import assert from 'node:assert/strict';
import { spawn as spawnProcess } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import nodemailer from 'nodemailer';
import { PassThrough } from 'node:stream';
import { parseConfig } from '../../src/config/load.js';
import { Daemon } from '../../src/daemon.js';
import { createLogger } from '../../src/log.js';
import { newQueueId } from '../../src/spool/queue-id.js';
import { createRecord, serializeRecord } from '../../src/spool/record.js';
import { stringify } from 'yaml';
import { CLI, spawnDaemon, startInProcess, tempDir, testConfig, type ChildDaemon } from '../helpers/daemon.js';
import { freePort } from '../helpers/net.js';
import { startSink, type Sink, type SinkBehaviour } from '../helpers/sink.js';
import { writeQueuedMessage } from '../helpers/spool.js';

type Log = Record<string, unknown>;

const SHORT_RETRY = { initialDelay: '200ms', maxDelay: '1s' };

function smtpUpstream(port: number): Record<string, unknown> {
  return { sink: { type: 'smtp', host: '127.0.0.1', port, security: 'none' } };
}

function relayPort(config: Record<string, unknown>): number {
  const listeners = config.listeners as { name: string; port: number }[];
  return listeners.find((l) => l.name === 'relay')!.port;
}

/** The child's log lines so far (a trailing partial line is left out). */
function childLogs(child: ChildDaemon): Log[] {
  return child
    .stdout()
    .split('\n')
    .flatMap((line) => {
      try {
        return [JSON.parse(line) as Log];
      } catch {
        return [];
      }
    });
}

/** Resolves once the child's logs satisfy `done`; event-driven on its stdout. */
function waitForLogs(child: ChildDaemon, done: (logs: Log[]) => boolean, what: string, timeoutMs = 15_000): Promise<Log[]> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const logs = childLogs(child);
      if (done(logs)) return finish(), resolve(logs);
      if (child.proc.exitCode !== null || child.proc.signalCode !== null) return finish(), reject(new Error(`daemon exited before ${what}: ${child.stderr()}`));
    };
    const timer = setTimeout(() => (finish(), reject(new Error(`timed out waiting for ${what}; stderr: ${child.stderr()}`))), timeoutMs);
    const finish = () => (clearTimeout(timer), child.proc.stdout!.off('data', check), child.proc.off('exit', check));
    child.proc.stdout!.on('data', check);
    child.proc.on('exit', check);
    check();
  });
}

async function spawn(t: TestContext, config: Record<string, unknown>, dir: string): Promise<ChildDaemon> {
  const child = await spawnDaemon(config, dir);
  t.after(async () => {
    if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGKILL');
    await child.exited;
  });
  return child;
}

async function sinkFor(t: TestContext, options: Parameters<typeof startSink>[0] = {}): Promise<Sink> {
  const sink = await startSink(options);
  t.after(() => sink.close());
  return sink;
}

function rawMessage(messageId: string): string {
  return `From: app@origin.test\r\nTo: user@dest.test\r\nSubject: ${messageId}\r\nMessage-ID: ${messageId}\r\n\r\nbody of ${messageId}\r\n`;
}

/** Waits until the sink has seen every one of `ids`, however many other or duplicate messages arrive. */
async function waitForIds(sink: Sink, ids: readonly string[], timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const missing = () => ids.filter((id) => !sink.messages.some((m) => m.messageId === id));
  while (missing().length > 0) {
    const left = deadline - Date.now();
    if (left <= 0) assert.fail(`never arrived: ${missing().join(', ')}`);
    await sink.waitForMessages(sink.messages.length + 1, left).catch(() => undefined);
  }
}

const deferredIds = (logs: Log[]) => new Set(logs.filter((l) => l.event === 'delivery' && l.result === 'deferred').map((l) => l.queueId));

test('restart with a non-empty queue: SIGTERM keeps deferred mail, the next start delivers all of it', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const deadPort = await freePort();
  const config = await testConfig({ dir: dir.path, upstreams: smtpUpstream(deadPort), retry: SHORT_RETRY });
  const first = await spawn(t, config, dir.path);

  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relayPort(config), secure: false, ignoreTLS: true });
  const ids = [1, 2, 3, 4, 5].map((n) => `<restart-${n}@origin.test>`);
  for (const id of ids) {
    const info = await client.sendMail({ envelope: { from: 'app@origin.test', to: ['user@dest.test'] }, raw: rawMessage(id) });
    assert.match(info.response, /^250 /);
  }
  client.close();
  await waitForLogs(first, (logs) => deferredIds(logs).size === 5, 'five deferred messages');

  first.proc.kill('SIGTERM');
  const exit = await first.exited;
  assert.deepEqual(exit, { code: 0, signal: null }, `stderr: ${first.stderr()}`);
  const stopped = childLogs(first).find((l) => l.event === 'stopped');
  assert.ok(stopped, 'the log ends with event "stopped"');
  assert.equal(stopped.queued, 5);
  assert.equal(childLogs(first).filter((l) => l.event === 'delivery' && l.result !== 'deferred').length, 0, 'nothing was delivered or bounced');

  const sink = await sinkFor(t);
  const second = await spawn(t, await testConfig({ dir: dir.path, upstreams: smtpUpstream(sink.port), retry: SHORT_RETRY }), dir.path);
  const recovered = childLogs(second).find((l) => l.event === 'spool.recovered');
  assert.equal(recovered?.messages, 5);
  await sink.waitForMessages(5);
  assert.deepEqual(sink.messages.map((m) => m.messageId).sort(), [...ids].sort());
  await waitForLogs(second, (logs) => logs.filter((l) => l.event === 'queue.removed').length === 5, 'five finished messages');
  assert.deepEqual(await readdir(join(dir.path, 'spool', 'queue')), []);
  second.proc.kill('SIGTERM');
  assert.deepEqual(await second.exited, { code: 0, signal: null });
});

test('crash: every message acknowledged with 250 before SIGKILL is delivered after the restart', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  let behaviour: SinkBehaviour = 'tempfail';
  const sink = await sinkFor(t, { recipientBehaviour: () => behaviour });
  const config = await testConfig({ dir: dir.path, upstreams: smtpUpstream(sink.port), retry: SHORT_RETRY });
  const first = await spawn(t, config, dir.path);

  const CLIENTS = 4;
  const PER_CLIENT = 5;
  const acknowledged: string[] = [];
  const refused: string[] = [];
  let settled = 0;
  // SIGKILL from inside the callback that saw the last reply: no event-loop turn in between.
  const settle = () => {
    if (++settled === CLIENTS * PER_CLIENT) first.proc.kill('SIGKILL');
  };
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, c) => {
      const client = nodemailer.createTransport({ host: '127.0.0.1', port: relayPort(config), secure: false, ignoreTLS: true });
      for (let n = 0; n < PER_CLIENT; n++) {
        const id = `<crash-${c}-${n}@origin.test>`;
        await client
          .sendMail({ envelope: { from: 'app@origin.test', to: [`user${c}@dest.test`] }, raw: rawMessage(id) })
          .then(
            (info) => (/^250 /.test(info.response) ? acknowledged.push(id) : refused.push(`${id}: ${info.response}`), settle()),
            (err: Error) => (refused.push(`${id}: ${err.message}`), settle()),
          );
      }
      client.close();
    }),
  );
  const exit = await first.exited;
  assert.equal(exit.signal, 'SIGKILL');
  assert.deepEqual(refused, [], 'the relay acknowledged every message');
  assert.equal(acknowledged.length, CLIENTS * PER_CLIENT);
  assert.equal(sink.messages.length, 0, 'nothing was delivered before the crash');

  behaviour = 'accept';
  const second = await spawn(t, await testConfig({ dir: dir.path, upstreams: smtpUpstream(sink.port), retry: SHORT_RETRY }), dir.path);
  const recovered = childLogs(second).find((l) => l.event === 'spool.recovered');
  assert.ok(Number(recovered?.messages) >= acknowledged.length, `recovered ${String(recovered?.messages)} of ${acknowledged.length}`);
  await waitForIds(sink, acknowledged);

  const counts = new Map<string, number>();
  for (const m of sink.messages) counts.set(m.messageId ?? '(none)', (counts.get(m.messageId ?? '(none)') ?? 0) + 1);
  const duplicates = [...counts].filter(([, n]) => n > 1);
  t.diagnostic(`acknowledged ${acknowledged.length}, arrived ${sink.messages.length}, duplicates ${duplicates.length}${duplicates.length ? `: ${duplicates.map(([id, n]) => `${id} x${n}`).join(', ')}` : ''}`);
  for (const id of counts.keys()) assert.ok(acknowledged.includes(id), `${id} arrived but was never acknowledged`);

  second.proc.kill('SIGTERM');
  assert.deepEqual(await second.exited, { code: 0, signal: null });
});

test('start-up recovery removes leftovers, moves a damaged record to corrupt/ and keeps serving mail', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = join(dir.path, 'spool');
  const incoming = join(spool, 'incoming');
  const queue = join(spool, 'queue');
  await mkdir(incoming, { recursive: true });
  await mkdir(queue, { recursive: true });

  const body = (id: string) => `Received: from x\r\n\tby smarthost.test\r\nSubject: ${id}\r\nMessage-ID: <${id}@origin.test>\r\n\r\nbody\r\n`;
  const record = (id: string) =>
    createRecord({ id, sender: 'app@origin.test', recipients: ['user@dest.test'], receivedAt: Date.now(), client: { address: '127.0.0.1', listener: 'relay', tls: false } });

  const leftoverId = newQueueId();
  await writeFile(join(incoming, `${leftoverId}.json.update`), 'half a state file');
  // A removal cut short between its two unlinks.
  const orphanId = newQueueId();
  await writeFile(join(queue, `${orphanId}.json`), serializeRecord(record(orphanId)));
  // DATA cut short by a crash: never acknowledged.
  const unfinishedId = newQueueId();
  await writeQueuedMessage(queue, record(unfinishedId), body(unfinishedId), { complete: false });
  const brokenId = newQueueId();
  const brokenPath = await writeQueuedMessage(queue, record(brokenId), body(brokenId));
  const broken = await readFile(brokenPath, 'latin1');
  const tampered = broken.replace('"sender":"app@origin.test"', '"sender":"bad@origin.test"');
  assert.ok(tampered !== broken, 'the envelope was altered after its checksum');
  await writeFile(brokenPath, tampered, 'latin1');
  const goodId = newQueueId();
  await writeQueuedMessage(queue, record(goodId), body(goodId));
  await writeFile(join(queue, 'notes.txt'), 'not a queue file');

  const relay = await startInProcess(await testConfig({ dir: dir.path }));
  t.after(() => relay.stop());

  const corrupt = await relay.waitForLog((l) => l.event === 'spool.corrupt');
  assert.equal(corrupt.queueId, brokenId);
  assert.match(String(corrupt.reason), /checksum/);
  assert.equal(relay.logs().filter((l) => l.event === 'spool.corrupt').length, 1, 'only the damaged record is reported');
  assert.deepEqual(await readdir(join(spool, 'corrupt')), [`${brokenId}.msg`]);
  assert.deepEqual(await readdir(incoming), [], 'incoming/ is emptied');
  const cleaned = relay.logs().filter((l) => l.event === 'spool.cleaned').map((l) => l.files);
  assert.deepEqual(cleaned, [2, 1], 'the leftover and the orphan state file when listed, the unfinished message when read');
  assert.equal(relay.logs().find((l) => l.event === 'spool.recovered')?.messages, 1);

  // The intact record is delivered; the damaged one never is.
  await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === goodId && l.result === 'delivered');
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === goodId);

  // And the daemon serves new mail.
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  const info = await client.sendMail({ envelope: { from: 'app@origin.test', to: ['user@dest.test'] }, raw: rawMessage('<after-recovery@origin.test>') });
  client.close();
  const newId = /queued as ([0-9A-Z]{22})$/.exec(info.response)?.[1];
  assert.ok(newId, info.response);
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === newId);

  const outbox = (await readdir(join(dir.path, 'outbox'))).sort();
  assert.deepEqual(
    outbox.map((f) => f.slice(0, 22)),
    [goodId, newId].sort(),
    'exactly the intact and the new message were delivered',
  );
  assert.deepEqual((await readdir(queue)).sort(), ['notes.txt'], 'files that are not queue files are left alone');
});

/** Resolves with the exit, or rejects if the process is still running after timeoutMs. */
function exitWithin<T>(exited: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: still running after ${timeoutMs} ms`)), timeoutMs)));
  return Promise.race([exited, late]).finally(() => clearTimeout(timer));
}

test('SIGTERM with a delivery stuck at a silent upstream exits after shutdownTimeout and keeps the message queued', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  // Accepts TCP connections and never sends a greeting: the delivery hangs until the upstream timeout (2m).
  const held: net.Socket[] = [];
  const silent = net.createServer((socket) => held.push(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.after(() => (held.forEach((s) => s.destroy()), new Promise((resolve) => silent.close(resolve))));
  const connected = new Promise<void>((resolve) => silent.once('connection', () => resolve()));

  const config = await testConfig({ dir: dir.path, upstreams: smtpUpstream((silent.address() as net.AddressInfo).port) });
  (config.delivery as Record<string, unknown>).shutdownTimeout = '500ms';
  const child = await spawn(t, config, dir.path);
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relayPort(config), secure: false, ignoreTLS: true });
  const info = await client.sendMail({ envelope: { from: 'app@origin.test', to: ['user@dest.test'] }, raw: rawMessage('<stuck-1@origin.test>') });
  client.close();
  const queueId = /queued as ([0-9A-Z]{22})$/.exec(info.response)?.[1];
  assert.ok(queueId, info.response);
  await connected;

  child.proc.kill('SIGTERM');
  const exit = await exitWithin(child.exited, 10_000, 'daemon after SIGTERM');
  assert.deepEqual(exit, { code: 0, signal: null }, `stderr: ${child.stderr()}`);
  const stopped = childLogs(child).find((l) => l.event === 'stopped');
  assert.equal(stopped?.deliveriesCutShort, true);
  assert.equal(stopped?.queued, 1);
  assert.deepEqual((await readdir(join(dir.path, 'spool', 'queue'))).sort(), [`${queueId}.json`, `${queueId}.msg`], 'the message and the state of its cut-short attempt');
});

test('a start that fails to bind a listener exits at once with status 1 and delivers nothing from the recovered queue', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const sink = await sinkFor(t);
  const queue = join(dir.path, 'spool', 'queue');
  await mkdir(queue, { recursive: true });
  const id = newQueueId();
  const record = createRecord({ id, sender: 'app@origin.test', recipients: ['user@dest.test'], receivedAt: Date.now(), client: { address: '127.0.0.1', listener: 'relay', tls: false } });
  await writeQueuedMessage(queue, record, rawMessage('<queued-1@origin.test>'));

  const config = await testConfig({ dir: dir.path, upstreams: smtpUpstream(sink.port) });
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(relayPort(config), '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => taken.close(resolve)));

  const file = join(dir.path, 'config.yaml');
  await writeFile(file, stringify(config));
  const proc = spawnProcess(process.execPath, [CLI, 'start', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  proc.stdout.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  t.after(() => (proc.exitCode === null && proc.signalCode === null ? proc.kill('SIGKILL') : undefined));

  const exit = await exitWithin(exited, 10_000, 'daemon that could not listen');
  assert.deepEqual(exit, { code: 1, signal: null });
  assert.match(stderr, /listener relay: cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
  assert.equal(sink.messages.length, 0, 'a failed start delivers nothing');
  assert.deepEqual(await readdir(queue), [`${id}.msg`], 'the message stays queued for the next start');
});

test('in process: a failed start hands no recovered message to delivery; the next good start delivers it once', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const sink = await sinkFor(t);
  const queue = join(dir.path, 'spool', 'queue');
  await mkdir(queue, { recursive: true });
  const id = newQueueId();
  const record = createRecord({ id, sender: 'app@origin.test', recipients: ['user@dest.test'], receivedAt: Date.now(), client: { address: '127.0.0.1', listener: 'relay', tls: false } });
  await writeQueuedMessage(queue, record, rawMessage('<queued-2@origin.test>'));

  const config = await testConfig({ dir: dir.path, upstreams: smtpUpstream(sink.port) });
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(relayPort(config), '127.0.0.1', resolve));
  const failedLog = new PassThrough();
  let failedOutput = '';
  failedLog.on('data', (c: Buffer) => (failedOutput += c.toString()));
  await assert.rejects(Daemon.start(parseConfig(stringify(config)), createLogger('debug', failedLog)), /EADDRINUSE/);
  await new Promise((resolve) => taken.close(resolve));

  const relay = await startInProcess(config);
  t.after(() => relay.stop());
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === id);
  assert.equal(sink.messages.length, 1, 'delivered exactly once');
  assert.doesNotMatch(failedOutput, /"event":"delivery"/, 'the failed start attempted no delivery');
});

test('SIGTERM during start-up, while a large queue is being recovered, still ends in a graceful stop with status 0', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const queue = join(dir.path, 'spool', 'queue');
  await mkdir(queue, { recursive: true });
  const COUNT = 500;
  const later = Date.now() + 3_600_000; // not due: this test is about start-up only
  for (let i = 0; i < COUNT; i += 100) {
    await Promise.all(
      Array.from({ length: 100 }, async () => {
        const id = newQueueId();
        const record = createRecord({ id, sender: 'app@origin.test', recipients: ['user@dest.test'], receivedAt: later, client: { address: '127.0.0.1', listener: 'relay', tls: false } });
        await writeQueuedMessage(queue, record, rawMessage(`<bulk-${i}@origin.test>`));
      }),
    );
  }
  const file = join(dir.path, 'config.yaml');
  await writeFile(file, stringify(await testConfig({ dir: dir.path })));
  const proc = spawnProcess(process.execPath, [CLI, 'start', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => (proc.exitCode === null && proc.signalCode === null ? proc.kill('SIGKILL') : undefined));
  let stdout = '';
  let stderr = '';
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  // The "starting" line is logged once the signal handlers are installed.
  proc.stdout.on('data', (c: Buffer) => {
    stdout += c.toString();
    if (!proc.killed && /"event":"starting"/.test(stdout)) proc.kill('SIGTERM');
  });
  const exit = await exitWithin(new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal }))), 15_000, 'daemon');
  assert.deepEqual(exit, { code: 0, signal: null }, `stderr: ${stderr} stdout: ${stdout}`);
  const events = stdout.split('\n').flatMap((l) => (l ? [(JSON.parse(l) as Log).event] : []));
  assert.ok(events.indexOf('signal') >= 0 && events.indexOf('signal') < events.indexOf('spool.recovered'), `signal arrived during recovery: ${events.join(',')}`);
  assert.deepEqual(events.slice(-2), ['stopping', 'stopped']);
  assert.equal((await readdir(queue)).length, COUNT, 'the queue is untouched');
});

test('SIGTERM while a client holds a transaction open: no delivery starts during the drain, and a retry that falls due then stays queued', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  let attempts = 0;
  const sink = await sinkFor(t, { dataBehaviour: () => (++attempts === 1 ? 'tempfail' : 'accept') });
  const config = await testConfig({ dir: dir.path, upstreams: smtpUpstream(sink.port), retry: { initialDelay: '300ms', maxDelay: '300ms' } });
  (config.delivery as Record<string, unknown>).shutdownTimeout = '2s';
  const child = await spawn(t, config, dir.path);
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relayPort(config), secure: false, ignoreTLS: true });
  const info = await client.sendMail({ envelope: { from: 'app@origin.test', to: ['user@dest.test'] }, raw: rawMessage('<drain-1@origin.test>') });
  client.close();
  const queueId = /queued as ([0-9A-Z]{22})$/.exec(info.response)?.[1];
  await child.waitForOutput(new RegExp(`"event":"delivery","queueId":"${queueId}".*"result":"deferred"`));

  // A client that sent MAIL FROM and then nothing: the listener lets its transaction finish until
  // shutdownTimeout, and the retry (due 300 ms after the first attempt) falls due meanwhile.
  const open = net.connect(relayPort(config), '127.0.0.1');
  t.after(() => open.destroy());
  open.on('error', () => {});
  let received = '';
  const replies = (n: number) => new Promise<void>((resolve) => open.on('data', (c: Buffer) => ((received += c.toString()), (received.match(/^\d{3} /gm) ?? []).length >= n && resolve())));
  await replies(1);
  open.write('EHLO app.test\r\nMAIL FROM:<app@origin.test>\r\n');
  await replies(3);
  assert.match(received, /^250 2\.1\.0 Accepted/m, received);
  child.proc.kill('SIGTERM');
  const exit = await exitWithin(child.exited, 10_000, 'daemon after SIGTERM');
  assert.deepEqual(exit, { code: 0, signal: null }, `stderr: ${child.stderr()}`);
  const logs = childLogs(child);
  const stopping = logs.findIndex((l) => l.event === 'stopping');
  assert.deepEqual(logs.slice(stopping).filter((l) => l.event === 'routed' || l.event === 'delivery'), [], 'nothing is attempted after stopping');
  assert.equal(attempts, 1, 'the upstream saw the first attempt only');
  assert.equal(sink.messages.length, 0);
  assert.equal(logs.find((l) => l.event === 'stopped')?.queued, 1, 'the message waits for the next start');
});
