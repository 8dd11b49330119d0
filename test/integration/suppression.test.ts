/**
 * The suppression list in the running relay: refused at RCPT TO, dropped at delivery, changed by the CLI
 * while the daemon runs, applied to mail queued before the address was listed, and filled by hard bounces
 * from a real SMTP sink.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import nodemailer from 'nodemailer';
import { stringify } from 'yaml';
import { SuppressionList } from '../../src/policy/suppression.js';
import { CLI, startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { smtpDialog, smtpReplies, smtpReplyCodes } from '../helpers/net.js';
import { startSink, type Sink, type SinkBehaviour } from '../helpers/sink.js';

type Log = Record<string, unknown>;

interface Setup {
  relay: InProcessDaemon;
  stateDir: string;
  config: Record<string, unknown>;
  dir: string;
}

/** A relay delivering to `sink` with the given suppression settings; `listed` is on the list before it starts. */
async function relayWith(t: TestContext, o: { sink?: Sink; suppression?: Record<string, unknown>; listed?: string[] }): Promise<Setup> {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const stateDir = join(dir.path, 'state');
  if (o.listed?.length) {
    const list = await SuppressionList.open(stateDir);
    for (const address of o.listed) await list.add(address, 'listed before the start');
    await list.close();
  }
  const config = await testConfig({
    dir: dir.path,
    ...(o.sink ? { upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: o.sink.port, security: 'none' } } } : {}),
    retry: { initialDelay: '200ms', maxDelay: '1s' },
    extra: { state: { dir: stateDir }, ...(o.suppression ? { suppression: o.suppression } : {}) },
  });
  const relay = await startInProcess(config);
  t.after(() => relay.stop());
  return { relay, stateDir, config, dir: dir.path };
}

async function sinkFor(t: TestContext, behaviour?: Map<string, SinkBehaviour>, data?: () => SinkBehaviour): Promise<Sink> {
  const sink = await startSink({ ...(behaviour ? { recipientBehaviour: behaviour } : {}), ...(data ? { dataBehaviour: data } : {}) });
  t.after(() => sink.close());
  return sink;
}

/** The reply to RCPT TO for one recipient, from a raw dialog on the relay listener. */
async function rcptReply(relay: InProcessDaemon, recipient: string): Promise<string> {
  const transcript = await smtpDialog(relay.port('relay'), ['EHLO client.test', 'MAIL FROM:<app@origin.test>', `RCPT TO:<${recipient}>`, 'QUIT']);
  assert.deepEqual(smtpReplyCodes(transcript).slice(0, 3), [220, 250, 250], transcript);
  return smtpReplies(transcript)[3]!;
}

async function send(relay: InProcessDaemon, to: string[], subject: string): Promise<string> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  try {
    const raw = `From: app@origin.test\r\nTo: ${to.join(', ')}\r\nSubject: ${subject}\r\nMessage-ID: <${subject}@origin.test>\r\n\r\nbody of ${subject}\r\n`;
    const info = await client.sendMail({ envelope: { from: 'app@origin.test', to }, raw });
    const m = /queued as ([0-9A-Z]{22})$/.exec(info.response);
    assert.ok(m, `unexpected reply: ${info.response}`);
    return m[1]!;
  } finally {
    client.close();
  }
}

function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [CLI, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: child.exitCode, stdout, stderr });
    });
  });
}

const is = (event: string, fields: Log = {}) => (l: Log) => l.event === event && Object.entries(fields).every(([k, v]) => l[k] === v);

