/**
 * Delivery through the smtp upstream to a real SMTP sink: per-recipient outcomes, RFC 3464 bounces,
 * retries that carry only the deferred recipients, STARTTLS and certificate checks, refused connections.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { test, type TestContext } from 'node:test';
import { type InProcessDaemon, sendRaw, startInProcess, tempDir, testConfig } from '../helpers/daemon.js';
import { freePort } from '../helpers/net.js';
import { startSink, type Sink, type SinkBehaviour, type SinkMessage } from '../helpers/sink.js';
import { makeTestCertificate } from '../helpers/tls.js';

type Log = Record<string, unknown>;

const SHORT_RETRY = { initialDelay: '200ms', maxDelay: '1s' };

/** A daemon in this process whose only upstream is `upstream`; everything is closed when the test ends. */
async function relayTo(t: TestContext, upstream: Record<string, unknown>): Promise<{ relay: InProcessDaemon; queueDir: string }> {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const relay = await startInProcess(await testConfig({ dir: dir.path, upstreams: { up: upstream }, retry: SHORT_RETRY }));
  t.after(() => relay.stop());
  return { relay, queueDir: relay.daemon.spool.queueDir };
}

async function sinkFor(t: TestContext, options: Parameters<typeof startSink>[0] = {}): Promise<Sink> {
  const sink = await startSink(options);
  t.after(() => sink.close());
  return sink;
}


function message(subject: string, messageId: string, from = 'app@origin.test'): string {
  return `From: ${from}\r\nTo: someone@dest.test\r\nSubject: ${subject}\r\nMessage-ID: ${messageId}\r\n\r\nbody of ${subject}\r\n`;
}

const isDelivery = (queueId: string, recipient: string, result: string) => (l: Log) =>
  l.event === 'delivery' && l.queueId === queueId && l.recipient === recipient && l.result === result;

interface MimePart {
  headers: string;
  body: string;
}

/** Splits a multipart body along the boundary named in its top-level Content-Type. */
function mimeParts(raw: string): { topHeaders: string; parts: MimePart[] } {
  const split = raw.indexOf('\r\n\r\n');
  const topHeaders = raw.slice(0, split).replace(/\r\n[ \t]+/g, ' ');
  const boundary = /boundary="?([^";\r\n]+)"?/i.exec(topHeaders)?.[1];
  assert.ok(boundary, `no boundary in ${topHeaders}`);
  const body = raw.slice(split + 4);
  assert.ok(body.includes(`\r\n--${boundary}--`), 'closing boundary present');
  const sections = body.split(`--${boundary}`).slice(1, -1);
  const parts = sections.map((s) => {
    const text = s.replace(/^\r\n/, '');
    const end = text.indexOf('\r\n\r\n');
    return { headers: text.slice(0, end), body: text.slice(end + 4) };
  });
  return { topHeaders, parts };
}

function partOfType(parts: MimePart[], type: string): MimePart {
  const part = parts.find((p) => new RegExp(`^Content-Type:\\s*${type.replace('/', '\\/')}\\b`, 'im').test(p.headers));
  assert.ok(part, `a ${type} part exists`);
  return part;
}

test('partial failure: accepted recipient once, permanent one bounced with an RFC 3464 DSN, temporary one retried alone', async (t) => {
  const behaviour = new Map<string, SinkBehaviour>([
    ['later@dest.test', 'tempfail'],
    ['nobody@dest.test', 'permfail'],
  ]);
  const sink = await sinkFor(t, { recipientBehaviour: behaviour });
  const { relay, queueDir } = await relayTo(t, { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' });

  const sender = 'app@origin.test';
  const recipients = ['ok@dest.test', 'later@dest.test', 'nobody@dest.test'];
  const queueId = await sendRaw(relay, sender, recipients, message('quarterly report', '<partial-1@origin.test>'));

  // The first attempt defers the tempfail recipient; from then on the sink accepts it.
  await relay.waitForLog(isDelivery(queueId, 'later@dest.test', 'deferred'));
  behaviour.set('later@dest.test', 'accept');
  const bounced = await relay.waitForLog(isDelivery(queueId, 'nobody@dest.test', 'bounced'));
  assert.match(String(bounced.reply), /^550 5\.1\.1 /);

  const bounceQueued = await relay.waitForLog((l) => l.event === 'bounce.queued' && l.queueId === queueId);
  const bounceId = String(bounceQueued.bounceId);
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === queueId);
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === bounceId);

  const messages = await sink.waitForMessages(3);
  assert.equal(messages.length, 3, 'original, retry and DSN: nothing more');
  assert.deepEqual(sink.deliveredRecipients().sort(), ['app@origin.test', 'later@dest.test', 'ok@dest.test'], 'no recipient twice');

  const originals = messages.filter((m) => m.messageId === '<partial-1@origin.test>');
  assert.deepEqual(
    originals.map((m) => m.recipients),
    [['ok@dest.test'], ['later@dest.test']],
    'first attempt carries the accepted recipient, the retry only the deferred one',
  );
  for (const m of originals) assert.equal(m.sender, sender);

  const dsn = messages.find((m) => m.sender === '');
  assert.ok(dsn, 'a message with the null sender arrived');
  assert.deepEqual(dsn.recipients, [sender], 'the DSN goes to the original envelope sender');
  checkDsn(dsn, 'nobody@dest.test', '<partial-1@origin.test>');

  // The tempfail recipient was attempted twice in all, the others once.
  const attempts = relay.logs().filter((l) => l.event === 'delivery' && l.queueId === queueId);
  assert.deepEqual(
    attempts.map((l) => `${String(l.recipient)}:${String(l.result)}`).sort(),
    ['later@dest.test:deferred', 'later@dest.test:delivered', 'nobody@dest.test:bounced', 'ok@dest.test:delivered'],
  );
  assert.deepEqual(await readdir(queueDir), [], 'the queue directory is empty');
});

