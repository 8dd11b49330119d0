/**
 * Reload (SIGHUP and `smarthost reload`) while a client is connected: a valid new config takes effect (a new
 * user can log in, a new route carries mail) and the connection stays up; an invalid one is refused with its
 * error and the old config stays in force; an upstream change is reported as needing a restart; a certificate
 * that does not match its key is refused and the old certificate keeps serving STARTTLS.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFile, readdir, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import nodemailer from 'nodemailer';
import { stringify } from 'yaml';
import { hashPassword } from '../../src/inbound/passwords.js';
import { CLI, spawnDaemon, tempDir, testConfig } from '../helpers/daemon.js';
import { freePort } from '../helpers/net.js';
import { run } from '../helpers/packaging.js';
import { makeSelfSignedCertificate } from '../helpers/tls.js';

/** One SMTP connection kept open across the reloads: each command answers its complete reply. */
async function openSession(port: number): Promise<{ command(line: string): Promise<string>; socket: Socket }> {
  const socket = connect(port, '127.0.0.1');
  let buffer = '';
  let waiter: (() => void) | undefined;
  socket.on('data', (c: Buffer) => ((buffer += c.toString('latin1')), waiter?.()));
  const reply = () =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const m = /(?:^|\r\n)\d{3} [^\r\n]*\r\n/.exec(buffer);
        if (!m) return;
        const text = buffer.slice(0, m.index + m[0].length);
        buffer = buffer.slice(text.length);
        waiter = undefined;
        resolve(text);
      };
      socket.once('close', () => reject(new Error(`connection closed; got ${JSON.stringify(buffer)}`)));
      waiter = check;
      check();
    });
  await reply();
  return { socket, command: (line) => (socket.write(`${line}\r\n`), reply()) };
}

test('reload with a valid and an invalid config while a client is connected', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const upstreams = { a: { type: 'outbox', dir: join(dir.path, 'a') }, b: { type: 'outbox', dir: join(dir.path, 'b') } };
  const config = await testConfig({ dir: dir.path, upstreams, defaultUpstream: 'a' });
  const daemon = await spawnDaemon(config, dir.path);
  t.after(async () => {
    daemon.proc.kill('SIGTERM');
    await daemon.exited;
  });
  const configFile = join(dir.path, (await readdir(dir.path)).find((f) => /^config-\d+\.yaml$/.test(f))!);
  const cli = (...args: string[]) => run(process.execPath, [CLI, '--config', configFile, ...args], { timeoutMs: 20_000 });
  const [relay, submission] = (config.listeners as { port: number }[]).map((l) => l.port) as [number, number];

  const session = await openSession(relay);
  assert.match(await session.command('EHLO client.test'), /^250/);

  // Valid: a new user and a new route, through SIGHUP.
  const users = [{ name: 'scanner', passwordHash: await hashPassword('open sesame') }];
  const routes = [{ name: 'to-b', match: { recipient: '@routed.test' }, upstream: 'b' }];
  await writeFile(configFile, stringify({ ...config, users, routing: { default: 'a', routes } }));
  daemon.proc.kill('SIGHUP');
  await daemon.waitForOutput(/"event":"reload","changed":\["users","routing"\],"restartRequired":\[\]/);

  // The connected client carries on, and its mail takes the new route.
  assert.match(await session.command('MAIL FROM:<app@origin.test>'), /^250/);
  assert.match(await session.command('RCPT TO:<someone@routed.test>'), /^250/);
  assert.match(await session.command('DATA'), /^354/);
  const queued = /queued as ([0-9A-Z]{22})/.exec(await session.command('Subject: after reload\r\n\r\nbody\r\n.'))?.[1];
  assert.ok(queued);
  await daemon.waitForOutput(new RegExp(`"event":"routed","queueId":"${queued}","via":"routes\\[0\\] to-b","upstream":"b"`));
  // The new user can log in.
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: submission, secure: false, ignoreTLS: true, auth: { user: 'scanner', pass: 'open sesame' } });
  t.after(() => client.close());
  const info = await client.sendMail({ envelope: { from: 'scanner@origin.test', to: ['x@dest.test'] }, raw: 'Subject: as scanner\r\n\r\nbody\r\n' });
  assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);

  // Invalid: refused with the problem named; the old config stays in force.
  await writeFile(configFile, stringify({ ...config, users, routing: { default: 'a', routes }, delivery: { maxConcurrency: 0 } }));
  let r = await cli('reload');
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^smarthost reload: configuration not reloaded, the old one stays in force: invalid configuration in .*\n {2}delivery\.maxConcurrency: /);
  await daemon.waitForOutput(/"event":"reload.failed"/);
  assert.match(await session.command('MAIL FROM:<app@origin.test>'), /^250/, 'the connection is still up');
  assert.match(await session.command('RCPT TO:<second@routed.test>'), /^250/);
  assert.match(await session.command('DATA'), /^354/);
  const second = /queued as ([0-9A-Z]{22})/.exec(await session.command('Subject: after refusal\r\n\r\nbody\r\n.'))?.[1];
  await daemon.waitForOutput(new RegExp(`"event":"routed","queueId":"${second}","via":"routes\\[0\\] to-b","upstream":"b"`));

  // A changed upstream waits for a restart, and the reply says so; a route to an unknown upstream is refused.
  await writeFile(configFile, stringify({ ...config, users, routing: { default: 'a', routes }, upstreams: { ...upstreams, b: { type: 'outbox', dir: join(dir.path, 'b2') } } }));
  r = await cli('reload');
  assert.deepEqual([r.code, r.stdout], [0, 'configuration reloaded; nothing changed\nrestart smarthost for these changes to take effect: upstreams\n']);
  await writeFile(configFile, stringify({ ...config, users, routing: { default: 'c' }, upstreams: { ...upstreams, c: { type: 'outbox', dir: join(dir.path, 'c') } } }));
  r = await cli('reload');
  assert.equal(r.code, 1);
  assert.match(r.stderr, /routes mail to upstream c, which is not running yet: restart smarthost to add upstreams/);
  assert.match(await session.command('QUIT'), /^221/);
});

