import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import nodemailer from 'nodemailer';
import type { Sink } from '../helpers/sink.js';
import { startRelayToSink, type InProcessDaemon } from '../helpers/daemon.js';

let sink: Sink;
let relay: InProcessDaemon;
let stop: () => Promise<void>;

before(async () => {
  ({ relay, sink, stop } = await startRelayToSink());
});

after(() => stop());

test('a message from an allowed network reaches the upstream byte for byte, with our Received header on top', async () => {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  const body = 'Subject: scan\r\nMessage-ID: <scan-1@printer.local>\r\nFrom: scanner@printer.local\r\n\r\nline one\r\nline two\r\n';
  const info = await client.sendMail({ envelope: { from: 'scanner@printer.local', to: ['alice@example.com'] }, raw: body });
  assert.match(info.response, /^250 2\.0\.0 Ok: queued as [0-9A-Z]{22}$/);
  const [msg] = await sink.waitForMessages(1);
  assert.equal(msg!.sender, 'scanner@printer.local');
  assert.deepEqual(msg!.recipients, ['alice@example.com']);
  const raw = msg!.raw.toString('utf8');
  assert.match(raw, /^Received: from [^\r\n]+\r\n\tby smarthost\.test \(smarthost\) with ESMTP id [0-9A-Z]{22}\r\n/);
  assert.ok(raw.endsWith(body), 'original message follows the Received header unchanged');
  client.close();
});

test('a message without a Message-ID goes out without one: the ID nodemailer is handed for its logs is never written', async () => {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  const body = 'Subject: no id\r\nFrom: scanner@printer.local\r\n\r\nbody\r\n';
  const info = await client.sendMail({ envelope: { from: 'scanner@printer.local', to: ['bob@example.com'] }, raw: body });
  const queueId = /queued as ([0-9A-Z]{22})$/.exec(info.response)![1]!;
  const msg = (await sink.waitForMessages(2)).find((m) => m.recipients.includes('bob@example.com'))!;
  const raw = msg.raw.toString('utf8');
  assert.doesNotMatch(raw, /^Message-ID:/im);
  assert.equal(raw.split(queueId).length, 2, 'the queue ID appears once: in our Received header');
  assert.ok(raw.endsWith(body));
  client.close();
});
