/**
 * The 16 relay attempts of nmap's smtp-open-relay script, against both listener roles. From outside the
 * allowed networks every one must be refused; from inside, a trick address must never reach a destination
 * other than the one its plain form names (smarthost refuses the tricks outright).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { smtpDialog, smtpReplies } from '../helpers/net.js';
import type { Sink } from '../helpers/sink.js';
import { startRelayToSink, type InProcessDaemon } from '../helpers/daemon.js';

const TARGET = 'relaytest@nmap.scanme.org';
const IP = '[127.0.0.1]';
const HOST = 'ESMTP';

/** [MAIL FROM, RCPT TO] exactly as nmap's script sends them (its own IP literal and the banner's host name). */
const VECTORS: [string, string][] = [
  ['<>', `<${TARGET}>`],
  ['<antispam@nmap.scanme.org>', `<${TARGET}>`],
  [`<antispam@${HOST}>`, `<${TARGET}>`],
  [`<antispam@${IP}>`, `<${TARGET}>`],
  [`<antispam@${IP}>`, `<relaytest%nmap.scanme.org@${IP}>`],
  [`<antispam@${IP}>`, `<relaytest%nmap.scanme.org@${HOST}>`],
  [`<antispam@${IP}>`, `<"${TARGET}">`],
  [`<antispam@${IP}>`, `<"relaytest%nmap.scanme.org">`],
  [`<antispam@${IP}>`, `<${TARGET}@${IP}>`],
  [`<antispam@${IP}>`, `<"${TARGET}"@${IP}>`],
  [`<antispam@${IP}>`, `<${TARGET}@${HOST}>`],
  [`<antispam@${IP}>`, `<@${IP}:${TARGET}>`],
  [`<antispam@${IP}>`, `<@${HOST}:${TARGET}>`],
  [`<antispam@${IP}>`, `<nmap.scanme.org!relaytest>`],
  [`<antispam@${IP}>`, `<nmap.scanme.org!relaytest@${IP}>`],
  [`<antispam@${IP}>`, `<nmap.scanme.org!relaytest@${HOST}>`],
];

let sink: Sink;
let relay: InProcessDaemon;
let stop: () => Promise<void>;

before(async () => {
  ({ relay, sink, stop } = await startRelayToSink());
});

after(() => stop());

async function attempt(listener: string, from: string, to: string, localAddress: string): Promise<string[]> {
  const transcript = await smtpDialog(
    relay.port(listener),
    ['EHLO nmap.scanme.org', `MAIL FROM:${from}`, `RCPT TO:${to}`, 'DATA', `RAW:Subject: relay test\r\nMessage-ID: <${from}${to}>\r\n\r\ntest\r\n.\r\n`, 'QUIT'],
    { localAddress },
  );
  return smtpReplies(transcript);
}

for (const listener of ['relay', 'submission']) {
  test(`all 16 nmap relay vectors are refused by the ${listener} listener from outside the allowed networks`, async (t) => {
    let refused = 0;
    for (const [from, to] of VECTORS) {
      const replies = await attempt(listener, from, to, '127.0.0.2');
      const [, , mail, rcpt, data] = replies;
      assert.match(mail ?? '', /^530 5\.7\.0/, `MAIL FROM:${from} must need authentication`);
      assert.doesNotMatch(rcpt ?? '', /^2/, `RCPT TO:${to} must not be accepted`);
      assert.doesNotMatch(data ?? '', /^354/, 'DATA must not be accepted');
      refused++;
    }
    t.diagnostic(`${listener}: ${refused}/16 relay vectors refused`);
    assert.equal(refused, 16);
  });
}

test('from an allowed address, trick recipients are refused and plain ones go only to the address they name', async (t) => {
  let refusedTricks = 0;
  for (const [from, to] of VECTORS) {
    const replies = await attempt('relay', from, to, '127.0.0.1');
    const rcpt = replies[3] ?? '';
    if (to === `<${TARGET}>`) {
      assert.match(rcpt, /^250/, `plain ${to} from an allowed client is accepted`);
      assert.match(replies[5] ?? '', /^250 2\.0\.0 Ok: queued as/);
    } else {
      assert.match(rcpt, /^5\d\d /, `trick recipient ${to} must be refused`);
      refusedTricks++;
    }
  }
  t.diagnostic(`allowed client: ${refusedTricks} trick recipients refused, 4 plain ones accepted`);
  assert.equal(refusedTricks, 12);
  // The four plain vectors arrive, each addressed to exactly the plain target and nothing else.
  const messages = await sink.waitForMessages(4);
  assert.equal(sink.messages.length, 4);
  for (const m of messages) assert.deepEqual(m.recipients, [TARGET]);
});
