/**
 * End to end through smarthost into the Graph fake: SMTP in, the spool, the scheduler, the graph upstream with
 * tokens from the msal provider against the fake identity provider, out to the fake Graph, which checks every
 * token with the identity provider. Recipients, bodies and attachments are checked at the fake.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { startGraphFake, type GraphFake } from '../fakes/graph.js';
import { startIdentityProvider, type FakeIdentityProvider } from '../fakes/identity-provider.js';
import { type InProcessDaemon, sendRaw, startInProcess, tempDir, testConfig } from '../helpers/daemon.js';
import { buildMessage, scanBytes, sha256 } from '../helpers/graph-mail.js';
import { freePort } from '../helpers/net.js';

type Log = Record<string, unknown>;

const MAILBOX = 'scans@contoso.test';
const TENANT = '72f988bf-86f1-41af-91ab-2d7cd011db47';
const CLIENT = '11111111-2222-3333-4444-555555555555';

interface Setup {
  relay: InProcessDaemon;
  graph: GraphFake;
  idp: FakeIdentityProvider;
  outboxDir: string;
}

/**
 * smarthost with a graph upstream (default route) and an outbox for everything @elsewhere.test and @origin.test
 * (the senders, so DSNs land there too).
 */
async function setup(t: TestContext, o: { retry?: Record<string, unknown>; graph?: Record<string, unknown> } = {}): Promise<Setup> {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const idp = await startIdentityProvider();
  t.after(() => idp.close());
  idp.register({ tenantId: TENANT, clientId: CLIENT, secret: 'app-secret' });
  const graph: GraphFake = await startGraphFake({
    // Graph accepts only a live token the identity provider issued for Graph's own scope.
    validateToken: (token) => {
      const issued = idp.introspect(token);
      if (!issued) return { ok: false, reason: 'Lifetime validation failed, the token is expired.' };
      if (issued.scope !== `${graph.origin}/.default`) return { ok: false, reason: `Invalid audience: ${issued.scope}` };
      return { ok: true, roles: ['Mail.Send', 'Mail.ReadWrite'] };
    },
  });
  t.after(() => graph.close());
  const outboxDir = join(dir.path, 'outbox');
  const listener = { host: '127.0.0.1', networks: ['127.0.0.1/32'], maxMessageSize: '60MB' };
  const config = await testConfig({
    dir: dir.path,
    listeners: [{ name: 'relay', role: 'relay', port: await freePort(), ...listener }],
    upstreams: {
      graph: { type: 'graph', app: 'contoso', mailbox: MAILBOX, graphBaseUrl: graph.baseUrl, ...(o.graph ?? {}) },
      outbox: { type: 'outbox', dir: outboxDir },
    },
    retry: o.retry ?? { initialDelay: '200ms', maxDelay: '1s' },
    extra: {
      microsoft: { apps: { contoso: { tenantId: TENANT, clientId: CLIENT, clientSecret: 'app-secret', authorityHost: idp.url, caFile: idp.caFile } } },
      routing: { default: 'graph', routes: [{ name: 'elsewhere', match: { recipient: ['@elsewhere.test', '@origin.test'] }, upstream: 'outbox' }] },
    },
  });
  const relay = await startInProcess(config);
  t.after(() => relay.stop());
  return { relay, graph, idp, outboxDir };
}


const isDelivery = (queueId: string, recipient: string, result: string) => (l: Log) =>
  l.event === 'delivery' && l.queueId === queueId && l.recipient === recipient && l.result === result;

