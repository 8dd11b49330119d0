/**
 * PIPELINING (RFC 2920) across message boundaries: a client may send the next transaction right behind a
 * message's end-of-data, in the same write. Found by test/fuzz: the session stopped reading commands after
 * the second message, because smtp-server's SMTPStream.continue() lost the continuation that message had
 * registered when the listener answered MAIL synchronously.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
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

/** Every chunk the client reads until `done` says the text so far is complete. */
function readChunks(socket: Socket, done: (text: string) => boolean): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const chunks: string[] = [];
    const timer = setTimeout(() => reject(new Error(`timed out; read so far: ${JSON.stringify(chunks)}`)), 5000);
    const onData = (data: Buffer) => {
      chunks.push(data.toString('latin1'));
      if (!done(chunks.join(''))) return;
      clearTimeout(timer);
      socket.off('data', onData);
      resolve(chunks);
    };
    socket.on('data', onData);
  });
}

test('the replies to MAIL, RCPT and DATA pipelined in one write come back in one segment', async () => {
  const socket = connect(relay.port('relay'), '127.0.0.1');
  try {
    await readChunks(socket, (text) => /^220 .*\r\n$/m.test(text));
    socket.write('EHLO client.test\r\n');
    await readChunks(socket, (text) => /^250 .*\r\n$/m.test(text));
    for (let round = 0; round < 3; round++) {
      socket.write('MAIL FROM:<sender@example.com>\r\nRCPT TO:<one@example.com>\r\nDATA\r\n');
      const chunks = await readChunks(socket, (text) => (text.match(/^\d\d\d .*\r\n/gm) ?? []).length >= 3);
      assert.equal(chunks.length, 1, `one segment expected, got ${JSON.stringify(chunks)}`);
      assert.deepEqual(smtpReplyCodes(chunks[0]!), [250, 250, 354]);
      socket.write(`Subject: round ${round}\r\n\r\nbody\r\n.\r\n`);
      const end = await readChunks(socket, (text) => /^\d\d\d .*\r\n$/m.test(text));
      assert.match(end.join(''), /^250 2\.0\.0 Ok: queued as /);
    }
  } finally {
    socket.destroy();
  }
});
