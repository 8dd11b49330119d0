/**
 * SMTP smuggling (CVE-2023-51764 class): a client hides a second message behind an end-of-data marker that
 * smarthost does not treat as one but an upstream might. Data must end only at <CRLF>.<CRLF>, and every bare
 * CR or LF must be stored as CRLF so no upstream can find a different boundary in what smarthost relays.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { smtpDialog, smtpReplies } from '../helpers/net.js';
import type { Sink } from '../helpers/sink.js';
import { startRelayToSink, type InProcessDaemon } from '../helpers/daemon.js';

const MARKERS: Record<string, string> = {
  'LF . CRLF': '\n.\r\n',
  'CR . CRLF': '\r.\r\n',
  'LF . LF': '\n.\n',
  'CR . CR': '\r.\r',
  'CRLF . LF': '\r\n.\n',
  'LF . CR': '\n.\r',
};

let sink: Sink;
let relay: InProcessDaemon;
let stop: () => Promise<void>;

before(async () => {
  ({ relay, sink, stop } = await startRelayToSink());
});

after(() => stop());

let sent = 0;
for (const [name, marker] of Object.entries(MARKERS)) {
  test(`a second message smuggled behind "${name}" stays part of the first, normalised to CRLF`, async () => {
    const id = `smuggle-${++sent}@test`;
    const smuggled =
      `Subject: outer\r\nMessage-ID: <${id}>\r\n\r\nbefore${marker}` +
      'MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@target.example>\r\nDATA\r\n' +
      'Subject: smuggled\r\n\r\nspoofed body\r\n.\r\n';
    const transcript = await smtpDialog(relay.port('relay'), [
      'EHLO client.test',
      'MAIL FROM:<sender@example.com>',
      'RCPT TO:<rcpt@example.com>',
      'DATA',
      `RAW:${smuggled}`,
      'QUIT',
    ]);
    const replies = smtpReplies(transcript);
    // greeting, EHLO, MAIL, RCPT, 354, exactly one end-of-data reply, QUIT: nothing answered the hidden commands.
    assert.equal(replies.filter((r) => /^250 2\.0\.0 Ok: queued as/.test(r)).length, 1, transcript);
    assert.match(replies.at(-1) ?? '', /^221/, transcript);

    const messages = await sink.waitForMessages(sent);
    const mine = messages.filter((m) => m.raw.includes(id));
    assert.equal(mine.length, 1, 'the upstream sees exactly one message');
    assert.deepEqual(mine[0]!.recipients, ['rcpt@example.com']);
    assert.ok(!sink.deliveredRecipients().includes('victim@target.example'), 'the smuggled recipient got nothing');
    const raw = mine[0]!.raw.toString('latin1');
    assert.doesNotMatch(raw, /\r(?!\n)|(?<!\r)\n/, 'no bare CR or LF reaches the upstream');
    assert.match(raw, /MAIL FROM:<evil@attacker\.example>\r\nRCPT TO:<victim@target\.example>/, 'the hidden commands are body text');
  });
}
