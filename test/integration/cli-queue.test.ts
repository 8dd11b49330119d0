/**
 * The admin CLI against a running daemon (the built CLI in a child process): queue list / show / hold /
 * release / retry / bounce / delete, send-test, status, log-level, and plain-worded failures.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import nodemailer from 'nodemailer';
import { stringify } from 'yaml';
import { CLI, spawnDaemon, tempDir, testConfig } from '../helpers/daemon.js';
import { freePort } from '../helpers/net.js';
import { run } from '../helpers/packaging.js';
import { startSink, type SinkBehaviour } from '../helpers/sink.js';

async function send(port: number, to: string[], subject: string): Promise<string> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  try {
    const info = await client.sendMail({ envelope: { from: 'app@origin.test', to }, raw: `From: app@origin.test\r\nTo: x@dest.test\r\nSubject: ${subject}\r\n\r\nbody\r\n` });
    return /queued as ([0-9A-Z]{22})$/.exec(info.response)![1]!;
  } finally {
    client.close();
  }
}

test('queue list, show, hold, release, retry, bounce, delete, send-test and status act on the running daemon', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const sink = await startSink({ recipientBehaviour: new Map<string, SinkBehaviour>([['later@dest.test', 'tempfail']]) });
  t.after(() => sink.close());
  const config = await testConfig({
    dir: dir.path,
    upstreams: { up: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' } },
    retry: { initialDelay: '1h' },
    extra: { routing: { default: 'up', routes: [{ name: 'tests', match: { recipient: '@nowhere.test' }, upstream: 'up' }] } },
  });
  const configFile = join(dir.path, 'cli.yaml');
  await writeFile(configFile, stringify(config));
  const daemon = await spawnDaemon(config, dir.path);
  t.after(async () => {
    daemon.proc.kill('SIGTERM');
    await daemon.exited;
  });
  const cli = (...args: string[]) => run(process.execPath, [CLI, '--config', configFile, ...args], { timeoutMs: 20_000 });
  const relayPort = (config.listeners as { port: number }[])[0]!.port;

  const id = await send(relayPort, ['later@dest.test'], 'stuck one');
  await daemon.waitForOutput(new RegExp(`"event":"delivery"[^\\n]*"queueId":"${id}"[^\\n]*"result":"deferred"`));

  let r = await cli('queue', 'list');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^${id}\\s+\\d+\\s+\\S+\\s+deferred\\s+app@origin\\.test$`, 'm'));
  assert.match(r.stdout, /^ {4}\(451 4\.2\.0 [^\n]*\)\n {4}later@dest\.test$/m);
  r = await cli('queue', 'list', '--json');
  const listed = JSON.parse(r.stdout) as { id: string; state: string; recipients: string[] }[];
  assert.deepEqual(listed.map((m) => [m.id, m.state, m.recipients]), [[id, 'deferred', ['later@dest.test']]]);

  r = await cli('queue', 'show', id);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /later@dest\.test: pending, 1 attempt via up, next \S+\n {4}last reply: 451 4\.2\.0 /);
  assert.match(r.stdout, /^Subject: stuck one$/m);

  r = await cli('queue', 'hold', id);
  assert.deepEqual([r.code, r.stdout], [0, `${id}: put on hold\n`]);
  assert.match((await cli('queue', 'list')).stdout, new RegExp(`^${id}\\s+\\d+\\s+\\S+\\s+held\\s`, 'm'));
  // Held: retry keeps it held and nothing is attempted.
  assert.equal((await cli('queue', 'retry', id)).code, 0);
  assert.match((await cli('queue', 'list')).stdout, / held /);
  r = await cli('queue', 'release', id);
  assert.deepEqual([r.code, r.stdout], [0, `${id}: released\n`]);
  r = await cli('queue', 'retry', '--all');
  assert.deepEqual([r.code, r.stdout], [0, '1 message scheduled for delivery now\n']);
  await daemon.waitForOutput(new RegExp(`"event":"delivery"[^\\n]*"queueId":"${id}"[^\\n]*"result":"deferred","reply":"[^"]*","attempt":2`));

  r = await cli('queue', 'bounce', id);
  assert.deepEqual([r.code, r.stdout], [0, `${id}: bounced; the sender gets a DSN\n`]);
  const [dsn] = await sink.waitForMessages(1);
  assert.deepEqual(dsn!.recipients, ['app@origin.test']);
  assert.match(dsn!.raw.toString(), /Diagnostic-Code: smtp; 554 5\.0\.0 bounced by the administrator/);
  r = await cli('queue', 'show', id);
  assert.deepEqual([r.code, r.stderr], [1, `smarthost queue show: no message ${id} in the queue\n`]);

  const doomed = await send(relayPort, ['later@dest.test'], 'to delete');
  await daemon.waitForOutput(new RegExp(`"event":"delivery"[^\\n]*"queueId":"${doomed}"[^\\n]*"result":"deferred"`));
  r = await cli('queue', 'delete', doomed);
  assert.deepEqual([r.code, r.stdout], [0, `${doomed}: deleted\n`]);
  assert.equal((await cli('queue', 'list')).stdout, 'the queue is empty\n');

  r = await cli('send-test', '--to', 'check@dest.test');
  assert.equal(r.code, 0, r.stderr);
  const testId = /queued as ([0-9A-Z]{22}): from postmaster@smarthost\.test to check@dest\.test/.exec(r.stdout)?.[1];
  assert.ok(testId, r.stdout);
  const [, probe] = await sink.waitForMessages(2);
  assert.deepEqual([probe!.sender, probe!.recipients], ['postmaster@smarthost.test', ['check@dest.test']]);
  assert.match(probe!.raw.toString(), /^Subject: smarthost test message\r$/m);
  r = await cli('send-test', '--to', 'check@dest.test', '--route', 'nosuch');
  assert.deepEqual([r.code, r.stderr], [1, 'smarthost send-test: no route named "nosuch"; routes: tests\n']);
  r = await cli('send-test', '--to', 'routed@nowhere.test', '--route', 'tests');
  assert.equal(r.code, 0, r.stderr);
  await daemon.waitForOutput(/"event":"routed"[^\n]*"via":"routes\[0\] tests \(forced\)"/);

  r = await cli('status');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /: ready\n/);
  assert.match(r.stdout, /^ {2}relay\s+relay\s+127\.0\.0\.1:\d+ {2}listening$/m);
  assert.match(r.stdout, /^ {2}up\s+smtp\s+up$/m);
  assert.match(r.stdout, /^Queue: \d+ messages? /m);

  r = await cli('log-level', 'warn');
  assert.deepEqual([r.code, r.stdout], [0, 'log level changed from debug to warn\n']);
  assert.equal((await cli('log-level')).stdout, 'warn\n');

  // Wrong command lines exit 2 with the usage; --help exits 0.
  assert.equal((await cli('queue', 'hold', '--all')).code, 2);
  assert.equal((await cli('queue', 'frobnicate')).code, 2);
  assert.equal((await cli('queue', '--help')).code, 0);
  assert.equal((await cli('send-test')).code, 2);
});

test('a CLI command with no daemon behind the admin port says so in plain words and exits 1', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const config = await testConfig({ dir: dir.path });
  const port = await freePort();
  (config.admin as Record<string, unknown>).port = port;
  const configFile = join(dir.path, 'cli.yaml');
  await writeFile(configFile, stringify(config));
  const r = await run(process.execPath, [CLI, '--config', configFile, 'queue', 'list']);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, `smarthost queue list: cannot reach the smarthost admin API at 127.0.0.1:${port}: connection refused — is the daemon running?\n`);
  const s = await run(process.execPath, [CLI, '--config', configFile, 'status']);
  assert.equal(s.code, 1);
  assert.match(s.stderr, /^smarthost status: cannot reach the smarthost admin API/);
});
