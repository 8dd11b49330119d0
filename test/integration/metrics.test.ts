/**
 * The admin listener's /metrics after a scripted scenario: messages accepted, refused, delivered, deferred and
 * bounced, each counter checked for its exact value; /healthz, /readyz, the token on /api/ and a malformed /api/ path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import nodemailer from 'nodemailer';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { httpGet, httpRequest, parseMetrics, series } from '../helpers/admin.js';
import { smtpDialog, smtpReplyCodes } from '../helpers/net.js';
import { startSink, type SinkBehaviour } from '../helpers/sink.js';

async function send(relay: InProcessDaemon, to: string[], from = 'app@origin.test'): Promise<string> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  try {
    const info = await client.sendMail({ envelope: { from, to }, raw: `From: ${from}\r\nTo: x@dest.test\r\nSubject: m\r\n\r\nbody\r\n` });
    return /queued as ([0-9A-Z]{22})$/.exec(info.response)![1]!;
  } finally {
    client.close();
  }
}

test('after accepted, refused, delivered, deferred and bounced mail, /metrics counts each exactly', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const behaviour = new Map<string, SinkBehaviour>([
    ['later@dest.test', 'tempfail'],
    ['nobody@dest.test', 'permfail'],
  ]);
  const sink = await startSink({ recipientBehaviour: behaviour });
  t.after(() => sink.close());
  const relay = await startInProcess(
    await testConfig({ dir: dir.path, upstreams: { up: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' } }, retry: { initialDelay: '1h' } }),
  );
  t.after(() => relay.stop());
  const port = relay.daemon.admin!.port;

  const before = parseMetrics((await httpGet(port, '/metrics')).body);
  // Series exist at zero before anything happened.
  assert.equal(before.get(series('smarthost_messages_received_total', { listener: 'relay' })), 0);
  assert.equal(before.get(series('smarthost_delivery_recipients_total', { upstream: 'up', result: 'delivered', dsn_class: '2.0' })), 0);
  assert.equal(before.get(series('smarthost_upstream_up', { upstream: 'up' })), 1);

  // 1 delivered; 1 with a delivered and a deferred recipient; 1 bounced (its DSN to app@origin.test is delivered too).
  const ok = await send(relay, ['ok@dest.test']);
  const mixed = await send(relay, ['ok2@dest.test', 'later@dest.test']);
  const bounced = await send(relay, ['nobody@dest.test']);
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === ok);
  await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === mixed && l.result === 'deferred');
  const dsn = await relay.waitForLog((l) => l.event === 'bounce.queued' && l.queueId === bounced);
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === dsn.bounceId);
  // Refused: MAIL FROM without AUTH on the submission listener (530), and a bad recipient on the relay (553).
  const refused = await smtpDialog(relay.port('submission'), ['EHLO client.test', 'MAIL FROM:<a@origin.test>', 'QUIT']);
  assert.deepEqual(smtpReplyCodes(refused), [220, 250, 530, 221]);
  const badRcpt = await smtpDialog(relay.port('relay'), ['EHLO client.test', 'MAIL FROM:<a@origin.test>', 'RCPT TO:<user%other.test@dest.test>', 'QUIT']);
  assert.deepEqual(smtpReplyCodes(badRcpt), [220, 250, 250, 553, 221]);

  const m = parseMetrics((await httpGet(port, '/metrics')).body);
  const get = (name: string, labels: Record<string, string> = {}) => m.get(series(name, labels));
  assert.equal(get('smarthost_messages_received_total', { listener: 'relay' }), 3);
  assert.equal(get('smarthost_messages_received_total', { listener: 'submission' }), 0);
  assert.equal(get('smarthost_smtp_connections_total', { listener: 'relay' }), 4);
  assert.equal(get('smarthost_smtp_connections_total', { listener: 'submission' }), 1);
  assert.equal(get('smarthost_smtp_rejections_total', { listener: 'submission', reason: 'auth_required', code: '530' }), 1);
  assert.equal(get('smarthost_smtp_rejections_total', { listener: 'relay', reason: 'recipient_address', code: '553' }), 1);
  assert.equal(get('smarthost_smtp_auth_failures_total', { listener: 'submission' }), 0);
  // ok, ok2 and the DSN delivered; later deferred (451 4.2.0); nobody bounced (550 5.1.1).
  assert.equal(get('smarthost_delivery_recipients_total', { upstream: 'up', result: 'delivered', dsn_class: '2.0' }), 3);
  assert.equal(get('smarthost_delivery_recipients_total', { upstream: 'up', result: 'deferred', dsn_class: '4.2' }), 1);
  assert.equal(get('smarthost_delivery_recipients_total', { upstream: 'up', result: 'bounced', dsn_class: '5.1' }), 1);
  assert.equal(get('smarthost_delivery_recipients_total', { upstream: 'none', result: 'suppressed', dsn_class: '5.7' }), 0);
  assert.equal(get('smarthost_delivery_duration_seconds_count', { upstream: 'up' }), 4);
  assert.equal(get('smarthost_message_size_bytes_count', { listener: 'relay' }), 3);
  assert.equal(get('smarthost_queue_messages', { state: 'deferred' }), 1);
  assert.equal(get('smarthost_queue_messages', { state: 'queued' }), 0);
  assert.equal(get('smarthost_queue_messages', { state: 'held' }), 0);
  assert.ok(get('smarthost_queue_oldest_message_age_seconds')! >= 0);
  assert.equal(get('smarthost_upstream_up', { upstream: 'up' }), 1, 'a 4.2.0 reply is an answer: the upstream is up');
  assert.ok(get('smarthost_spool_free_bytes')! > 0);
  assert.ok([...m.keys()].some((k) => k.startsWith('smarthost_build_info{') && k.includes(`node_version="${process.version}"`)));
  assert.ok(m.has('smarthost_process_cpu_user_seconds_total'), 'default Node process metrics carry the prefix');
  assert.ok(![...m.keys()].some((k) => k.includes('@')), 'no address is ever a label');
  assert.equal(relay.daemon.registry.getSingleMetric('smarthost_delivery_recipients_by_tag_total'), undefined, 'outcomes per tag only with tags configured');
});

test('/healthz answers ok, /readyz is ready while listeners are up, and /api/ needs the token when one is set', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const config = await testConfig({ dir: dir.path });
  (config.admin as Record<string, unknown>).token = 'sesame-token';
  const relay = await startInProcess(config);
  t.after(() => relay.stop());
  const port = relay.daemon.admin!.port;
  assert.deepEqual(await httpGet(port, '/healthz'), { status: 200, body: 'ok\n' });
  const ready = await httpGet(port, '/readyz');
  assert.equal(ready.status, 200, ready.body);
  assert.match(ready.body, /^ready\nok {3}listeners: 2 listening\nok {3}spool: /);
  assert.equal((await httpGet(port, '/api/queue')).status, 401);
  assert.equal((await httpGet(port, '/api/queue', { authorization: 'Bearer wrong-token!' })).status, 401);
  const list = await httpGet(port, '/api/queue', { authorization: 'Bearer sesame-token' });
  assert.deepEqual({ status: list.status, body: JSON.parse(list.body) }, { status: 200, body: { messages: [] } });
  // The log level switches at runtime.
  const changed = await httpRequest(port, 'POST', '/api/log-level', { level: 'warn' }, { authorization: 'Bearer sesame-token' });
  assert.deepEqual(JSON.parse(changed.body), { level: 'warn', previous: 'debug' });
  assert.equal(relay.daemon.log.level, 'warn');
  const wrong = await httpRequest(port, 'POST', '/api/log-level', { level: 'loud' }, { authorization: 'Bearer sesame-token' });
  assert.equal(wrong.status, 400);
  // The token never reaches a log line.
  assert.ok(!JSON.stringify(relay.logs()).includes('sesame-token'));
});

test('an /api/ path with a malformed percent-escape is answered 400, and no error is logged', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const relay = await startInProcess(await testConfig({ dir: dir.path }));
  t.after(() => relay.stop());
  const reply = await httpGet(relay.daemon.admin!.port, '/api/queue/%E0%A4%A');
  assert.deepEqual({ status: reply.status, body: JSON.parse(reply.body) }, {
    status: 400,
    body: { error: '/api/queue/%E0%A4%A has a malformed percent-escape: each % must start a %XX escape of UTF-8' },
  });
  assert.deepEqual(relay.logs().filter((l) => l.level === 'error' || l.level === 'fatal'), []);
});

test('/readyz fails when the spool file system has less free space than admin.minFreeBytes', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const config = await testConfig({ dir: dir.path });
  (config.admin as Record<string, unknown>).minFreeBytes = '1000000GB';
  const relay = await startInProcess(config);
  t.after(() => relay.stop());
  const ready = await httpGet(relay.daemon.admin!.port, '/readyz');
  assert.equal(ready.status, 503);
  assert.match(ready.body, /FAIL spool: \d+ bytes free \(minimum 1000000000000000\)/);
});