function checkDsn(dsn: SinkMessage, failedRecipient: string, originalMessageId: string): void {
  const raw = dsn.raw.toString('latin1');
  const { topHeaders, parts } = mimeParts(raw);
  assert.match(topHeaders, /^Content-Type: multipart\/report; report-type=delivery-status; boundary=/im);
  assert.match(topHeaders, /^Auto-Submitted: auto-replied$/im);
  assert.match(topHeaders, /^To: <app@origin\.test>$/im);
  assert.equal(parts.length, 3, 'explanation, delivery status, original headers');
  assert.match(parts[0]!.headers, /^Content-Type: text\/plain/im, 'the human-readable part comes first');

  const status = partOfType(parts, 'message/delivery-status').body;
  assert.match(status, /^Reporting-MTA: dns; smarthost\.test$/m);
  const [, perRecipient] = status.split(/\r\n\r\n/);
  assert.ok(perRecipient, 'a per-recipient block follows the per-message block');
  assert.match(perRecipient, new RegExp(`^Final-Recipient: rfc822; ${failedRecipient.replace('.', '\\.')}\\r$`, 'm'));
  assert.match(perRecipient, /^Action: failed\r$/m);
  assert.match(perRecipient, /^Status: 5\.1\.1\r$/m);
  assert.match(perRecipient, /^Diagnostic-Code: smtp; 550 5\.1\.1 /m);
  assert.match(perRecipient, /^Remote-MTA: dns; 127\.0\.0\.1\r$/m, 'the upstream host, not its config name');
  assert.match(parts[0]!.body, /^<nobody@dest\.test>: host 127\.0\.0\.1 said: 550 5\.1\.1 /m);
  assert.doesNotMatch(status, /ok@dest\.test|later@dest\.test/, 'only the failed recipient is reported');

  const headers = partOfType(parts, 'text/rfc822-headers').body;
  assert.match(headers, new RegExp(`^Message-ID: ${originalMessageId}\\r$`, 'm'));
  assert.match(headers, /^Subject: quarterly report\r$/m);
  assert.match(headers, /^Received: from /, 'our Received header is part of the quoted header block');
  assert.doesNotMatch(headers, /body of quarterly report/, 'only headers are returned, never the body');
}

test('a DSN that fails permanently is logged as bounce.dropped and never bounced', async (t) => {
  // Both the recipient and the original sender's mailbox refuse mail.
  const sink = await sinkFor(t, { recipientBehaviour: () => 'permfail' });
  const { relay, queueDir } = await relayTo(t, { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' });

  const queueId = await sendRaw(relay, 'gone@origin.test', ['nobody@dest.test'], message('doomed', '<doomed-1@origin.test>', 'gone@origin.test'));
  const queued = await relay.waitForLog((l) => l.event === 'bounce.queued' && l.queueId === queueId);
  const bounceId = String(queued.bounceId);
  const bounceFailed = await relay.waitForLog(isDelivery(bounceId, 'gone@origin.test', 'bounced'));
  assert.match(String(bounceFailed.reply), /^550 /);
  const dropped = await relay.waitForLog((l) => l.event === 'bounce.dropped');
  assert.equal(dropped.queueId, bounceId);
  assert.deepEqual(dropped.recipients, ['gone@origin.test']);
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === bounceId);

  // Everything that could follow has happened: the queue is empty, so no second-level bounce exists.
  assert.deepEqual(await readdir(queueDir), []);
  assert.equal(relay.logs().filter((l) => l.event === 'bounce.queued').length, 1, 'exactly one DSN was ever queued');
  assert.equal(relay.daemon.scheduler.size, 0);
  assert.equal(sink.messages.length, 0);
});

test('delivery via STARTTLS to a sink with a self-signed certificate works when verification is off', async (t) => {
  const cert = await makeTestCertificate();
  const sink = await sinkFor(t, { tls: cert });
  const { relay } = await relayTo(t, {
    type: 'smtp',
    host: '127.0.0.1',
    port: sink.port,
    security: 'starttls',
    verifyCertificate: false,
  });
  const queueId = await sendRaw(relay, 'app@origin.test', ['ok@dest.test'], message('over tls', '<tls-1@origin.test>'));
  const [msg] = await sink.waitForMessages(1);
  assert.equal(msg!.messageId, '<tls-1@origin.test>');
  assert.deepEqual(msg!.recipients, ['ok@dest.test']);
  await relay.waitForLog(isDelivery(queueId, 'ok@dest.test', 'delivered'));
});

test('security starttls never falls back to plain text when the upstream offers no STARTTLS', async (t) => {
  const sink = await sinkFor(t); // STARTTLS disabled
  const { relay } = await relayTo(t, { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'starttls', verifyCertificate: false });
  const queueId = await sendRaw(relay, 'app@origin.test', ['ok@dest.test'], message('must be encrypted', '<notls-1@origin.test>'));
  // Deferred, not bounced: TLS trouble with our own upstream says nothing about the message.
  const deferred = await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === queueId);
  assert.equal(deferred.result, 'deferred', `reply: ${String(deferred.reply)}`);
  assert.match(String(deferred.reply), /^451 4\.\d+\.\d+ STARTTLS /);
  await relay.waitForLog((l) => isDelivery(queueId, 'ok@dest.test', 'deferred')(l) && l.attempt === 2);
  assert.equal(sink.messages.length, 0, 'nothing was sent in clear text');
  assert.ok(!relay.logs().some((l) => l.event === 'bounce.queued'), 'no DSN');
});

