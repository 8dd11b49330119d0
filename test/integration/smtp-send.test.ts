/**
 * sendRaw hands the spooled message to nodemailer's transport directly (not through sendMail): the envelope goes
 * out in wire form, the message byte for byte, and every file stream it opened is closed, whatever the outcome.
 */
import assert from 'node:assert/strict';
import { createReadStream } from 'node:fs';
import { readdir, readlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import type { SmtpUpstreamConfig } from '../../src/config/schema.js';
import type { SmtpError } from '../../src/smtp-error.js';
import { SmtpUpstream } from '../../src/upstreams/smtp.js';
import type { DeliveryRequest } from '../../src/upstreams/upstream.js';
import { tempDir } from '../helpers/daemon.js';
import { startSink, type SinkOptions } from '../helpers/sink.js';

const RAW = 'From: scanner@printer.local\r\nSubject: scan\r\n\r\nfirst line\r\n.leading dot\r\n';

async function upstreamTo(t: TestContext, sinkOptions: SinkOptions = {}) {
  const sink = await startSink(sinkOptions);
  t.after(() => sink.close());
  const config = { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none', verifyCertificate: true, maxConnections: 2, timeout: 5000 } as SmtpUpstreamConfig;
  const upstream = new SmtpUpstream('up', config, 'smarthost.test');
  t.after(() => upstream.close());
  const dir = await tempDir();
  t.after(() => dir.remove());
  const file = join(dir.path, 'message.msg');
  await writeFile(file, RAW);
  const streams: Readable[] = [];
  /** The chunk size each openMessage() call asked for. */
  const chunkSizes: (number | undefined)[] = [];
  const request = (sender: string, recipients: string[]): DeliveryRequest => ({
    queueId: '01KBQ00000000000000000',
    sender,
    recipients,
    size: RAW.length,
    openMessage: (options) => {
      chunkSizes.push(options?.chunkSize);
      const stream = createReadStream(file, { highWaterMark: options?.chunkSize });
      streams.push(stream);
      return stream;
    },
  });
  return { sink, upstream, request, streams, chunkSizes, file };
}

/** Descriptors of this process open on `file`. */
async function openOn(file: string): Promise<number> {
  let n = 0;
  for (const fd of await readdir('/proc/self/fd')) if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) === file) n++;
  return n;
}

test('the message is read in 256 KiB chunks on its way to an SMTP upstream', async (t) => {
  const { sink, upstream, request, chunkSizes } = await upstreamTo(t);
  const [outcome] = await upstream.deliver(request('scanner@printer.local', ['alice@dest.test']));
  assert.equal(outcome?.delivered, true);
  assert.equal(sink.messages.length, 1);
  assert.deepEqual(chunkSizes, [256 * 1024]);
});

test('international domains go out as A-labels (punycode): they reach a sink that offers no SMTPUTF8', async (t) => {
  const { sink, upstream, request } = await upstreamTo(t, { smtputf8: false });
  const outcomes = await upstream.deliver(request('scanner@drücker.example', ['anna@Bücher.example', 'bob@example.com']));
  assert.deepEqual(
    outcomes.map((o) => [o.recipient, o.delivered]),
    [
      ['anna@Bücher.example', true],
      ['bob@example.com', true],
    ],
  );
  const [received] = await sink.waitForMessages(1);
  assert.equal(received!.wireSender, 'scanner@xn--drcker-4ya.example');
  assert.deepEqual(received!.wireRecipients, ['anna@xn--bcher-kva.example', 'bob@example.com']);
  assert.equal(received!.raw.toString('utf8'), RAW);
});

test('a UTF-8 local part goes out as is, with SMTPUTF8, where the sink offers it', async (t) => {
  const { sink, upstream, request } = await upstreamTo(t);
  const [outcome] = await upstream.deliver(request('scanner@printer.local', ['jörg@example.com']));
  assert.equal(outcome!.delivered, true);
  const [received] = await sink.waitForMessages(1);
  assert.deepEqual(received!.wireRecipients, ['jörg@example.com']);
  assert.equal(received!.mailParameters.SMTPUTF8, true);
});

