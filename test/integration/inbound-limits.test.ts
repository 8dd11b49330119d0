/**
 * Inbound rate limits over real loopback sockets (nodemailer and raw dialogs, client addresses picked with
 * localAddress in 127/8): a client over its message rate gets 450 4.7.1 at MAIL FROM while other addresses
 * carry on, and a minute later (the daemon's clock moved on, no sleeping) it may send again; the recipient
 * rate answers at RCPT TO, pipelined, without losing the recipients already accepted; an exempt network is
 * limited neither in rate nor in connections per address; a per-user limit follows the account across
 * client addresses.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import { after, before, test } from 'node:test';
import nodemailer from 'nodemailer';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { Daemon } from '../../src/daemon.js';
import { systemClock, type Clock } from '../../src/delivery/clock.js';
import { hashPassword } from '../../src/inbound/passwords.js';
import { createLogger } from '../../src/log.js';
import { tempDir, testConfig } from '../helpers/daemon.js';
import { freePort, smtpDialog, smtpReplies, smtpReplyCodes } from '../helpers/net.js';

const PASSWORD = 'correct horse battery staple';
const MESSAGE_RATE = '450 4.7.1 Too many messages from your address, try again later';

let dir: Awaited<ReturnType<typeof tempDir>>;
let daemon: Daemon;
const logs: Record<string, unknown>[] = [];
/** The daemon's clock runs this far ahead of the real one; a test moves it instead of waiting. */
let offset = 0;
const clock: Clock = { now: () => Date.now() + offset, setTimer: systemClock.setTimer };

before(async () => {
  dir = await tempDir();
  const hash = await hashPassword(PASSWORD);
  const listeners = [
    {
      name: 'relay',
      role: 'relay',
      networks: ['127.0.0.0/8'],
      maxConnectionsPerIp: 2,
      rateLimits: { perClient: { messagesPerMinute: 2, recipientsPerMinute: 4 }, exempt: ['127.0.0.50/32'] },
    },
    { name: 'submission', role: 'submission', allowInsecureAuth: true, rateLimits: { perUser: { messagesPerMinute: 2 } } },
  ];
  for (const l of listeners) Object.assign(l, { host: '127.0.0.1', port: await freePort() });
  const config = await testConfig({ dir: dir.path, listeners, users: [{ name: 'alice', passwordHash: hash }, { name: 'bob', passwordHash: hash }] });
  const parsed = parseConfig(stringify(config), 'test');
  const out = new PassThrough();
  out.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
  });
  daemon = await Daemon.start(parsed, createLogger('debug', out), clock);
});

after(async () => {
  await daemon?.stop(5000);
  await dir?.remove();
});

function port(listener: string): number {
  return daemon.listeners.find((l) => l.config.name === listener)!.port;
}

async function send(listener: string, localAddress: string, auth?: { user: string; pass: string }) {
  const transport = nodemailer.createTransport({
    host: '127.0.0.1',
    port: port(listener),
    secure: false,
    ignoreTLS: true,
    localAddress,
    ...(auth ? { auth } : {}),
  });
  try {
    return await transport.sendMail({
      envelope: { from: 'app@example.com', to: ['someone@example.net'] },
      raw: 'From: app@example.com\r\nTo: someone@example.net\r\nSubject: rate\r\n\r\nbody\r\n',
    });
  } finally {
    transport.close();
  }
}

/** Asserts that sending is refused at MAIL FROM with exactly `reply`. */
async function assertRefused(attempt: Promise<unknown>, reply: string): Promise<void> {
  await assert.rejects(attempt, (err: { responseCode?: number; response?: string; command?: string }) => {
    assert.equal(err.responseCode, 450);
    assert.equal(err.response, reply);
    assert.equal(err.command, 'MAIL FROM');
    return true;
  });
}

async function rateLimited(listener: string): Promise<number> {
  const metric = await daemon.registry.getSingleMetric('smarthost_smtp_rejections_total')!.get();
  return metric.values.find((v) => v.labels.listener === listener && v.labels.reason === 'rate_limited' && v.labels.code === '450')?.value ?? 0;
}