test('a small message goes as MIME to exactly its Graph recipients: Bcc-only included, the other route\'s left out', async (t) => {
  const { relay, graph, idp, outboxDir } = await setup(t);
  const raw = await buildMessage({ from: 'app@origin.test', to: ['alice@dest.test', 'carol@elsewhere.test'], cc: 'bob@dest.test', subject: 'Invoice', text: 'see attachment\r\n', attachments: [{ filename: 'inv.pdf', content: scanBytes(40_000) }] });
  const envelope = ['alice@dest.test', 'bob@dest.test', 'carol@elsewhere.test', 'hidden@dest.test'];
  const queueId = await sendRaw(relay, 'app@origin.test', envelope, raw);
  for (const r of ['alice@dest.test', 'bob@dest.test', 'hidden@dest.test']) await relay.waitForLog(isDelivery(queueId, r, 'delivered'));
  await relay.waitForLog(isDelivery(queueId, 'carol@elsewhere.test', 'delivered'));

  assert.equal(graph.deliveries.length, 1);
  const d = graph.deliveries[0]!;
  assert.equal(d.via, 'mime');
  assert.equal(d.mailbox, MAILBOX);
  assert.deepEqual({ to: d.to, cc: d.cc, bcc: d.bcc }, { to: ['alice@dest.test'], cc: ['bob@dest.test'], bcc: ['hidden@dest.test'] });
  const spooledBody = raw.subarray(raw.indexOf('\r\n\r\n') + 4);
  assert.ok(d.mime!.subarray(d.mime!.length - spooledBody.length).equals(spooledBody), 'body bytes as sent');
  assert.match(d.mime!.toString('latin1'), /^Received: from /, 'smarthost\'s Received header travels');
  // carol got her copy from the other route, exactly once.
  const files = (await readdir(outboxDir)).filter((f) => f.endsWith('.eml'));
  assert.equal(files.length, 1);
  assert.match(await readFile(join(outboxDir, files[0]!), 'utf8'), /^Delivered-To: carol@elsewhere\.test\r$/m);
  // The token came from the identity provider, for Graph's scope, through msal.
  assert.ok(idp.issued.some((i) => i.scope === `${graph.origin}/.default` && i.clientId === CLIENT));
  const delivered = relay.logs().find(isDelivery(queueId, 'hidden@dest.test', 'delivered'))!;
  assert.match(String(delivered.reply), /Accepted by Microsoft Graph for scans@contoso\.test \(MIME/);
});

test('a 30 MB scan goes through a draft and an upload session and arrives byte-identical; no request over 4 MB', async (t) => {
  const { relay, graph } = await setup(t);
  const scan = scanBytes(30 * 1024 * 1024);
  const raw = await buildMessage({ from: 'scanner@contoso.test', to: 'alice@dest.test', subject: 'Scan 30 MB', text: 'Scanned document attached.', attachments: [{ filename: 'scan.pdf', content: scan, contentType: 'application/pdf' }] });
  let peakRss = process.memoryUsage().rss;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 20);
  t.after(() => clearInterval(sampler));
  const started = Date.now();
  const queueId = await sendRaw(relay, 'scanner@contoso.test', ['alice@dest.test', 'bcc-only@dest.test'], raw);
  const accepted = Date.now();
  await relay.waitForLog(isDelivery(queueId, 'alice@dest.test', 'delivered'), 60_000);
  const done = Date.now();
  clearInterval(sampler);

  const d = graph.deliveries[0]!;
  assert.equal(d.via, 'draft');
  assert.deepEqual({ to: d.to, cc: d.cc, bcc: d.bcc }, { to: ['alice@dest.test'], cc: [], bcc: ['bcc-only@dest.test'] });
  assert.equal(d.subject, 'Scan 30 MB');
  assert.equal(d.attachments.length, 1);
  assert.equal(d.attachments[0]!.via, 'upload');
  assert.equal(d.attachments[0]!.content.length, scan.length);
  assert.equal(sha256(d.attachments[0]!.content), sha256(scan), 'reassembled byte for byte');
  assert.equal(graph.oversizedRequests, 0, 'the fake never saw an oversized request (413)');
  assert.ok(graph.maxRequestBytes <= 4_000_000, `largest request ${graph.maxRequestBytes} bytes`);
  const puts = graph.requests.filter((r) => r.method === 'PUT');
  assert.equal(puts.length, Math.ceil(scan.length / (12 * 320 * 1024)));
  assert.equal(graph.drafts.size, 0);
  t.diagnostic(`30 MiB scan: SMTP in ${accepted - started} ms, Graph upload ${done - accepted} ms, ${puts.length} PUTs; test process peak RSS ${Math.round(peakRss / 1048576)} MiB (smarthost, both fakes and the test's own copies)`);
});

