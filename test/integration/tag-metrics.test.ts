/**
 * Message tags reach the metrics only through the allow-list: an allowed value is its own label, anything
 * else is "other", no header is "none", so a device writing free text into X-Tag cannot grow the label set.
 * Counted when a message is accepted, and again when each of its recipients' delivery ends.
 */
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import nodemailer from 'nodemailer';
import { SuppressionList } from '../../src/policy/suppression.js';
import { newQueueId } from '../../src/spool/queue-id.js';
import { createRecord } from '../../src/spool/record.js';
import { httpGet, httpRequest, parseMetrics, series } from '../helpers/admin.js';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { startSink, type SinkBehaviour } from '../helpers/sink.js';
import { writeQueuedMessage } from '../helpers/spool.js';

const TAGS = { header: 'X-Tag', allowed: ['invoice', 'scan'] };
const RESULTS = ['delivered', 'bounced', 'suppressed'];

/** Sends one message through the relay listener; the X-Tag header only when `tag` is given. Answers its queue ID. */
async function sendTagged(relay: InProcessDaemon, to: string[], tag: string | undefined): Promise<string> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  try {
    const header = tag === undefined ? '' : `X-Tag: ${tag}\r\n`;
    const info = await client.sendMail({ envelope: { from: 'erp@origin.test', to }, raw: `${header}From: erp@origin.test\r\nSubject: tagged\r\n\r\nbody\r\n` });
    return /queued as ([0-9A-Z]{22})$/.exec(info.response)![1]!;
  } finally {
    client.close();
  }
}

/** Every smarthost_delivery_recipients_by_tag_total series, as "tag result" -> value. */
async function outcomesByTag(relay: InProcessDaemon): Promise<Record<string, number>> {
  const metrics = parseMetrics((await httpGet(relay.daemon.admin!.port, '/metrics')).body);
  const out: Record<string, number> = {};
  for (const [key, value] of metrics) {
    const m = /^smarthost_delivery_recipients_by_tag_total\{result="(\w+)",tag="([^"]*)"\}$/.exec(key);
    if (m) out[`${m[2]} ${m[1]}`] = value;
  }
  return out;
}

/** The by-tag series as they start, all at zero, with the given counts set. */
function expected(counts: Record<string, number>): Record<string, number> {
  const all: Record<string, number> = {};
  for (const tag of [...TAGS.allowed, 'none', 'other']) for (const result of RESULTS) all[`${tag} ${result}`] = 0;
  return { ...all, ...counts };
}

/** A relay with tags configured, delivering to an SMTP sink that answers RCPT TO as `behaviour` says. */
async function relayWithSink(t: TestContext, behaviour: Map<string, SinkBehaviour>, extra: Record<string, unknown> = {}, beforeStart?: (dir: string) => Promise<void>) {
  const dir = await tempDir();
  t.after(() => dir.remove());
  await beforeStart?.(dir.path);
  const sink = await startSink({ recipientBehaviour: behaviour });
  t.after(() => sink.close());
  const relay = await startInProcess(
    await testConfig({
      dir: dir.path,
      upstreams: { up: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' } },
      retry: { initialDelay: '1h' },
      extra: { tags: TAGS, ...extra },
    }),
  );
  t.after(() => relay.stop());
  return relay;
}

test('accepted messages are counted per allow-listed tag, with "other" and "none" for the rest', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const relay = await startInProcess(await testConfig({ dir: dir.path, extra: { tags: { header: 'X-Tag', allowed: ['invoice', 'scan'] } } }));
  t.after(() => relay.stop());
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  t.after(() => client.close());
  const envelope = { from: 'erp@example.com', to: ['office@example.com'] };
  for (const tag of ['Invoice', 'invoice', 'customer 4711 reminder', undefined]) {
    const header = tag === undefined ? '' : `X-Tag: ${tag}\r\n`;
    await client.sendMail({ envelope, raw: `${header}Subject: tagged\r\n\r\nbody\r\n` });
  }
  const metrics = parseMetrics((await httpGet(relay.daemon.admin!.port, '/metrics')).body);
  const count = (tag: string) => metrics.get(series('smarthost_messages_received_by_tag_total', { listener: 'relay', tag }));
  assert.equal(count('invoice'), 2, 'the allowed value, compared case-insensitively');
  assert.equal(count('scan'), 0, 'allowed values start at zero');
  assert.equal(count('other'), 1, 'free text becomes "other"');
  assert.equal(count('none'), 1, 'no header is "none"');
  const labels = [...metrics.keys()].filter((k) => k.startsWith('smarthost_messages_received_by_tag_total{'));
  assert.ok(labels.every((k) => /tag="(invoice|scan|other|none)"/.test(k)), `unexpected labels: ${labels.join(' ')}`);
});