test('action refuse: a listed recipient gets 550 5.7.1 at RCPT TO, in any letter case and with its local part quoted; others are accepted', async (t) => {
  const { relay } = await relayWith(t, { listed: ['Blocked@Dest.test'] });
  const transcript = await smtpDialog(relay.port('relay'), [
    'EHLO client.test',
    'MAIL FROM:<app@origin.test>',
    'RCPT TO:<blocked@dest.test>',
    'RCPT TO:<BLOCKED@DEST.TEST>',
    'RCPT TO:<"blocked"@dest.test>',
    'RCPT TO:<fine@dest.test>',
    'QUIT',
  ]);
  const replies = smtpReplies(transcript);
  assert.deepEqual(smtpReplyCodes(transcript), [220, 250, 250, 550, 550, 550, 250, 221]);
  assert.equal(replies[3], '550 5.7.1 Recipient is on the suppression list');
  assert.equal(replies[4], '550 5.7.1 Recipient is on the suppression list');
  assert.equal(replies[5], '550 5.7.1 Recipient is on the suppression list', 'a quoted local part names the same mailbox');
  const refused = await relay.waitForLog(is('smtp.refused', { reason: 'suppression list' }));
  assert.equal(refused.recipient, 'blocked@dest.test');
});

test('action drop: the message is accepted, the listed recipient never reaches the sink, the other one does', async (t) => {
  const sink = await sinkFor(t);
  const { relay } = await relayWith(t, { sink, suppression: { action: 'drop' }, listed: ['quiet@dest.test'] });
  assert.equal(await rcptReply(relay, 'quiet@dest.test'), '250 2.1.5 Accepted', 'drop mode accepts at RCPT TO');

  const queueId = await send(relay, ['Quiet@dest.test', 'loud@dest.test'], 'drop-1');
  const dropped = await relay.waitForLog(is('delivery', { queueId, recipient: 'Quiet@dest.test' }));
  assert.equal(dropped.result, 'suppressed');
  assert.equal(dropped.upstream, undefined, 'no upstream was involved');
  assert.equal((await relay.waitForLog(is('delivery', { queueId, recipient: 'loud@dest.test' }))).result, 'delivered');
  await relay.waitForLog(is('queue.removed', { queueId }));

  const [message] = await sink.waitForMessages(1);
  assert.deepEqual(message!.recipients, ['loud@dest.test']);
  assert.deepEqual(sink.deliveredRecipients().map((r) => r.toLowerCase()), ['loud@dest.test']);
  assert.equal(relay.logs().filter(is('bounce.queued')).length, 0, 'a dropped recipient is not reported to the sender');
  assert.equal(relay.daemon.scheduler.size, 0, 'the message finished normally');
});

test('action drop: a message whose only recipient is listed finishes without any delivery', async (t) => {
  const sink = await sinkFor(t);
  const { relay } = await relayWith(t, { sink, suppression: { action: 'drop' }, listed: ['quiet@dest.test'] });
  const queueId = await send(relay, ['quiet@dest.test'], 'drop-2');
  assert.equal((await relay.waitForLog(is('delivery', { queueId }))).result, 'suppressed');
  await relay.waitForLog(is('queue.removed', { queueId }));
  assert.equal(relay.logs().filter(is('routed', { queueId })).length, 0, 'nothing was routed');
  assert.equal(sink.messages.length, 0);
});

test('smarthost suppress add and remove against the running daemon take effect without a restart', async (t) => {
  const { relay, config, dir } = await relayWith(t, {});
  const configFile = join(dir, 'smarthost.yaml');
  await writeFile(configFile, stringify(config));
  assert.equal(await rcptReply(relay, 'target@dest.test'), '250 2.1.5 Accepted');

  const add = await runCli(['suppress', 'add', 'Target@Dest.test', '--reason', 'complaint #42', '--config', configFile]);
  assert.equal(add.code, 0, add.stderr);
  assert.match(add.stdout, /added Target@Dest\.test to the suppression list/);
  await relay.waitForLog(is('suppression.reloaded', { entries: 1 }));
  assert.equal(await rcptReply(relay, 'target@dest.test'), '550 5.7.1 Recipient is on the suppression list');

  const remove = await runCli(['suppress', 'remove', 'target@dest.test', '--config', configFile]);
  assert.equal(remove.code, 0, remove.stderr);
  await relay.waitForLog(is('suppression.reloaded', { entries: 0 }));
  assert.equal(await rcptReply(relay, 'target@dest.test'), '250 2.1.5 Accepted');
});

