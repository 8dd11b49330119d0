/**
 * A month-end burst against a provider limit, end to end: 100 messages from one mailbox through an smtp upstream
 * limited to 30 messages a minute (Exchange Online's figure) reach a real sink 30 per minute as the daemon's
 * clock moves on (an offset clock, no sleeping), every one once, none bounced, every wait logged.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import nodemailer from 'nodemailer';
import { systemClock, type Clock } from '../../src/delivery/clock.js';
import { startInProcess, tempDir, testConfig } from '../helpers/daemon.js';
import { startSink } from '../helpers/sink.js';

const MINUTE = 60_000;

test('a burst of 100 messages through an upstream limited to 30 a minute arrives 30 a minute, none bounced', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const sink = await startSink();
  t.after(() => sink.close());
  let offset = 0;
  const clock: Clock = { now: () => Date.now() + offset, setTimer: systemClock.setTimer };
  const config = await testConfig({
    dir: dir.path,
    upstreams: { exchange: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none', limits: { messagesPerMinute: 30, mode: 'sliding' } } },
  });
  const relay = await startInProcess(config, clock);
  t.after(() => relay.stop());

  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true, pool: true, maxConnections: 5 });
  t.after(() => client.close());
  await Promise.all(
    Array.from({ length: 100 }, (_, i) =>
      client.sendMail({ envelope: { from: 'erp@contoso.test', to: [`customer${i}@example.net`] }, raw: `From: erp@contoso.test\r\nTo: customer${i}@example.net\r\nSubject: invoice ${i}\r\n\r\nInvoice ${i}\r\n` }),
    ),
  );

  // No attempt in flight: whatever is left waits for its window, so moving the clock is all that releases more.
  const settled = async () => {
    for (let i = 0; i < 500 && relay.daemon.scheduler.activeCount > 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(relay.daemon.scheduler.activeCount, 0, 'deliveries settle');
  };
  const arrived: number[] = [];
  for (let minute = 0; minute < 4; minute++) {
    await sink.waitForMessages(Math.min(100, 30 * (minute + 1)));
    await settled();
    arrived.push(sink.messages.length);
    offset += MINUTE;
    relay.daemon.scheduler.poke();
  }
  assert.deepEqual(arrived, [30, 60, 90, 100]);
  const recipients = sink.messages.flatMap((m) => m.recipients);
  assert.equal(new Set(recipients).size, 100, 'each message delivered once');
  assert.equal(recipients.length, 100);
  const results = relay.logs().filter((l) => l.event === 'delivery').map((l) => l.result);
  assert.deepEqual([...new Set(results)], ['delivered'], 'a limit defers, it never bounces');
  assert.ok(relay.logs().filter((l) => l.event === 'delivery').every((l) => l.attempt === 1), 'waiting for the window counts no attempt');
  assert.equal(relay.logs().filter((l) => l.event === 'limit.deferred').length, 70 + 40 + 10, 'each wait is logged');
  assert.equal(relay.daemon.scheduler.size, 0);
});
