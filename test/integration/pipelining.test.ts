/**
 * PIPELINING (RFC 2920) across message boundaries: a client may send the next transaction right behind a
 * message's end-of-data, in the same write. Found by test/fuzz: the session stopped reading commands after
 * the second message, because smtp-server's SMTPStream.continue() lost the continuation that message had
 * registered when the listener answered MAIL synchronously.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { smtpDialog, smtpReplies, smtpReplyCodes } from '../helpers/net.js';

let dir: Awaited<ReturnType<typeof tempDir>>;
let relay: InProcessDaemon;

before(async () => {
  dir = await tempDir();
  relay = await startInProcess(await testConfig({ dir: dir.path }));
});

after(async () => {
  await relay?.stop();
  await dir?.remove();
});

const transaction = (subject: string, rcpt: string): string =>
  `MAIL FROM:<sender@example.com>\r\nRCPT TO:<${rcpt}>\r\nDATA\r\nSubject: ${subject}\r\n\r\nbody\r\n.\r\n`;

const loop = (rcpt: string): string =>
  `MAIL FROM:<sender@example.com>\r\nRCPT TO:<${rcpt}>\r\nDATA\r\n${'Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n'.repeat(31)}\r\nloop\r\n.\r\n`;

const CASES: [string, string, number][] = [
  ['an accepted message', transaction('first', 'one@example.com'), 250],
  ['a refused message (mail loop)', loop('one@example.com'), 554],
];

for (const [name, first, firstReply] of CASES) {
  test(`after ${name}, a transaction pipelined behind it in the same write is answered, and so is the next command`, async () => {
    const t = await smtpDialog(relay.port('relay'), ['EHLO client.test', `RAW:${first}${transaction('second', 'two@example.com')}`, 'NOOP', 'QUIT']);
    assert.deepEqual(smtpReplyCodes(t), [220, 250, 250, 250, 354, firstReply, 250, 250, 354, 250, 250, 221], t);
    assert.match(smtpReplies(t)[9]!, /^250 2\.0\.0 Ok: queued as [0-9A-Z]{22}$/);
  });
}