test('an upstream that refuses our credentials defers the message instead of bouncing it', async (t) => {
  const sink = await sinkFor(t, { auth: { user: 'relay', pass: 'right' } });
  const { relay } = await relayTo(t, {
    type: 'smtp',
    host: '127.0.0.1',
    port: sink.port,
    security: 'none',
    auth: { user: 'relay', pass: 'wrong' },
  });
  const queueId = await sendRaw(relay, 'app@origin.test', ['ok@dest.test'], message('bad password', '<auth-1@origin.test>'));
  const attempt = await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === queueId);
  assert.equal(attempt.result, 'deferred', `reply: ${String(attempt.reply)}`);
  assert.match(String(attempt.reply), /^451 4\.7\.8 AUTH PLAIN refused by upstream: 535 /);
  await relay.waitForLog((l) => isDelivery(queueId, 'ok@dest.test', 'deferred')(l) && l.attempt === 2);
  assert.equal(sink.messages.length, 0);
  assert.ok(!relay.logs().some((l) => l.event === 'bounce.queued'), 'no DSN');
});

test('certificate verification is on by default and refuses a self-signed upstream; the message is deferred', async (t) => {
  const cert = await makeTestCertificate();
  const sink = await sinkFor(t, { tls: cert });
  const { relay, queueDir } = await relayTo(t, { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'starttls' });
  const queueId = await sendRaw(relay, 'app@origin.test', ['ok@dest.test'], message('untrusted', '<untrusted-1@origin.test>'));
  const deferred = await relay.waitForLog(isDelivery(queueId, 'ok@dest.test', 'deferred'));
  assert.match(String(deferred.reply), /^4\d\d 4\.\d+\.\d+ /);
  assert.match(String(deferred.reply), /certificate/i);
  // A second attempt fails the same way: the refusal is not a one-off.
  await relay.waitForLog((l) => isDelivery(queueId, 'ok@dest.test', 'deferred')(l) && l.attempt === 2);
  assert.equal(sink.messages.length, 0, 'nothing reached the untrusted server');
  assert.ok((await readdir(queueDir)).includes(`${queueId}.msg`), 'the message stays queued');
});

test('an upstream that refuses connections defers with a 4.4.1 reply and is retried', async (t) => {
  const closedPort = await freePort();
  const { relay, queueDir } = await relayTo(t, { type: 'smtp', host: '127.0.0.1', port: closedPort, security: 'none' });
  const queueId = await sendRaw(relay, 'app@origin.test', ['ok@dest.test', 'other@dest.test'], message('nobody home', '<refused-1@origin.test>'));

  const first = await relay.waitForLog(isDelivery(queueId, 'ok@dest.test', 'deferred'));
  assert.match(String(first.reply), /^4\d\d 4\.4\.1 /);
  assert.match(String(first.reply), /ECONNREFUSED/);
  assert.equal(first.attempt, 1);
  const firstNext = Date.parse(String(first.nextAttemptAt));
  assert.ok(firstNext > Date.parse(String(first.time)), 'the next attempt lies in the future');

  const second = await relay.waitForLog((l) => isDelivery(queueId, 'ok@dest.test', 'deferred')(l) && l.attempt === 2);
  assert.match(String(second.reply), /^4\d\d 4\.4\.1 /);
  assert.ok(Date.parse(String(second.time)) >= firstNext, 'the retry waited for its due time');
  await relay.waitForLog((l) => isDelivery(queueId, 'other@dest.test', 'deferred')(l) && l.attempt === 2);
  assert.deepEqual((await readdir(queueDir)).sort(), [`${queueId}.json`, `${queueId}.msg`], 'the message file and, once deferred, its state file');
  const record = await relay.daemon.spool.readRecord(queueId);
  assert.deepEqual(
    record.recipients.map((r) => [r.status, r.lastReply?.enhanced]),
    [
      ['pending', '4.4.1'],
      ['pending', '4.4.1'],
    ],
  );
});
