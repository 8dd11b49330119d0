/**
 * The PROXY protocol behind a load balancer, over real loopback sockets: the listener "edge" trusts the
 * network 192.0.2.0/24 (and not loopback) and takes PROXY headers from 127.0.0.1 only. A header from that
 * balancer makes 192.0.2.10 the client: it relays, and the Received header, the log and the per-client rate
 * limit all see 192.0.2.10. The balancer cannot skip the header; any other peer (127.0.0.2) that sends one
 * gets an unknown command and no relay rights.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { freePort, smtpDialog, smtpReplies, smtpReplyCodes } from '../helpers/net.js';
import { startSink, type Sink } from '../helpers/sink.js';

let dir: Awaited<ReturnType<typeof tempDir>>;
let sink: Sink;
let relay: InProcessDaemon;

before(async () => {
  dir = await tempDir();
  sink = await startSink();
  const listeners = [
    {
      name: 'edge',
      role: 'relay',
      host: '127.0.0.1',
      port: await freePort(),
      networks: ['192.0.2.0/24'],
      proxyProtocol: { from: ['127.0.0.1'] },
      rateLimits: { perClient: { messagesPerMinute: 1 } },
    },
    // socketTimeout (5 minutes by default) far beyond the test's timeout: a socket let through waits that long.
    { name: 'crowded', role: 'relay', host: '127.0.0.1', port: await freePort(), networks: ['192.0.2.0/24'], proxyProtocol: { from: ['127.0.0.1'] }, maxClients: 1 },
  ];
  relay = await startInProcess(
    await testConfig({ dir: dir.path, listeners, upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' } } }),
  );
});

after(async () => {
  await relay?.stop();
  await sink?.close();
  await dir?.remove();
});

const proxyLine = (client: string) => `PROXY TCP4 ${client} 127.0.0.1 5555 25\r\n`;

/** A load balancer's connection: the PROXY header at once, then one SMTP command per reply. */
function balancerDialog(preamble: string, commands: string[], localAddress = '127.0.0.1'): Promise<string> {
  return smtpDialog(relay.port('edge'), commands, { preamble, localAddress });
}

function messageCommands(subject: string, to: string): string[] {
  return ['EHLO printer.test', 'MAIL FROM:<scanner@example.com>', `RCPT TO:<${to}>`, 'DATA', `Subject: ${subject}\r\n\r\nscan\r\n.`, 'QUIT'];
}

test('a PROXY header from the allowed balancer is honoured: relayed as 192.0.2.10, which the Received header and the log show', async () => {
  const t = await balancerDialog(proxyLine('192.0.2.10'), messageCommands('proxied', 'boss@example.org'));
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 250, 250, 354, 250, 221], t);
  const queueId = /queued as ([0-9A-Z]{22})/.exec(t)![1]!;
  const received = await relay.waitForLog((l) => l.event === 'received' && l.queueId === queueId);
  assert.equal(received.client, '192.0.2.10');
  const message = await sink.waitForRecipient('boss@example.org');
  const trace = /^Received: from [^\r\n]*(?:\r\n[ \t][^\r\n]*)*/m.exec(message.raw.toString('latin1'))![0];
  assert.match(trace, /\[192\.0\.2\.10\]/);
  assert.doesNotMatch(trace, /127\.0\.0\.1/);
});

test('per-client rate limits count the address from the PROXY header, not the balancer', async () => {
  const first = await balancerDialog(proxyLine('192.0.2.20'), messageCommands('first', 'a@example.org'));
  assert.match(first, /^250 2\.0\.0 Ok: queued as /m);
  const second = await balancerDialog(proxyLine('192.0.2.20'), ['EHLO printer.test', 'MAIL FROM:<scanner@example.com>', 'QUIT']);
  assert.equal(smtpReplies(second)[2], '450 4.7.1 Too many messages from your address, try again later');
  const other = await balancerDialog(proxyLine('192.0.2.21'), messageCommands('other', 'b@example.org'));
  assert.match(other, /^250 2\.0\.0 Ok: queued as /m, 'another client behind the same balancer has its own budget');
});

test('the allowed balancer cannot skip the header: plain SMTP from it is refused before any greeting', async () => {
  const t = await balancerDialog('EHLO printer.test\r\nMAIL FROM:<scanner@example.com>\r\n', []);
  assert.equal(t, '* BAD Invalid PROXY header\r\n');
});

test('a PROXY header from any other peer is not honoured: an unknown command, and relaying as 192.0.2.10 is refused', async () => {
  const t = await smtpDialog(
    relay.port('edge'),
    [proxyLine('192.0.2.10').trimEnd(), 'EHLO spoofer.test', 'MAIL FROM:<scanner@example.com>', 'RCPT TO:<boss@example.org>', 'QUIT'],
    { localAddress: '127.0.0.2' },
  );
  const codes = smtpReplyCodes(t);
  assert.equal(codes[0], 220, t);
  assert.equal(smtpReplies(t)[1], '500 5.5.2 Error: command not recognized');
  assert.equal(smtpReplies(t)[3], '530 5.7.0 Authentication required');
  assert.ok(codes[4]! >= 500, `RCPT without a sender must fail:\n${t}`);
  const refused = await relay.waitForLog((l) => l.event === 'smtp.refused' && l.client === '127.0.0.2');
  assert.equal(refused.reason, 'authentication required');
});

test('a peer that is not the balancer writing the header before the greeting gets nowhere either', async () => {
  const t = await balancerDialog(proxyLine('192.0.2.10'), ['EHLO spoofer.test', 'MAIL FROM:<scanner@example.com>', 'RCPT TO:<boss@example.org>', 'QUIT'], '127.0.0.2');
  const replies = smtpReplies(t);
  // Whether the line arrives before the greeting (smtp-server's early-talker check) or after it, it is no header.
  if (replies[0]!.startsWith('421')) {
    assert.deepEqual(replies, ['421 4.4.2 smarthost.test You talk too soon'], t);
  } else {
    assert.equal(replies[1], '500 5.5.2 Error: command not recognized', t);
    assert.equal(replies[3], '530 5.7.0 Authentication required', t);
  }
  assert.doesNotMatch(t, /^354 /m, t);
});

test('maxClients also bounds connections still owing their PROXY header: one more is dropped at once, the waiting one is still served', { timeout: 20_000 }, async (t) => {
  const server = relay.daemon.listeners.find((l) => l.config.name === 'crowded')!.server.server;
  const connect = async () => {
    // Emitted after smtp-server's own handler has taken the socket (to wait for the header).
    const accepted = new Promise<void>((resolve) => server.once('connection', () => resolve()));
    const socket = net.connect(relay.port('crowded'), '127.0.0.1');
    t.after(() => socket.destroy());
    socket.on('error', () => {});
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    await accepted;
    return { socket, closed };
  };
  const waiting = await connect();
  const extra = await connect();
  await extra.closed;
  assert.equal(waiting.socket.readyState, 'open');
  const greeting = new Promise<string>((resolve) => waiting.socket.once('data', (chunk: Buffer) => resolve(chunk.toString('latin1'))));
  waiting.socket.write(proxyLine('192.0.2.10'));
  assert.match(await greeting, /^220 /);
});