test('a user removed by a reload can no longer send from a session that authenticated before it', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const users = [{ name: 'scanner', passwordHash: await hashPassword('open sesame'), allowedSenders: ['scanner@origin.test'] }];
  const config = await testConfig({ dir: dir.path, users });
  const daemon = await spawnDaemon(config, dir.path);
  t.after(async () => {
    daemon.proc.kill('SIGTERM');
    await daemon.exited;
  });
  const configFile = join(dir.path, (await readdir(dir.path)).find((f) => /^config-\d+\.yaml$/.test(f))!);
  const submission = (config.listeners as { port: number }[])[1]!.port;
  const session = await openSession(submission);
  t.after(() => session.socket.destroy());
  assert.match(await session.command('EHLO client.test'), /^250/);
  assert.match(await session.command(`AUTH PLAIN ${Buffer.from('\0scanner\0open sesame').toString('base64')}`), /^235 /);
  assert.match(await session.command('MAIL FROM:<ceo@contoso.com>'), /^553 5\.7\.1 .*users\[0\]\.allowedSenders/, 'restricted while configured');
  assert.match(await session.command('MAIL FROM:<scanner@origin.test>'), /^250 /);
  assert.match(await session.command('RSET'), /^250 /);

  await writeFile(configFile, stringify({ ...config, users: [] }));
  daemon.proc.kill('SIGHUP');
  await daemon.waitForOutput(/"event":"reload","changed":\["users"\]/);
  // Its login went with it: neither its own address nor, with its restriction gone, any other.
  assert.match(await session.command('MAIL FROM:<scanner@origin.test>'), /^530 5\.7\.0 Authentication required: this user is no longer configured\r\n$/);
  assert.match(await session.command('MAIL FROM:<ceo@contoso.com>'), /^530 5\.7\.0 /);
  await daemon.waitForOutput(/"event":"smtp.refused".*"user":"scanner","reason":"user no longer configured"/);
});

/** Upgrades a new connection with STARTTLS; resolves with the SHA-256 fingerprint of the certificate presented. */
async function starttlsFingerprint(port: number): Promise<string> {
  const session = await openSession(port);
  assert.match(await session.command('EHLO client.test'), /^250-/);
  assert.match(await session.command('STARTTLS'), /^220 /);
  session.socket.removeAllListeners('data');
  return new Promise((resolve, reject) => {
    const secure = tlsConnect({ socket: session.socket, servername: 'localhost', rejectUnauthorized: false }, () => {
      resolve(secure.getPeerCertificate().fingerprint256);
      secure.destroy();
    });
    secure.once('error', reject);
  });
}

test('a reload with a certificate that does not match its key is refused and STARTTLS keeps the old certificate', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const [before, after] = await Promise.all([makeSelfSignedCertificate('localhost'), makeSelfSignedCertificate('localhost')]);
  const fingerprint = (c: { cert: Buffer }) => new X509Certificate(c.cert).fingerprint256;
  const certPath = join(dir.path, 'cert.pem');
  const keyPath = join(dir.path, 'key.pem');
  await Promise.all([copyFile(before.certPath, certPath), copyFile(before.keyPath, keyPath)]);
  const listener = { name: 'relay', role: 'relay', host: '127.0.0.1', port: await freePort(), networks: ['127.0.0.1/32'], tls: { cert: certPath, key: keyPath } };
  const config = await testConfig({ dir: dir.path, listeners: [listener] });
  const daemon = await spawnDaemon(config, dir.path);
  t.after(async () => {
    daemon.proc.kill('SIGTERM');
    await daemon.exited;
  });
  const configFile = join(dir.path, (await readdir(dir.path)).find((f) => /^config-\d+\.yaml$/.test(f))!);
  const reload = () => run(process.execPath, [CLI, '--config', configFile, 'reload'], { timeoutMs: 20_000 });
  const port = (config.listeners as { port: number }[])[0]!.port;
  assert.equal(await starttlsFingerprint(port), fingerprint(before));

  // A renewal caught half-way: the new certificate is in place, its key is not yet.
  await copyFile(after.certPath, certPath);
  let r = await reload();
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /configuration not reloaded, the old one stays in force: .*listeners\[0\]\.tls\.key.*key values mismatch/s);
  assert.equal(await starttlsFingerprint(port), fingerprint(before), 'the old certificate still serves STARTTLS');

  await copyFile(after.keyPath, keyPath);
  r = await reload();
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await starttlsFingerprint(port), fingerprint(after));
});
