/**
 * A queued message smarthost cannot read (here its file replaced by a directory, so every read fails with
 * EISDIR, even as root) is smarthost's own failure, whichever upstream it was going to: the recipients are
 * deferred with 451 4.3.0 saying why, the failure is logged as local, the upstream stays up with
 * upstreamDownAfter: 1 (no upstream.down, smarthost_upstream_up 1, no failover to a fallback), and once the file
 * is back the message is delivered. One test per kind of reader: nodemailer (smtp, with the header rewrite in
 * between), Graph and Mailjet (which read the message themselves) and outbox (which pipes it to a file).
 */
import assert from 'node:assert/strict';
import { mkdir, readdir, rename, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { startGraphFake } from '../fakes/graph.js';
import { startIdentityProvider } from '../fakes/identity-provider.js';
import { startMailjetFake } from '../fakes/mailjet.js';
import { httpGet, httpRequest, parseMetrics, series } from '../helpers/admin.js';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { writeQueuedMessage } from '../helpers/spool.js';
import { startSink } from '../helpers/sink.js';
import { newQueueId } from '../../src/spool/queue-id.js';
import { createRecord, serializeRecord } from '../../src/spool/record.js';

type Log = Record<string, unknown>;

const SENDER = 'app@origin.test';
const RECIPIENTS = ['alice@dest.test', 'bob@dest.test'];
const RAW = Buffer.from(`From: ${SENDER}\r\nTo: alice@dest.test, bob@dest.test\r\nSubject: unreadable for a while\r\nMessage-ID: <unreadable@origin.test>\r\n\r\nbody\r\n`);

/**
 * Queues RAW in the spool of `dir` as a deferred message (a state file beside it, as after a first attempt),
 * then puts a directory where its message file was: the queue loads it, and reading it fails. repair() puts
 * the file back.
 */
async function queueUnreadable(dir: string): Promise<{ id: string; repair(): Promise<void> }> {
  const queue = join(dir, 'spool', 'queue');
  await mkdir(queue, { recursive: true });
  const id = newQueueId();
  const record = createRecord({ id, sender: SENDER, recipients: RECIPIENTS, receivedAt: Date.now(), size: RAW.length, client: { address: '127.0.0.1', listener: 'relay', tls: false } });
  const path = await writeQueuedMessage(queue, record, RAW);
  await writeFile(join(queue, `${id}.json`), serializeRecord(record));
  const aside = join(dir, `${id}.msg`);
  await rename(path, aside);
  await mkdir(path);
  return {
    id,
    async repair() {
      await rmdir(path);
      await rename(aside, path);
    },
  };
}

async function start(t: TestContext, config: Record<string, unknown>): Promise<InProcessDaemon> {
  config.admin = { ...(config.admin as object), upstreamDownAfter: 1 };
  const relay = await startInProcess(config);
  t.after(() => relay.stop());
  return relay;
}

/**
 * Waits for the failed attempt at `upstream` and checks it is taken for what it is; then repairs the file, asks
 * for a retry through the admin API and waits for both recipients to be delivered there.
 */
async function unreadableThenDelivered(relay: InProcessDaemon, message: { id: string; repair(): Promise<void> }, upstream: string, received: () => number | Promise<number>): Promise<void> {
  const isDelivery = (recipient: string, result: string) => (l: Log) => l.event === 'delivery' && l.queueId === message.id && l.recipient === recipient && l.result === result;
  for (const recipient of RECIPIENTS) {
    const deferred = await relay.waitForLog(isDelivery(recipient, 'deferred'));
    assert.equal(deferred.upstream, upstream);
    assert.match(String(deferred.reply), /^451 4\.3\.0 queued message could not be read: EISDIR: illegal operation on a directory/);
  }
  const local = relay.logs().filter((l) => l.event === 'delivery.local_failure');
  assert.deepEqual(local.map((l) => [l.queueId, l.upstream, l.recipients]), [[message.id, upstream, RECIPIENTS]]);
  assert.deepEqual(relay.logs().filter((l) => l.event === 'upstream.down' || l.event === 'failover' || l.event === 'bounce.queued'), []);
  const admin = relay.daemon.admin!.port;
  const metrics = parseMetrics((await httpGet(admin, '/metrics')).body);
  assert.equal(metrics.get(series('smarthost_upstream_up', { upstream })), 1, 'the upstream is still up');
  assert.equal((await httpGet(admin, '/readyz')).status, 200);
  assert.equal(await received(), 0, 'nothing reached the upstream');

  await message.repair();
  assert.equal((await httpRequest(admin, 'POST', '/api/queue/retry', { id: message.id })).status, 200);
  for (const recipient of RECIPIENTS) assert.equal((await relay.waitForLog(isDelivery(recipient, 'delivered'))).upstream, upstream);
  await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === message.id);
  assert.equal(await received(), 1);
}