test('a throttled mailbox (429 Retry-After) is retried after the time Graph asked for, then delivered, nothing bounced', async (t) => {
  // The queue's own backoff is an hour: only the Retry-After can bring the retry back this soon.
  const { relay, graph } = await setup(t, { retry: { initialDelay: '1h', maxDelay: '2h' } });
  graph.throttle(MAILBOX, { retryAfterSeconds: 2 });
  const raw = await buildMessage({ from: 'app@origin.test', to: 'alice@dest.test', text: 'throttled' });
  const queueId = await sendRaw(relay, 'app@origin.test', ['alice@dest.test'], raw);
  const deferred = await relay.waitForLog(isDelivery(queueId, 'alice@dest.test', 'deferred'));
  assert.match(String(deferred.reply), /^451 4\.4\.5 Graph 429 ApplicationThrottled/);
  const wait = Date.parse(String(deferred.nextAttemptAt)) - Date.parse(String(deferred.time));
  assert.ok(wait >= 1900 && wait <= 3000, `retry scheduled after ${wait} ms`);
  const delivered = await relay.waitForLog(isDelivery(queueId, 'alice@dest.test', 'delivered'));
  assert.equal(delivered.attempt, 2);
  assert.ok(Date.parse(String(delivered.time)) >= Date.parse(String(deferred.nextAttemptAt)), 'not before Graph allowed it');
  assert.equal(graph.deliveries.length, 1);
  assert.ok(!relay.logs().some((l) => l.event === 'bounce.queued'), 'no DSN');
});

test('403 ErrorSendAsDenied bounces: the DSN carries Graph\'s error text', async (t) => {
  const { relay, graph, outboxDir } = await setup(t);
  graph.denySendAs(MAILBOX);
  const raw = await buildMessage({ from: 'app@origin.test', to: 'alice@dest.test', subject: 'not allowed', messageId: '<sendas-1@origin.test>' });
  const queueId = await sendRaw(relay, 'app@origin.test', ['alice@dest.test'], raw);
  const bounced = await relay.waitForLog(isDelivery(queueId, 'alice@dest.test', 'bounced'));
  assert.match(String(bounced.reply), /^550 5\.7\.60 Graph 403 ErrorSendAsDenied: The user account which was used to submit this request does not have the right/);
  const queued = await relay.waitForLog((l) => l.event === 'bounce.queued' && l.queueId === queueId);
  await relay.waitForLog(isDelivery(String(queued.bounceId), 'app@origin.test', 'delivered'));
  const files = (await readdir(outboxDir)).filter((f) => f.endsWith('.eml'));
  assert.equal(files.length, 1);
  const dsn = (await readFile(join(outboxDir, files[0]!), 'utf8')).replace(/\r\n[ \t]+/g, ' ');
  assert.match(dsn, /^Delivered-To: app@origin\.test\r$/m);
  assert.match(dsn, /Status: 5\.7\.60/);
  assert.match(dsn, /Diagnostic-Code: smtp; 550 5\.7\.60 Graph 403 ErrorSendAsDenied: The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account/);
  assert.match(dsn, /Send As/);
  assert.equal(graph.deliveries.length, 0);
});

test('a token the identity provider no longer honours: one refresh through msal, then delivered', async (t) => {
  const { relay, graph, idp } = await setup(t);
  const raw = await buildMessage({ from: 'app@origin.test', to: 'alice@dest.test', text: 'first' });
  const first = await sendRaw(relay, 'app@origin.test', ['alice@dest.test'], raw);
  await relay.waitForLog(isDelivery(first, 'alice@dest.test', 'delivered'));
  const issuedBefore = idp.issued.length;
  // msal still holds the token, but at the provider's clock it expired: Graph answers 401.
  idp.advance((idp.tokenLifetimeSeconds + 60) * 1000);
  const second = await sendRaw(relay, 'app@origin.test', ['alice@dest.test'], await buildMessage({ from: 'app@origin.test', to: 'alice@dest.test', text: 'second' }));
  await relay.waitForLog(isDelivery(second, 'alice@dest.test', 'delivered'));
  assert.equal(idp.issued.length, issuedBefore + 1, 'exactly one new token');
  assert.deepEqual(graph.requests.filter((r) => r.path.endsWith('/sendMail')).map((r) => r.status), [202, 401, 202]);
});
