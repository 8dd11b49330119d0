/**
 * Send limits in the built daemon: mail over a limit waits (never bounced), `smarthost limits show` reads the
 * counters the daemon saved (also after a restart), `smarthost limits reset` clears them through the admin API.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import nodemailer from 'nodemailer';
import { stringify } from 'yaml';
import { CLI, spawnDaemon, tempDir, testConfig } from '../helpers/daemon.js';
import { run } from '../helpers/packaging.js';
import { startSink } from '../helpers/sink.js';

async function send(port: number, subject: string): Promise<string> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  try {
    const info = await client.sendMail({ envelope: { from: 'app@origin.test', to: ['x@dest.test'] }, raw: `From: app@origin.test\r\nTo: x@dest.test\r\nSubject: ${subject}\r\n\r\nbody\r\n` });
    return /queued as ([0-9A-Z]{22})$/.exec(info.response)![1]!;
  } finally {
    client.close();
  }
}

test('limits: the message over 1 per hour waits for the window; limits show lists the use after a restart; limits reset clears it', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const sink = await startSink();
  t.after(() => sink.close());
  const config = await testConfig({
    dir: dir.path,
    upstreams: { up: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none', limits: { messagesPerHour: 1, perMailbox: true } } },
  });
  const configFile = join(dir.path, 'cli.yaml');
  await writeFile(configFile, stringify(config));
  const cli = (...args: string[]) => run(process.execPath, [CLI, '--config', configFile, ...args], { timeoutMs: 20_000 });
  const relayPort = (config.listeners as { port: number }[])[0]!.port;

  let daemon = await spawnDaemon(config, dir.path);
  await send(relayPort, 'first');
  await sink.waitForMessages(1);
  const second = await send(relayPort, 'second');
  await daemon.waitForOutput(new RegExp(`"event":"limit.deferred"[^\\n]*"queueId":"${second}"[^\\n]*"limit":"1 messages per hour"`));
  daemon.proc.kill('SIGTERM');
  assert.equal((await daemon.exited).code, 0);

  let r = await cli('limits', 'show');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^up\/app@origin\.test\s+messages\/hour\s+1\/1\s+\S+Z$/m);

  daemon = await spawnDaemon(config, dir.path);
  t.after(async () => {
    daemon.proc.kill('SIGTERM');
    await daemon.exited;
  });
  await daemon.waitForOutput(/"event":"admin.listening"/);
  r = await cli('limits', 'reset', 'nosuch');
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no upstream "nosuch"/);
  r = await cli('limits', 'reset', 'up');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /send limits reset for up \(1 counter cleared\)/);
  r = await cli('limits', 'show', '--json');
  assert.deepEqual((JSON.parse(r.stdout) as { limits: unknown[] }).limits, []);
  r = await cli('queue', 'retry', '--all');
  assert.equal(r.code, 0, r.stderr);
  await sink.waitForMessages(2);
  assert.equal(sink.messages.length, 2, 'the waiting message went out after the reset, not bounced');
});