test('the null sender of a bounce goes out as MAIL FROM:<>', async (t) => {
  const { sink, upstream, request } = await upstreamTo(t);
  const [outcome] = await upstream.deliver(request('', ['postmaster@example.com']));
  assert.equal(outcome!.delivered, true);
  assert.equal((await sink.waitForMessages(1))[0]!.sender, '');
});

test('every message stream is closed after the attempt: delivered, all recipients refused, the message refused after DATA, the connection cut', async (t) => {
  let data: 'accept' | 'tempfail' = 'accept';
  const { upstream, request, streams, file } = await upstreamTo(t, {
    recipientBehaviour: (rcpt) => (rcpt.startsWith('refused') ? 'permfail' : rcpt.startsWith('dropped') ? 'drop' : 'accept'),
    dataBehaviour: () => data,
  });
  const [delivered] = await upstream.deliver(request('a@example.com', ['ok@example.com']));
  assert.equal(delivered!.delivered, true);
  const [refused] = await upstream.deliver(request('a@example.com', ['refused@example.com']));
  assert.equal(refused!.delivered, false);
  assert.equal(!refused!.delivered && refused!.error.code, 550);
  data = 'tempfail';
  // A refusal of the whole message after DATA is thrown, as the same error for every recipient.
  const deferred = await upstream.deliver(request('a@example.com', ['later@example.com'])).then(
    () => assert.fail('delivered despite 451 after DATA'),
    (err: SmtpError) => err,
  );
  assert.equal(deferred.code, 451);
  // The connection cut while the recipients are named: the message was never read.
  const cut = await upstream.deliver(request('a@example.com', ['dropped@example.com'])).then(
    () => assert.fail('delivered over a cut connection'),
    (err: SmtpError) => err,
  );
  assert.equal(cut.temporary, true);

  // At least one per attempt; the cut one more: the pool moves a message whose connection closed before it was
  // read to a fresh connection, which opens the message again.
  assert.ok(streams.length > 4, `${streams.length} streams`);
  for (const stream of streams) assert.ok(stream.destroyed, 'stream destroyed');
  // Closing a file stream's descriptor finishes on the threadpool after destroy(): wait for each 'close'.
  await Promise.all(streams.map((s) => (s.closed ? undefined : new Promise((resolve) => s.once('close', resolve)))));
  assert.equal(await openOn(file), 0, 'no descriptor left open on the message file');
});


test('a refusal after DATA applies only to the recipients accepted at RCPT TO: one deferred there is still deferred, one refused there still refused', async (t) => {
  let data: 'permfail' | 'tempfail' = 'permfail';
  const { upstream, request } = await upstreamTo(t, {
    recipientBehaviour: (rcpt) => (rcpt.startsWith('later') ? 'tempfail' : rcpt.startsWith('gone') ? 'permfail' : 'accept'),
    dataBehaviour: () => data,
  });
  const replies = async (recipients: string[]) =>
    (await upstream.deliver(request('a@example.com', recipients))).map((o) => [o.recipient, o.delivered ? 'delivered' : `${o.error.code} ${o.error.enhanced}`]);

  // 451 at RCPT, then 554 for the message: the first recipient is retried, not bounced.
  assert.deepEqual(await replies(['later@example.com', 'ok@example.com']), [
    ['later@example.com', '451 4.2.0'],
    ['ok@example.com', '554 5.6.0'],
  ]);
  // 550 at RCPT, then 451 for the message: the first recipient is bounced, not retried.
  data = 'tempfail';
  assert.deepEqual(await replies(['gone@example.com', 'ok@example.com']), [
    ['gone@example.com', '550 5.1.1'],
    ['ok@example.com', '451 4.3.0'],
  ]);
});
