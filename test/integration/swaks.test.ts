/**
 * A second, independent SMTP client (swaks) against both listeners, delivering to the default outbox.
 * Skipped when swaks is not installed.
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { hashPassword } from '../../src/inbound/passwords.js';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';

const SWAKS = spawnSync('swaks', ['--version'], { stdio: 'ignore' }).status === 0;
const skip = SWAKS ? false : 'swaks is not installed';

let relay: InProcessDaemon;
let dir: Awaited<ReturnType<typeof tempDir>>;

before(async () => {
  if (!SWAKS) return;
  dir = await tempDir();
  relay = await startInProcess(
    await testConfig({ dir: dir.path, users: [{ name: 'scanner', passwordHash: await hashPassword('s3cret pass') }] }),
  );
});

after(async () => {
  await relay?.stop();
  await dir?.remove();
});

/** Runs swaks asynchronously (the daemon shares this event loop); resolves with its exit code and transcript. */
function swaks(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('swaks', ['--server', '127.0.0.1', '--timeout', '10', ...args], (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function queueIdOf(transcript: string): string {
  const m = /<-\s+250 2\.0\.0 Ok: queued as ([0-9A-Z]{22})/.exec(transcript);
  assert.ok(m, `no queue ID in swaks transcript:\n${transcript}`);
  return m[1]!;
}

/** The message swaks sent, rebuilt from its transcript: the "->" lines between the 354 reply and the final dot. */
function sentData(transcript: string): string {
  const lines = transcript.split('\n').map((l) => l.replace(/\r$/, ''));
  const start = lines.findIndex((l) => /^<-\s+354 /.test(l));
  const end = lines.findIndex((l, i) => i > start && /^ -> \.$/.test(l));
  assert.ok(start >= 0 && end > start, `no DATA section in:\n${transcript}`);
  return lines.slice(start + 1, end).map((l) => l.replace(/^ -> /, '') + '\r\n').join('');
}

/** The outbox file written for a queue ID, once delivery reported it. */
async function outboxFile(queueId: string): Promise<string> {
  await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === queueId && l.result === 'delivered');
  const files = (await readdir(join(dir.path, 'outbox'))).filter((f) => f.startsWith(`${queueId}-`) && f.endsWith('.eml'));
  assert.equal(files.length, 1, `one outbox file for ${queueId}`);
  return readFile(join(dir.path, 'outbox', files[0]!), 'utf8');
}

test('swaks relays from an allowed network into the outbox with trace headers, our Received header and the body', { skip }, async () => {
  const result = await swaks([
    '--port', String(relay.port('relay')),
    '--helo', 'printer.lan',
    '--from', 'scanner@origin.test',
    '--to', 'alice@dest.test',
    '--header', 'Subject: swaks relay test',
    '--header', 'Message-Id: <swaks-relay-1@origin.test>',
    '--body', 'scanned page attached\nsecond line',
  ]);
  assert.equal(result.code, 0, `swaks failed:\n${result.stdout}${result.stderr}`);
  const queueId = queueIdOf(result.stdout);

  const eml = await outboxFile(queueId);
  const receivedEnd = eml.indexOf('\r\n', eml.indexOf('\tfor <')) + 2;
  assert.equal(eml.slice(receivedEnd), sentData(result.stdout), 'the message follows our Received header exactly as swaks sent it');
  const lines = eml.split('\r\n');
  assert.equal(lines[0], 'Return-Path: <scanner@origin.test>');
  assert.equal(lines[1], 'Delivered-To: alice@dest.test');
  assert.equal(lines[2], 'Received: from printer.lan (unknown [127.0.0.1])');
  assert.equal(lines[3], `\tby smarthost.test (smarthost) with ESMTP id ${queueId}`);
  assert.match(lines[4]!, /^\tfor <alice@dest\.test>; \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$/);
  assert.match(eml, /\r\nSubject: swaks relay test\r\n/);
  assert.match(eml, /\r\nMessage-Id: <swaks-relay-1@origin\.test>\r\n/);
  assert.match(eml, /\r\n\r\nscanned page attached\r\nsecond line\r\n/, 'the body');
  assert.equal(eml.match(/^Received: /gm)?.length, 1, 'only our Received header');
});

test('swaks authenticates with AUTH PLAIN on the submission listener and the message is delivered', { skip }, async () => {
  const result = await swaks([
    '--port', String(relay.port('submission')),
    '--helo', 'laptop.lan',
    '--auth', 'PLAIN',
    '--auth-user', 'scanner',
    '--auth-password', 's3cret pass',
    '--from', 'scanner@origin.test',
    '--to', 'bob@dest.test',
    '--header', 'Subject: swaks submission test',
    '--body', 'sent with credentials',
  ]);
  assert.equal(result.code, 0, `swaks failed:\n${result.stdout}${result.stderr}`);
  assert.match(result.stdout, /<-\s+235 /, 'AUTH PLAIN was accepted');
  const queueId = queueIdOf(result.stdout);
  const received = await relay.waitForLog((l) => l.event === 'received' && l.queueId === queueId);
  assert.equal(received.user, 'scanner');
  assert.equal(received.listener, 'submission');

  const eml = await outboxFile(queueId);
  assert.match(eml, /^Return-Path: <scanner@origin\.test>\r\nDelivered-To: bob@dest\.test\r\nReceived: from laptop\.lan /);
  assert.match(eml, new RegExp(`\\r\\n\\tby smarthost\\.test \\(smarthost\\) with ESMTPA id ${queueId}\\r\\n`));
  assert.match(eml, /\r\n\r\nsent with credentials\r\n/);
  assert.ok(eml.endsWith(sentData(result.stdout)), 'the message as swaks sent it');
});

test('swaks with a wrong password is refused at AUTH and nothing is queued', { skip }, async () => {
  const before = relay.logs().filter((l) => l.event === 'received').length;
  const result = await swaks([
    '--port', String(relay.port('submission')),
    '--auth', 'PLAIN',
    '--auth-user', 'scanner',
    '--auth-password', 'not the password',
    '--from', 'scanner@origin.test',
    '--to', 'bob@dest.test',
  ]);
  assert.notEqual(result.code, 0);
  assert.match(result.stdout, /<~?\*\*\s+535 5\.7\.8 /, `transcript:\n${result.stdout}`);
  await relay.waitForLog((l) => l.event === 'smtp.auth_failed' && l.user === 'scanner');
  assert.equal(relay.logs().filter((l) => l.event === 'received').length, before, 'no message was accepted');
});

test('swaks without AUTH on the submission listener is refused at MAIL FROM', { skip }, async () => {
  const result = await swaks(['--port', String(relay.port('submission')), '--from', 'scanner@origin.test', '--to', 'bob@dest.test']);
  assert.equal(result.code, 23, `swaks exit code for a refused MAIL FROM:\n${result.stdout}`);
  assert.match(result.stdout, /<\*\*\s+530 5\.7\.0 Authentication required/);
});
