/**
 * Routing and rewriting through the running daemon, with real smtp-server sinks as upstreams: recipients
 * split by route (each tracked once, retried per group), sender rewriting seen at each sink (envelope, From,
 * Reply-To, trace headers) with the body byte-identical, forced central senders, per-user upstreams,
 * header-From and network routes, test mode (global and per route), and sender restrictions at MAIL FROM.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import nodemailer from 'nodemailer';
import { hashPassword } from '../../src/inbound/passwords.js';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';
import { freePort, smtpDialog, smtpReplies } from '../helpers/net.js';
import { startSink, type Sink, type SinkMessage, type SinkOptions } from '../helpers/sink.js';

type Log = Record<string, unknown>;

const PASSWORD = 'routing test password';
let passwordHash: Promise<string> | undefined;

interface Setup {
  relay: InProcessDaemon;
  sinks: { a: Sink; b: Sink; c: Sink };
}

/**
 * Three sinks as upstreams a, b, c (c is the default), a relay listener trusting 127.0.0.1 and 127.0.0.2
 * and a submission listener; `extra` adds routing, rewrite, senderRestrictions and users.
 */
async function setup(t: TestContext, extra: Record<string, unknown>, sinkOptions: { a?: SinkOptions; b?: SinkOptions; c?: SinkOptions } = {}): Promise<Setup> {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const sinks = { a: await startSink(sinkOptions.a), b: await startSink(sinkOptions.b), c: await startSink(sinkOptions.c) };
  t.after(() => Promise.all(Object.values(sinks).map((s) => s.close())));
  const upstreams = Object.fromEntries(Object.entries(sinks).map(([name, s]) => [name, { type: 'smtp', host: '127.0.0.1', port: s.port, security: 'none' }]));
  const config = await testConfig({
    dir: dir.path,
    upstreams,
    defaultUpstream: 'c',
    retry: { initialDelay: '200ms', maxDelay: '1s' },
    listeners: [
      { name: 'relay', role: 'relay', host: '127.0.0.1', port: await freePort(), networks: ['127.0.0.1/32', '127.0.0.2/32'] },
      { name: 'submission', role: 'submission', host: '127.0.0.1', port: await freePort(), allowInsecureAuth: true },
    ],
    extra: { ...extra, routing: { default: 'c', ...(extra.routing as object | undefined) } },
  });
  const relay = await startInProcess(config);
  t.after(() => relay.stop());
  return { relay, sinks };
}

async function user(name: string, fields: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  passwordHash ??= hashPassword(PASSWORD);
  return { name, passwordHash: await passwordHash, ...fields };
}

/** Sends a raw message; returns the queue ID. */
async function send(
  relay: InProcessDaemon,
  envelope: { from: string; to: string[] },
  raw: string | Buffer,
  o: { listener?: string; localAddress?: string; user?: string } = {},
): Promise<string> {
  const client = nodemailer.createTransport({
    host: '127.0.0.1',
    port: relay.port(o.listener ?? 'relay'),
    secure: false,
    ignoreTLS: true,
    ...(o.localAddress ? { localAddress: o.localAddress } : {}),
    ...(o.user ? { auth: { user: o.user, pass: PASSWORD } } : {}),
  });
  try {
    const info = await client.sendMail({ envelope, raw });
    const m = /queued as ([0-9A-Z]{22})$/.exec(info.response);
    assert.ok(m, `unexpected reply: ${info.response}`);
    return m[1]!;
  } finally {
    client.close();
  }
}

const removed = (queueId: string) => (l: Log) => l.event === 'queue.removed' && l.queueId === queueId;

/** The body: every byte after the empty line that ends the header block. */
function bodyOf(raw: Buffer): Buffer {
  const end = raw.indexOf('\r\n\r\n');
  assert.notEqual(end, -1, 'the message has a header block');
  return raw.subarray(end + 4);
}