test("each recipient's final outcome (delivered, bounced, suppressed) is counted once under its message's tag", async (t) => {
  const behaviour = new Map<string, SinkBehaviour>([['nobody@dest.test', 'permfail']]);
  const relay = await relayWithSink(t, behaviour, { suppression: { action: 'drop' } }, async (dir) => {
    const list = await SuppressionList.open(join(dir, 'state'));
    await list.add('listed@dest.test', 'listed before the start');
    await list.close();
  });
  // Each message: one recipient accepted, one refused with 550 5.1.1; the invoice one also to a listed address.
  const sent = [
    await sendTagged(relay, ['ok@dest.test', 'nobody@dest.test', 'listed@dest.test'], 'Invoice'),
    await sendTagged(relay, ['ok@dest.test', 'nobody@dest.test'], 'customer 4711 reminder'),
    await sendTagged(relay, ['ok@dest.test', 'nobody@dest.test'], undefined),
  ];
  for (const id of sent) {
    const dsn = await relay.waitForLog((l) => l.event === 'bounce.queued' && l.queueId === id);
    await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === id);
    await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === dsn.bounceId);
  }
  assert.deepEqual(
    await outcomesByTag(relay),
    expected({
      'invoice delivered': 1,
      'invoice bounced': 1,
      'invoice suppressed': 1,
      'other delivered': 1,
      'other bounced': 1,
      // The untagged message's accepted recipient and the three DSNs to erp@origin.test, which carry no tag.
      'none delivered': 4,
      'none bounced': 1,
    }),
  );
});

test('a recipient bounced by the administrator counts as bounced under its tag; a deleted message counts nothing', async (t) => {
  const relay = await relayWithSink(t, new Map<string, SinkBehaviour>([['later@dest.test', 'tempfail']]));
  const port = relay.daemon.admin!.port;
  const bounced = await sendTagged(relay, ['later@dest.test'], 'scan');
  const deleted = await sendTagged(relay, ['later@dest.test'], 'scan');
  for (const id of [bounced, deleted]) await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === id && l.result === 'deferred');
  assert.deepEqual(await outcomesByTag(relay), expected({}), 'a deferral ends nothing');

  assert.equal((await httpRequest(port, 'POST', '/api/queue/bounce', { id: bounced })).status, 200);
  const dsn = await relay.waitForLog((l) => l.event === 'bounce.queued' && l.queueId === bounced);
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === dsn.bounceId);
  assert.equal((await httpRequest(port, 'POST', '/api/queue/delete', { id: deleted })).status, 200);
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === deleted);

  assert.deepEqual(await outcomesByTag(relay), expected({ 'scan bounced': 1, 'none delivered': 1 }));
  const metrics = parseMetrics((await httpGet(port, '/metrics')).body);
  assert.equal(metrics.get(series('smarthost_delivery_recipients_total', { upstream: 'up', result: 'bounced', dsn_class: '5.0' })), 1, 'counted per upstream too, at the upstream that deferred it');
});

test('a queued message keeps its tag across a restart, and one queued by a version that kept none counts as "none"', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const queue = join(dir.path, 'spool', 'queue');
  await mkdir(queue, { recursive: true });
  const record = (id: string) =>
    createRecord({ id, sender: 'erp@origin.test', recipients: ['ok@dest.test'], receivedAt: Date.now(), client: { address: '127.0.0.1', listener: 'relay', tls: false } });
  // The message file says invoice, but the record (as older versions wrote it) has no tag, and the file is not read for it.
  const old = record(newQueueId());
  assert.ok(!('tag' in old));
  await writeQueuedMessage(queue, old, 'X-Tag: invoice\r\nSubject: queued before the upgrade\r\n\r\nbody\r\n');
  const tagged = { ...record(newQueueId()), tag: 'Scan' };
  await writeQueuedMessage(queue, tagged, 'X-Tag: Scan\r\nSubject: queued with its tag\r\n\r\nbody\r\n');

  const relay = await startInProcess(await testConfig({ dir: dir.path, extra: { tags: TAGS } }));
  t.after(() => relay.stop());
  for (const id of [old.id, tagged.id]) await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === id);
  assert.deepEqual(relay.logs().filter((l) => l.event === 'spool.corrupt'), []);
  assert.deepEqual(await outcomesByTag(relay), expected({ 'none delivered': 1, 'scan delivered': 1 }));
});