test('action refuse: mail queued before its recipient was listed bounces on the next attempt instead of being sent', async (t) => {
  const behaviour = new Map<string, SinkBehaviour>([['later@dest.test', 'tempfail']]);
  const sink = await sinkFor(t, behaviour);
  const { relay } = await relayWith(t, { sink });
  const queueId = await send(relay, ['later@dest.test'], 'queued-1');
  assert.equal((await relay.waitForLog(is('delivery', { queueId, recipient: 'later@dest.test' }))).result, 'deferred');

  behaviour.delete('later@dest.test');
  await relay.daemon.suppression.add('later@dest.test', 'listed while queued');
  const bounced = await relay.waitForLog(is('delivery', { queueId, recipient: 'later@dest.test', result: 'bounced' }));
  assert.equal(bounced.reply, '550 5.7.1 Recipient is on the suppression list');
  await relay.waitForLog(is('bounce.queued', { queueId }));

  const [dsn] = await sink.waitForMessages(1);
  assert.equal(dsn!.sender, '', 'the only message at the sink is the bounce');
  assert.deepEqual(dsn!.recipients, ['app@origin.test']);
  assert.match(dsn!.raw.toString(), /Recipient is on the suppression list/);
  assert.ok(!sink.deliveredRecipients().includes('later@dest.test'));
});

test('addHardBounces: a 550 5.1.1 at the sink puts the recipient on the list; other failures do not', async (t) => {
  let data: SinkBehaviour = 'accept';
  const sink = await sinkFor(t, new Map([['gone@dest.test', 'permfail']]), () => data);
  const { relay, stateDir } = await relayWith(t, { sink, suppression: { action: 'refuse', addHardBounces: true } });

  const first = await send(relay, ['gone@dest.test', 'ok@dest.test'], 'hard-1');
  const added = await relay.waitForLog(is('suppression.added', { queueId: first }));
  assert.equal(added.recipient, 'gone@dest.test');
  await relay.waitForLog(is('bounce.queued', { queueId: first }));

  const onDisk = await SuppressionList.open(stateDir);
  await onDisk.close();
  assert.deepEqual(
    onDisk.entries().map((e) => [e.address, e.reason]),
    [['gone@dest.test', 'hard bounce: 550 5.1.1 No such user here']],
  );
  assert.match(onDisk.get('gone@dest.test')!.addedAt, /^\d{4}-\d\d-\d\dT/);
  assert.equal(await rcptReply(relay, 'GONE@dest.test'), '550 5.7.1 Recipient is on the suppression list', 'and the next message is refused');

  // A permanent failure that is not about the mailbox (554 5.6.0 after DATA) bounces but is not listed.
  data = 'permfail';
  const second = await send(relay, ['rejected@dest.test'], 'hard-2');
  const bounced = await relay.waitForLog(is('delivery', { queueId: second, recipient: 'rejected@dest.test' }));
  assert.equal(bounced.result, 'bounced');
  assert.match(String(bounced.reply), /^554 5\.6\.0/);
  await relay.waitForLog(is('bounce.queued', { queueId: second }));
  assert.equal(relay.daemon.suppression.has('rejected@dest.test'), false);
  assert.equal(relay.daemon.suppression.size, 1);
});

test('without addHardBounces a 550 5.1.1 bounces as before and leaves the list empty', async (t) => {
  const sink = await sinkFor(t, new Map([['gone@dest.test', 'permfail']]));
  const { relay, stateDir } = await relayWith(t, { sink });
  const queueId = await send(relay, ['gone@dest.test'], 'hard-3');
  await relay.waitForLog(is('bounce.queued', { queueId }));
  assert.equal(relay.daemon.suppression.size, 0);
  assert.equal(relay.logs().filter(is('suppression.added')).length, 0);
  const onDisk = await SuppressionList.open(stateDir);
  await onDisk.close();
  assert.equal(onDisk.size, 0);
});