test('a client over its message rate gets 450 4.7.1 at MAIL FROM; other addresses carry on; a minute later it sends again', async () => {
  const limitedBefore = await rateLimited('relay');
  for (let i = 0; i < 2; i++) assert.match((await send('relay', '127.0.0.21')).response, /^250 2\.0\.0 Ok: queued as /);
  await assertRefused(send('relay', '127.0.0.21'), MESSAGE_RATE);
  assert.match((await send('relay', '127.0.0.22')).response, /^250 /, 'another client address has its own budget');

  const refused = logs.find((l) => l.event === 'smtp.refused' && l.client === '127.0.0.21');
  assert.ok(refused, 'the refusal is logged');
  assert.equal(refused.reason, 'message rate per client address');
  assert.equal(refused.listener, 'relay');
  assert.equal(refused.limit, 2);
  assert.equal((await rateLimited('relay')) - limitedBefore, 1);

  offset += 60_000;
  assert.match((await send('relay', '127.0.0.21')).response, /^250 /, 'the window moved on with the daemon clock');
});

test('the recipient rate answers at RCPT TO, also pipelined; the recipients already accepted still get the message', async () => {
  const rcpts = ['a', 'b', 'c', 'd', 'e'].map((r) => `RCPT TO:<${r}@example.net>\r\n`).join('');
  const t = await smtpDialog(
    port('relay'),
    ['EHLO pipeliner.test', `RAW:MAIL FROM:<app@example.com>\r\n${rcpts}`, 'DATA', 'RAW:Subject: five\r\n\r\nbody\r\n.\r\n', 'QUIT'],
    { localAddress: '127.0.0.23' },
  );
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 250, 250, 250, 250, 250, 450, 354, 250, 221], t);
  assert.equal(smtpReplies(t)[7], '450 4.7.1 Too many recipients from your address, try again later');
  const received = logs.find((l) => l.event === 'received' && l.client === '127.0.0.23');
  assert.deepEqual(received?.recipients, ['a@example.net', 'b@example.net', 'c@example.net', 'd@example.net']);
});

/** Opens a connection from `localAddress` and resolves with the first reply line (the greeting or a refusal). */
function connect(localAddress: string): Promise<{ socket: net.Socket; first: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: port('relay'), localAddress });
    let text = '';
    socket.setEncoding('latin1');
    socket.on('error', reject);
    socket.on('data', function onData(chunk: string) {
      text += chunk;
      const nl = text.indexOf('\r\n');
      if (nl === -1) return;
      socket.off('data', onData);
      resolve({ socket, first: text.slice(0, nl) });
    });
  });
}

test('an exempt network is limited neither in messages nor in connections per address', async () => {
  for (let i = 0; i < 5; i++) assert.match((await send('relay', '127.0.0.50')).response, /^250 /, `message ${i + 1} from the exempt network`);

  const exempt = await Promise.all([1, 2, 3].map(() => connect('127.0.0.50')));
  const limited = await Promise.all([1, 2, 3].map(() => connect('127.0.0.24')));
  try {
    assert.deepEqual(exempt.map((c) => c.first.slice(0, 4)), ['220 ', '220 ', '220 ']);
    const codes = limited.map((c) => c.first.slice(0, 3)).sort();
    assert.deepEqual(codes, ['220', '220', '421'], 'maxConnectionsPerIp still holds outside the exempt network');
    assert.ok(limited.some((c) => c.first === '421 4.7.0 Too many connections from your address, try again later'));
  } finally {
    for (const c of [...exempt, ...limited]) c.socket.destroy();
  }
  assert.ok(!logs.some((l) => l.event === 'smtp.refused' && l.client === '127.0.0.50'), 'nothing from the exempt network was refused');
});

test('a per-user limit follows the account across client addresses; another user is not affected', async () => {
  const alice = { user: 'alice', pass: PASSWORD };
  assert.match((await send('submission', '127.0.0.31', alice)).response, /^250 /);
  assert.match((await send('submission', '127.0.0.32', alice)).response, /^250 /);
  await assertRefused(send('submission', '127.0.0.33', alice), '450 4.7.1 Too many messages from your account, try again later');
  assert.match((await send('submission', '127.0.0.33', { user: 'bob', pass: PASSWORD })).response, /^250 /, 'bob, from the same address');
  const refused = logs.find((l) => l.event === 'smtp.refused' && l.user === 'alice');
  assert.equal(refused?.reason, 'message rate per user');
  assert.equal(refused?.client, '127.0.0.33');
  assert.equal(await rateLimited('submission'), 1);
});