/** Unfolded values of a header field in the header block (not the body). */
function headers(raw: Buffer, name: string): string[] {
  const block = raw.subarray(0, raw.indexOf('\r\n\r\n') + 2).toString('utf8').replace(/\r\n(?=[ \t])/g, '');
  return block
    .split('\r\n')
    .filter((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`))
    .map((l) => l.slice(name.length + 1).trim());
}

/** A body that a careless rewriter or transport would change: a From line, dot lines, empty lines, 8-bit text. */
const TRICKY_BODY =
  'Scan attached.\r\n\r\nFrom: scanner@printer.local\r\n.\r\n..two dots\r\n.leading dot\r\n\r\n\r\n' +
  'Gr\u00fc\u00dfe aus dem B\u00fcro\r\n' +
  `${'x'.repeat(990)}\r\n` +
  '--end--\r\n';

function message(o: { from?: string; subject: string; extraHeaders?: string; body?: string }): Buffer {
  const from = o.from === undefined ? 'From: "Scanner" <scanner@printer.local>\r\n' : o.from ? `From: ${o.from}\r\n` : '';
  return Buffer.from(
    `${from}To: someone@contoso.com\r\nSubject: ${o.subject}\r\nMessage-ID: <${o.subject.replace(/\W/g, '-')}@routing.test>\r\n` +
      `MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n${o.extraHeaders ?? ''}\r\n${o.body ?? TRICKY_BODY}`,
    'utf8',
  );
}

function deliveries(relay: InProcessDaemon, queueId: string): string[] {
  return relay
    .logs()
    .filter((l) => l.event === 'delivery' && l.queueId === queueId)
    .map((l) => `${String(l.recipient)}@${String(l.upstream)}:${String(l.result)}`)
    .sort();
}

function byRecipient(sink: Sink, recipient: string): SinkMessage {
  const found = sink.messages.filter((m) => m.recipients.includes(recipient));
  assert.equal(found.length, 1, `exactly one message for ${recipient} at sink ${sink.port}`);
  return found[0]!;
}

test('recipients split by route: each sink gets exactly its recipients; a tempfail retries only that group; rewriting seen at each sink, body identical', async (t) => {
  let bAttempts = 0;
  const { relay, sinks } = await setup(
    t,
    {
      routing: {
        routes: [
          { name: 'partner', match: { recipient: '@partner.test' }, upstream: 'a' },
          { name: 'contoso', match: { recipient: ['@contoso.com', '@contoso.de'] }, upstream: 'b' },
        ],
      },
      rewrite: [{ match: 'scanner@printer.local', to: 'scans@contoso.com', displayName: { set: 'Scan Service' } }],
    },
    // Sink b refuses the first DATA temporarily, then accepts.
    { b: { dataBehaviour: () => (++bAttempts === 1 ? 'tempfail' : 'accept') } },
  );
  const raw = message({ subject: 'split by route' });
  const recipients = ['p1@partner.test', 'c1@contoso.com', 'x@other.test', 'p2@partner.test', 'c2@contoso.de'];
  const queueId = await send(relay, { from: 'scanner@printer.local', to: recipients }, raw);

  const deferred = await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === queueId && l.result === 'deferred');
  assert.equal(deferred.upstream, 'b');
  await relay.waitForLog(removed(queueId));

  // Each sink: exactly its recipients, each once, nothing else.
  assert.deepEqual(sinks.a.messages.map((m) => m.recipients), [['p1@partner.test', 'p2@partner.test']]);
  assert.deepEqual(sinks.c.messages.map((m) => m.recipients), [['x@other.test']]);
  // The retry of b's group may come as one delivery or, because each recipient's backoff gets its own
  // ±10% jitter (see the report), as one per recipient; either way only b's recipients, each once.
  assert.deepEqual(sinks.b.deliveredRecipients().sort(), ['c1@contoso.com', 'c2@contoso.de']);
  assert.equal(bAttempts, 1 + sinks.b.messages.length, 'sink b saw the refused first attempt, then only the retries');
  // Each recipient's state is tracked once: the retry carried only the deferred group.
  assert.deepEqual(deliveries(relay, queueId), [
    'c1@contoso.com@b:deferred',
    'c1@contoso.com@b:delivered',
    'c2@contoso.de@b:deferred',
    'c2@contoso.de@b:delivered',
    'p1@partner.test@a:delivered',
    'p2@partner.test@a:delivered',
    'x@other.test@c:delivered',
  ]);
  const routed = relay.logs().filter((l) => l.event === 'routed' && l.queueId === queueId);
  assert.deepEqual(
    routed.map((l) => `${String(l.via)}>${String(l.upstream)}`).sort(),
    ['default>c', 'routes[0] partner>a', ...Array<string>(bAttempts).fill('routes[1] contoso>b')],
  );

  for (const m of [...sinks.a.messages, ...sinks.b.messages, ...sinks.c.messages]) {
    assert.equal(m.sender, 'scans@contoso.com', 'envelope MAIL FROM rewritten');
    assert.deepEqual(headers(m.raw, 'From'), ['"Scan Service" <scans@contoso.com>']);
    assert.deepEqual(headers(m.raw, 'Reply-To'), ['"Scanner" <scanner@printer.local>']);
    assert.deepEqual(headers(m.raw, 'X-Smarthost-Original-Sender'), ['<scanner@printer.local>']);
    assert.deepEqual(headers(m.raw, 'X-Smarthost-Original-From'), ['"Scanner" <scanner@printer.local>']);
    assert.equal(headers(m.raw, 'Received').length, 1, 'the Received header smarthost added');
    assert.deepEqual(headers(m.raw, 'Subject'), ['split by route']);
    assert.ok(bodyOf(m.raw).equals(bodyOf(raw)), 'body bytes identical to what was sent');
  }
  const rewritten = relay.logs().filter((l) => l.event === 'rewritten' && l.queueId === queueId);
  assert.ok(rewritten.length >= 3 && rewritten.every((l) => l.sender === 'scanner@printer.local' && l.rewrittenSender === 'scans@contoso.com'));
});

test('a route with a forced central sender: envelope and From become it, the original is kept for replies and tracing', async (t) => {
  const { relay, sinks } = await setup(t, {
    routing: { routes: [{ name: 'erp', match: { sender: '@erp.local' }, upstream: 'a', sender: 'noreply@contoso.com' }] },
    rewrite: [{ match: '@erp.local', to: 'rule@contoso.com' }],
  });
  const raw = message({ from: '"ERP System" <erp@erp.local>', subject: 'invoice 42' });
  const queueId = await send(relay, { from: 'erp@erp.local', to: ['customer@partner.test'] }, raw);
  await relay.waitForLog(removed(queueId));
  assert.equal(sinks.c.messages.length, 0);
  const [m] = sinks.a.messages;
  assert.ok(m && sinks.a.messages.length === 1);
  assert.equal(m.sender, 'noreply@contoso.com', 'the forced sender beats the alias rule');
  assert.deepEqual(headers(m.raw, 'From'), ['"ERP System" <noreply@contoso.com>']);
  assert.deepEqual(headers(m.raw, 'Reply-To'), ['"ERP System" <erp@erp.local>']);
  assert.deepEqual(headers(m.raw, 'X-Smarthost-Original-Sender'), ['<erp@erp.local>']);
  assert.deepEqual(headers(m.raw, 'X-Smarthost-Original-From'), ['"ERP System" <erp@erp.local>']);
  assert.ok(bodyOf(m.raw).equals(bodyOf(raw)));
});

test('a central sender with a display name and a reply address (the seeds\' "sender name" and "reply to"): From and Reply-To as configured, body untouched', async (t) => {
  const { relay, sinks } = await setup(t, {
    users: [await user('erp', { sender: { address: 'erp-central@contoso.com', name: 'ERP Müller GmbH' } })],
    routing: {
      routes: [
        {
          name: 'invoices',
          match: { sender: '@erp.local', listener: 'relay' },
          upstream: 'a',
          sender: { address: 'invoices@contoso.com', name: 'Contoso Accounting', replyTo: 'accounting@contoso.com' },
        },
        { name: 'users', match: { user: 'erp' }, upstream: 'b', sender: 'users@contoso.com' },
      ],
    },
  });
  const raw = message({ from: '"ERP System" <erp@erp.local>', subject: 'invoice 43' });
  const routed = await send(relay, { from: 'erp@erp.local', to: ['customer@partner.test'] }, raw);
  const byUser = await send(relay, { from: 'app@erp.local', to: ['c@partner.test'] }, raw, { listener: 'submission', user: 'erp' });
  await relay.waitForLog(removed(routed));
  await relay.waitForLog(removed(byUser));

  const [m] = sinks.a.messages;
  assert.ok(m && sinks.a.messages.length === 1);
  assert.equal(m.sender, 'invoices@contoso.com');
  assert.deepEqual(headers(m.raw, 'From'), ['"Contoso Accounting" <invoices@contoso.com>']);
  assert.deepEqual(headers(m.raw, 'Reply-To'), ['<accounting@contoso.com>'], 'the configured reply address, not the original From');
  assert.deepEqual(headers(m.raw, 'X-Smarthost-Original-From'), ['"ERP System" <erp@erp.local>']);
  assert.ok(bodyOf(m.raw).equals(bodyOf(raw)));

  // The user's central sender beats the route's; its name is encoded, and without a reply address the original answers.
  const [u] = sinks.b.messages;
  assert.ok(u && sinks.b.messages.length === 1);
  assert.equal(u.sender, 'erp-central@contoso.com');
  assert.deepEqual(headers(u.raw, 'From'), ['=?UTF-8?Q?ERP_M=C3=BCller_GmbH?= <erp-central@contoso.com>']);
  assert.deepEqual(headers(u.raw, 'Reply-To'), ['"ERP System" <erp@erp.local>']);
});

test('an authenticated user with an own upstream beats the route rules; a user without one follows them', async (t) => {
  const { relay, sinks } = await setup(t, {
    users: [await user('erp', { upstream: 'c', sender: 'erp-central@contoso.com' }), await user('plain')],
    routing: { routes: [{ name: 'contoso', match: { recipient: '@contoso.com' }, upstream: 'b' }] },
  });
  const raw = message({ from: 'app@erp.local', subject: 'from a user' });
  const own = await send(relay, { from: 'app@erp.local', to: ['c1@contoso.com'] }, raw, { listener: 'submission', user: 'erp' });
  const plain = await send(relay, { from: 'app@erp.local', to: ['c2@contoso.com'] }, raw, { listener: 'submission', user: 'plain' });
  await relay.waitForLog(removed(own));
  await relay.waitForLog(removed(plain));

  assert.deepEqual(sinks.c.messages.map((m) => m.recipients), [['c1@contoso.com']], "erp's own upstream");
  assert.deepEqual(sinks.b.messages.map((m) => m.recipients), [['c2@contoso.com']], 'the rule, for a user without upstream');
  assert.equal(sinks.a.messages.length, 0);
  const viaUser = relay.logs().find((l) => l.event === 'routed' && l.queueId === own);
  assert.equal(viaUser?.via, 'user erp');
  // The user's own central sender goes with it; the other user's mail keeps its sender.
  assert.equal(sinks.c.messages[0]!.sender, 'erp-central@contoso.com');
  assert.deepEqual(headers(sinks.c.messages[0]!.raw, 'From'), ['<erp-central@contoso.com>']);
  assert.equal(sinks.b.messages[0]!.sender, 'app@erp.local');
  assert.deepEqual(headers(sinks.b.messages[0]!.raw, 'From'), ['app@erp.local']);
  assert.deepEqual(headers(sinks.b.messages[0]!.raw, 'X-Smarthost-Original-Sender'), []);
  assert.ok(bodyOf(sinks.b.messages[0]!.raw).equals(bodyOf(raw)));
});

test('header From route: the same envelope sender goes different ways by the From in the message', async (t) => {
  const { relay, sinks } = await setup(t, {
    routing: { routes: [{ name: 'accounting', match: { headerFrom: '@accounting.contoso.com' }, upstream: 'a' }] },
  });
  const accounting = await send(relay, { from: 'app@erp.local', to: ['r@partner.test'] }, message({ from: 'Clerk <clerk@accounting.contoso.com>', subject: 'acc' }));
  const other = await send(relay, { from: 'app@erp.local', to: ['r@partner.test'] }, message({ from: 'Sales <sales@contoso.com>', subject: 'other' }));
  const none = await send(relay, { from: 'app@erp.local', to: ['r@partner.test'] }, message({ from: '', subject: 'no from' }));
  for (const id of [accounting, other, none]) await relay.waitForLog(removed(id));
  assert.deepEqual(sinks.a.messages.map((m) => headers(m.raw, 'Subject')[0]), ['acc']);
  assert.deepEqual(sinks.c.messages.map((m) => headers(m.raw, 'Subject')[0]).sort(), ['no from', 'other']);
  // Without rules, nothing is rewritten: the message arrives as stored.
  assert.deepEqual(headers(sinks.a.messages[0]!.raw, 'From'), ['Clerk <clerk@accounting.contoso.com>']);
  assert.deepEqual(headers(sinks.c.messages.find((m) => headers(m.raw, 'Subject')[0] === 'no from')!.raw, 'From'), []);
});

test('network route: a client bound to 127.0.0.2 takes its route, one from 127.0.0.1 the default', async (t) => {
  const { relay, sinks } = await setup(t, {
    routing: { routes: [{ name: 'floor2', match: { network: '127.0.0.2/32' }, upstream: 'b' }] },
  });
  const raw = message({ subject: 'by network' });
  const from2 = await send(relay, { from: 'scanner@printer.local', to: ['n2@contoso.com'] }, raw, { localAddress: '127.0.0.2' });
  const from1 = await send(relay, { from: 'scanner@printer.local', to: ['n1@contoso.com'] }, raw, { localAddress: '127.0.0.1' });
  await relay.waitForLog(removed(from2));
  await relay.waitForLog(removed(from1));
  assert.deepEqual(sinks.b.messages.map((m) => m.recipients), [['n2@contoso.com']]);
  assert.deepEqual(sinks.c.messages.map((m) => m.recipients), [['n1@contoso.com']]);
  assert.equal(sinks.a.messages.length, 0);
  const received = relay.logs().find((l) => l.event === 'received' && l.queueId === from2);
  assert.equal(received?.client, '127.0.0.2');
});

test('global test mode: every route delivers only to the test address, the real recipients listed in a header', async (t) => {
  const { relay, sinks } = await setup(t, {
    routing: {
      testMode: { to: 'qa@test.contoso.com' },
      routes: [{ name: 'partner', match: { recipient: '@partner.test' }, upstream: 'a' }],
    },
    rewrite: [{ match: 'scanner@printer.local', to: 'scans@contoso.com' }],
  });
  const raw = message({ subject: 'global test mode' });
  const queueId = await send(relay, { from: 'scanner@printer.local', to: ['p1@partner.test', 'p2@partner.test', 'x@other.test'] }, raw);
  await relay.waitForLog(removed(queueId));

  assert.deepEqual(sinks.a.messages.map((m) => m.recipients), [['qa@test.contoso.com']]);
  assert.deepEqual(sinks.c.messages.map((m) => m.recipients), [['qa@test.contoso.com']]);
  assert.equal(sinks.b.messages.length, 0);
  assert.deepEqual(headers(sinks.a.messages[0]!.raw, 'X-Smarthost-Original-Recipients'), ['p1@partner.test, p2@partner.test']);
  assert.deepEqual(headers(sinks.c.messages[0]!.raw, 'X-Smarthost-Original-Recipients'), ['x@other.test']);
  for (const sink of Object.values(sinks)) {
    assert.deepEqual(sink.deliveredRecipients().filter((r) => r !== 'qa@test.contoso.com'), [], 'no real recipient received anything');
  }
  for (const m of [...sinks.a.messages, ...sinks.c.messages]) {
    assert.equal(m.sender, 'scans@contoso.com', 'rewriting still applies in test mode');
    assert.ok(bodyOf(m.raw).equals(bodyOf(raw)));
  }
  // Every real recipient counts as delivered (through the test address), once.
  assert.deepEqual(deliveries(relay, queueId), ['p1@partner.test@a:delivered', 'p2@partner.test@a:delivered', 'x@other.test@c:delivered']);
  const routed = relay.logs().filter((l) => l.event === 'routed' && l.queueId === queueId);
  assert.ok(routed.length === 2 && routed.every((l) => l.testModeTo === 'qa@test.contoso.com'));
});

test('per-route test mode: only that route is redirected, the rest goes to the real recipients untouched', async (t) => {
  const { relay, sinks } = await setup(t, {
    routing: { routes: [{ name: 'partner', match: { recipient: '@partner.test' }, upstream: 'a', testMode: { to: 'partner-qa@test.contoso.com' } }] },
  });
  const raw = message({ subject: 'route test mode' });
  const queueId = await send(relay, { from: 'scanner@printer.local', to: ['p1@partner.test', 'x@other.test'] }, raw);
  await relay.waitForLog(removed(queueId));
  assert.deepEqual(sinks.a.messages.map((m) => m.recipients), [['partner-qa@test.contoso.com']]);
  assert.deepEqual(headers(sinks.a.messages[0]!.raw, 'X-Smarthost-Original-Recipients'), ['p1@partner.test']);
  assert.deepEqual(headers(sinks.a.messages[0]!.raw, 'From'), ['"Scanner" <scanner@printer.local>'], 'the From stays when only test mode edits the header');
  assert.deepEqual(sinks.c.messages.map((m) => m.recipients), [['x@other.test']]);
  assert.deepEqual(headers(sinks.c.messages[0]!.raw, 'X-Smarthost-Original-Recipients'), []);
  for (const sink of Object.values(sinks)) assert.ok(!sink.deliveredRecipients().includes('p1@partner.test'));
  for (const m of [...sinks.a.messages, ...sinks.c.messages]) assert.ok(bodyOf(m.raw).equals(bodyOf(raw)));
});

test('test mode: a failure at the test address counts for every real recipient of the group', async (t) => {
  const { relay, sinks } = await setup(
    t,
    { routing: { testMode: { to: 'qa@test.contoso.com' } } },
    { c: { recipientBehaviour: new Map([['qa@test.contoso.com', 'tempfail' as const]]) } },
  );
  const queueId = await send(relay, { from: 'scanner@printer.local', to: ['r1@contoso.com', 'r2@contoso.com'] }, message({ subject: 'tq' }));
  await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === queueId && l.recipient === 'r2@contoso.com');
  await relay.waitForLog((l) => l.event === 'delivery' && l.queueId === queueId && l.recipient === 'r1@contoso.com');
  assert.deepEqual(deliveries(relay, queueId), ['r1@contoso.com@c:deferred', 'r2@contoso.com@c:deferred']);
  assert.equal(sinks.c.messages.length, 0);
});

test('header From at the end of DATA: 550 when a header rule would make it forbidden; a From after a non-field line is body, neither checked nor rewritten', async (t) => {
  const { relay, sinks } = await setup(t, {
    senderRestrictions: [{ network: '127.0.0.2/32', allowedSenders: ['@printer.local', '@scans.contoso.com'] }],
    rewrite: [{ match: 'ceo-alias@printer.local', to: 'ceo@contoso.com', apply: 'header' }],
  });
  const envelope = { from: 'floor2@printer.local', to: ['r@partner.test'] };
  await assert.rejects(
    send(relay, envelope, 'From: ceo-alias@printer.local\r\nSubject: plain\r\n\r\nbody\r\n', { localAddress: '127.0.0.2' }),
    (err: { responseCode?: number; response?: string }) =>
      err.responseCode === 550 && /Header From <ceo-alias@printer\.local> \(rewritten to <ceo@contoso\.com>\)/.test(err.response ?? ''),
  );
  // The header section ends at the first line that is not a field: what follows is body, for the check at DATA
  // and for the rewrite at delivery alike, so the From below it reaches the upstream as the client wrote it.
  const ids = [
    await send(relay, envelope, 'Subject: junk line\r\njunk\r\nFrom: ceo-alias@printer.local\r\n\r\nbody\r\n', { localAddress: '127.0.0.2' }),
    await send(relay, envelope, ' x\r\nFrom: ceo-alias@printer.local\r\nSubject: continuation first\r\n\r\nbody\r\n', { localAddress: '127.0.0.2' }),
  ];
  for (const id of ids) await relay.waitForLog(removed(id));
  assert.equal(sinks.c.messages.length, 2);
  for (const m of sinks.c.messages) {
    assert.deepEqual(headers(m.raw, 'From'), [], 'no From in the header block');
    assert.ok(bodyOf(m.raw).toString().includes('From: ceo-alias@printer.local\r\n'), 'the From line arrives in the body, unrewritten');
    assert.ok(!m.raw.includes('ceo@contoso.com'), 'nothing was rewritten to the forbidden address');
  }
});

test('a Bcc field never reaches an upstream: every recipient gets the message, none sees who got blind copies', async (t) => {
  const { relay, sinks } = await setup(t, {});
  const raw = 'From: app@printer.local\r\nTo: team@partner.test\r\nBcc: boss@partner.test\r\nSubject: minutes\r\n\r\nbody\r\n';
  const id = await send(relay, { from: 'app@printer.local', to: ['team@partner.test', 'boss@partner.test'] }, raw);
  await relay.waitForLog(removed(id));
  const [m] = sinks.c.messages;
  assert.deepEqual(m!.recipients.sort(), ['boss@partner.test', 'team@partner.test']);
  assert.deepEqual(headers(m!.raw, 'Bcc'), []);
  assert.ok(!m!.raw.includes('boss@partner.test'), 'the blind copy recipient appears nowhere in the message');
  assert.deepEqual(headers(m!.raw, 'To'), ['team@partner.test']);
});

test('a message with no empty line after its header (cron output), over 1 MiB, is delivered with the From rewritten', async (t) => {
  const { relay, sinks } = await setup(t, { rewrite: [{ match: '*@printer.local', to: '$1@contoso.com' }] });
  // The header rewrite holds at most 1 MiB while looking for the empty line; without one it used to bounce.
  const log = 'line of log output\r\n'.repeat(60_000);
  const id = await send(relay, { from: 'backup@printer.local', to: ['admin@partner.test'] }, `From: backup@printer.local\r\nSubject: nightly log\r\n${log}`);
  await relay.waitForLog(removed(id));
  assert.deepEqual(deliveries(relay, id), ['admin@partner.test@c:delivered']);
  const [m] = sinks.c.messages;
  assert.deepEqual(headers(m!.raw, 'From'), ['<backup@contoso.com>']);
  assert.equal(bodyOf(m!.raw).toString(), log);
});

test('sender restrictions at MAIL FROM: 553 5.7.1 naming the policy, also when a rewrite rule would produce a forbidden address', async (t) => {
  const { relay, sinks } = await setup(t, {
    users: [await user('scanner', { allowedSenders: ['scanner@printer.local', '@scans.contoso.com'] })],
    senderRestrictions: [{ network: '127.0.0.2/32', allowedSenders: ['@printer.local', '@scans.contoso.com'] }],
    rewrite: [
      { match: 'boss@printer.local', to: 'ceo@contoso.com' },
      { match: '*@printer.local', to: '$1@scans.contoso.com' },
    ],
  });
  const mailFrom = async (sender: string, o: { localAddress?: string; auth?: boolean; listener?: string } = {}) => {
    const lines = ['EHLO client.test'];
    if (o.auth) lines.push(`AUTH PLAIN ${Buffer.from(`\0scanner\0${PASSWORD}`).toString('base64')}`);
    lines.push(`MAIL FROM:<${sender}>`, 'QUIT');
    const replies = smtpReplies(await smtpDialog(relay.port(o.listener ?? 'relay'), lines, { localAddress: o.localAddress ?? '127.0.0.1' }));
    if (o.auth) assert.match(replies[2]!, /^235 /, 'authenticated');
    return replies[o.auth ? 3 : 2]!;
  };

  // The network restriction for 127.0.0.2.
  assert.equal(await mailFrom('ceo@contoso.com', { localAddress: '127.0.0.2' }), '553 5.7.1 Sender <ceo@contoso.com> is not allowed for clients in 127.0.0.2/32 (senderRestrictions[0])');
  // boss@printer.local itself is allowed there, but a rule would turn it into ceo@contoso.com.
  assert.equal(
    await mailFrom('boss@printer.local', { localAddress: '127.0.0.2' }),
    '553 5.7.1 Sender <boss@printer.local> (rewritten to <ceo@contoso.com>) is not allowed for clients in 127.0.0.2/32 (senderRestrictions[0])',
  );
  assert.match(await mailFrom('floor2@printer.local', { localAddress: '127.0.0.2' }), /^250 /, 'rewritten to an allowed address');
  // 127.0.0.1 has no restriction: the same senders are fine.
  assert.match(await mailFrom('ceo@contoso.com'), /^250 /);
  assert.match(await mailFrom('boss@printer.local'), /^250 /);
  // The user restriction on the submission listener.
  assert.match(await mailFrom('scanner@printer.local', { listener: 'submission', auth: true }), /^250 /);
  assert.equal(await mailFrom('other@printer.local', { listener: 'submission', auth: true }), '553 5.7.1 Sender <other@printer.local> is not allowed for user scanner (users[0].allowedSenders)');
  // scanner@printer.local passed above only because its alias target scanner@scans.contoso.com is in the list too.
  assert.match(await mailFrom('x@scans.contoso.com', { listener: 'submission', auth: true }), /^250 /);

  // A client library sees the refusal, and nothing is queued or delivered.
  await assert.rejects(
    send(relay, { from: 'boss@printer.local', to: ['r@partner.test'] }, message({ subject: 'refused' }), { localAddress: '127.0.0.2' }),
    (err: { responseCode?: number; response?: string }) => err.responseCode === 553 && /senderRestrictions\[0\]/.test(err.response ?? ''),
  );
  // An allowed one goes through, rewritten by the capture rule.
  const ok = await send(relay, { from: 'floor2@printer.local', to: ['r@partner.test'] }, message({ from: 'floor2@printer.local', subject: 'allowed' }), { localAddress: '127.0.0.2' });
  await relay.waitForLog(removed(ok));
  assert.deepEqual(
    sinks.c.messages.map((m) => [m.sender, headers(m.raw, 'From')[0]]),
    [['floor2@scans.contoso.com', '<floor2@scans.contoso.com>']],
  );
  assert.equal(sinks.a.messages.length + sinks.b.messages.length, 0);
  assert.equal(relay.logs().filter((l) => l.event === 'received').length, 1, 'only the allowed message was queued');
});