test('smtp: an unreadable message is deferred 4.3.0 and never marks the upstream down nor fails over; delivered once readable', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const sink = await startSink();
  t.after(() => sink.close());
  const config = await testConfig({
    dir: dir.path,
    upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' }, spare: { type: 'outbox', dir: join(dir.path, 'spare') } },
    retry: { initialDelay: '1h' },
    // A rule that applies: the message goes through the header rewrite on its way to nodemailer.
    extra: { rewrite: [{ match: SENDER, to: 'central@contoso.test' }] },
  });
  config.routing = { default: 'sink', routes: [{ name: 'all', upstream: 'sink', fallbacks: ['spare'] }] };
  const message = await queueUnreadable(dir.path);
  const relay = await start(t, config);

  await unreadableThenDelivered(relay, message, 'sink', () => sink.messages.length);
  assert.equal(sink.messages[0]!.sender, 'central@contoso.test');
  assert.match(sink.messages[0]!.raw.toString('latin1'), /\r\n\r\nbody\r\n$/);
});

test('graph: an unreadable message is deferred 4.3.0, not taken for a failure to reach Graph; delivered once readable', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const tenantId = '72f988bf-86f1-41af-91ab-2d7cd011db47';
  const clientId = '11111111-2222-3333-4444-555555555555';
  const idp = await startIdentityProvider();
  t.after(() => idp.close());
  idp.register({ tenantId, clientId, secret: 'app-secret' });
  const graph = await startGraphFake({ validateToken: (token) => (idp.introspect(token) ? { ok: true, roles: ['Mail.Send'] } : { ok: false, reason: 'unknown token' }) });
  t.after(() => graph.close());
  const config = await testConfig({
    dir: dir.path,
    upstreams: { graph: { type: 'graph', app: 'contoso', mailbox: 'scans@contoso.test', graphBaseUrl: graph.baseUrl } },
    retry: { initialDelay: '1h' },
    extra: { microsoft: { apps: { contoso: { tenantId, clientId, clientSecret: 'app-secret', authorityHost: idp.url, caFile: idp.caFile } } } },
  });
  const message = await queueUnreadable(dir.path);
  const relay = await start(t, config);

  await unreadableThenDelivered(relay, message, 'graph', () => graph.deliveries.length);
  assert.deepEqual(graph.deliveries[0]!.recipients, RECIPIENTS);
});

test('mailjet: an unreadable message is deferred 4.3.0, not taken for a failure to reach Mailjet; delivered once readable', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const keys = { apiKey: 'mj-public', secretKey: 'mj-secret' };
  const mailjet = await startMailjetFake(keys);
  t.after(() => mailjet.close());
  const config = await testConfig({
    dir: dir.path,
    upstreams: { mj: { type: 'mailjet', ...keys, baseUrl: mailjet.baseUrl, batch: { window: '0ms' } } },
    retry: { initialDelay: '1h' },
  });
  const message = await queueUnreadable(dir.path);
  const relay = await start(t, config);

  await unreadableThenDelivered(relay, message, 'mj', () => mailjet.calls.length);
});

test('outbox: an unreadable message is deferred 4.3.0 and leaves no file in the outbox; delivered once readable', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const outbox = join(dir.path, 'outbox');
  const config = await testConfig({ dir: dir.path, upstreams: { outbox: { type: 'outbox', dir: outbox } }, retry: { initialDelay: '1h' } });
  const message = await queueUnreadable(dir.path);
  const relay = await start(t, config);
  // Every file, the temporary ones included: a failed attempt leaves none, the delivery one .eml.
  await unreadableThenDelivered(relay, message, 'outbox', async () => (await readdir(outbox).catch(() => [])).length);
});
