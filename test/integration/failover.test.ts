/**
 * Failover between two real SMTP sinks: while the route's upstream refuses connections, mail goes to the
 * fallback in the same attempt; once it is marked down it is skipped; after upstreamProbeAfter one delivery
 * probes it, and once it answers again mail goes back to it. Nothing is deferred or bounced.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import nodemailer from 'nodemailer';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { freePort } from '../helpers/net.js';
import { startSink } from '../helpers/sink.js';

async function send(relay: InProcessDaemon, id: string): Promise<void> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  try {
    const raw = `From: app@origin.test\r\nTo: someone@dest.test\r\nSubject: ${id}\r\nMessage-ID: <${id}@origin.test>\r\n\r\nbody\r\n`;
    await client.sendMail({ envelope: { from: 'app@origin.test', to: ['someone@dest.test'] }, raw });
  } finally {
    client.close();
  }
}

test('failover: to the second sink while the first refuses connections, and back once it listens again', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const primaryPort = await freePort();
  const backup = await startSink();
  t.after(() => backup.close());
  const smtp = (port: number) => ({ type: 'smtp', host: '127.0.0.1', port, security: 'none', timeout: '5s' });
  const config = await testConfig({
    dir: dir.path,
    upstreams: { primary: smtp(primaryPort), backup: smtp(backup.port) },
    retry: { initialDelay: '1m' },
  });
  config.routing = { default: 'primary', routes: [{ name: 'all', upstream: 'primary', fallbacks: ['backup'] }] };
  config.admin = { ...(config.admin as object), upstreamDownAfter: 2, upstreamProbeAfter: '300ms' };
  const relay = await startInProcess(config);
  t.after(() => relay.stop());

  let primary: Awaited<ReturnType<typeof startSink>> | undefined;

  for (const id of ['m1', 'm2']) {
    await send(relay, id);
    await backup.waitForMessages(Number(id.slice(1)));
  }
  await relay.waitForLog((l) => l.event === 'upstream.down' && l.upstream === 'primary');
  const failovers = relay.logs().filter((l) => l.event === 'failover');
  assert.deepEqual(failovers.map((l) => [l.upstream, l.reason]), [['primary', 'temporary'], ['primary', 'temporary']]);

  await send(relay, 'm3');
  await backup.waitForMessages(3);
  assert.ok(relay.logs().some((l) => l.event === 'failover' && l.reason === 'down'), 'a down upstream is skipped, not tried');

  primary = await startSink({ port: primaryPort });
  t.after(() => primary!.close());
  // The probe waits for upstreamProbeAfter (300ms) since the last refusal; until then mail still goes to the backup.
  for (let i = 4; primary.messages.length === 0; i++) {
    assert.ok(i < 200, 'the primary was never probed');
    await send(relay, `m${i}`);
    await relay.waitForLog(() => relay.logs().filter((l) => l.event === 'delivery').length >= i);
  }
  await relay.waitForLog((l) => l.event === 'upstream.up' && l.upstream === 'primary');
  const before = backup.messages.length;
  await send(relay, 'back');
  await primary.waitForMessages(2);
  assert.equal(backup.messages.length, before, 'back on the primary once it answered');
  const results = relay.logs().filter((l) => l.event === 'delivery').map((l) => l.result);
  assert.ok(results.every((r) => r === 'delivered'), `nothing deferred or bounced: ${results.join(', ')}`);
});
