import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { createPlanner } from '../../src/delivery/planner.js';
import { SmtpError } from '../../src/smtp-error.js';
import { createRecord, type MessageRecord } from '../../src/spool/record.js';
import type { Spool } from '../../src/spool/spool.js';
import { MessageUnreadable } from '../../src/spool/unreadable.js';

const STORED = 'Received: from x by smarthost.test\r\nFrom: "Scanner" <scanner@printer.local>\r\nSubject: s\r\n\r\nFrom: body line\r\n';

/** A spool that only serves bodies; every openBody call is counted. */
function fakeSpool(body = STORED): Spool & { opened: number } {
  const spool = { opened: 0, openBody: () => (spool.opened++, Readable.from([Buffer.from(body)])) };
  return spool as unknown as Spool & { opened: number };
}

function config(o: { routes?: unknown[]; rewrite?: unknown[]; testMode?: string } = {}) {
  return parseConfig(
    stringify({
      spool: { dir: '/tmp/spool' },
      listeners: [{ name: 'relay', role: 'relay', port: 2525 }],
      upstreams: { a: { type: 'outbox', dir: '/tmp/a' }, b: { type: 'outbox', dir: '/tmp/b' } },
      routing: { default: 'a', routes: o.routes ?? [], ...(o.testMode ? { testMode: { to: o.testMode } } : {}) },
      rewrite: o.rewrite ?? [],
    }),
    'planner.test',
  );
}

function record(sender = 'scanner@printer.local', recipients = ['r1@contoso.com', 'r2@partner.test']): MessageRecord {
  return createRecord({ id: '01TESTTESTTESTTESTTEST', sender, recipients, receivedAt: 0, headerFrom: ['scanner@printer.local'], client: { address: '192.168.10.5', listener: 'relay', tls: false } });
}

test('route: per recipient, from the message metadata', () => {
  const planner = createPlanner(config({ routes: [{ name: 'partner', match: { recipient: '@partner.test', headerFrom: '@printer.local' }, upstream: 'b' }] }), fakeSpool());
  assert.deepEqual(planner.route(record(), 'r1@contoso.com'), { via: 'default', upstream: 'a' });
  assert.deepEqual(planner.route(record(), 'r2@partner.test'), { via: 'routes[0] partner', upstream: 'b' });
});

test('prepare without rules: the stored bytes go out as they are', async () => {
  const spool = fakeSpool();
  const planner = createPlanner(config(), spool);
  const p = planner.prepare(record(), { via: 'default', upstream: 'a' }, ['r1@contoso.com']);
  assert.equal(p.request.sender, 'scanner@printer.local');
  assert.deepEqual(p.request.recipients, ['r1@contoso.com']);
  assert.equal(p.rewrittenSender, undefined);
  assert.equal(await text(p.request.openMessage()), STORED);
  assert.equal(spool.opened, 1);
});

test('prepare with a rule: envelope and header rewritten, body line untouched, each open is a fresh stream', async () => {
  const planner = createPlanner(config({ rewrite: [{ match: '@printer.local', to: 'scans@contoso.com' }] }), fakeSpool());
  const p = planner.prepare(record(), { via: 'default', upstream: 'a' }, ['r1@contoso.com']);
  assert.equal(p.request.sender, 'scans@contoso.com');
  assert.equal(p.rewrittenSender, 'scans@contoso.com');
  for (let i = 0; i < 2; i++) {
    const out = await text(p.request.openMessage());
    assert.match(out, /^From: "Scanner" <scans@contoso\.com>\r$/m);
    assert.match(out, /^X-Smarthost-Original-Sender: <scanner@printer\.local>\r$/m);
    assert.ok(out.endsWith('\r\n\r\nFrom: body line\r\n'), 'body untouched');
  }
});

test('prepare with a forced sender from the route decision', async () => {
  const planner = createPlanner(config(), fakeSpool());
  const p = planner.prepare(record(), { via: 'routes[0] x', upstream: 'a', forcedSender: { address: 'central@contoso.com' } }, ['r1@contoso.com']);
  assert.equal(p.request.sender, 'central@contoso.com');
  assert.match(await text(p.request.openMessage()), /^From: "Scanner" <central@contoso\.com>\r$/m);
});

test('test mode: one delivery to the test address, original recipients in a header, its outcome spread over all', async () => {
  const planner = createPlanner(config(), fakeSpool());
  const recipients = ['r1@contoso.com', 'r2@partner.test'];
  const p = planner.prepare(record(), { via: 'default', upstream: 'a', testMode: { to: 'test@contoso.com' } }, recipients);
  assert.deepEqual(p.request.recipients, ['test@contoso.com']);
  const out = await text(p.request.openMessage());
  assert.match(out, /^X-Smarthost-Original-Recipients: r1@contoso\.com, r2@partner\.test\r$/m);
  assert.match(out, /^From: "Scanner" <scanner@printer\.local>\r$/m, 'From kept when nothing rewrites it');
  assert.deepEqual(p.expand([{ recipient: 'test@contoso.com', delivered: true, reply: '250 ok' }]), [
    { recipient: 'r1@contoso.com', delivered: true, reply: '250 ok' },
    { recipient: 'r2@partner.test', delivered: true, reply: '250 ok' },
  ]);
  const error = new SmtpError(451, '4.2.0', 'later');
  assert.deepEqual(
    p.expand([{ recipient: 'test@contoso.com', delivered: false, error }]).map((o) => [o.recipient, o.delivered]),
    [
      ['r1@contoso.com', false],
      ['r2@partner.test', false],
    ],
  );
});

test('bounces (null sender) are never rewritten; in test mode they still list the original recipient (regression)', async () => {
  const planner = createPlanner(config({ rewrite: [{ match: '*', to: 'catchall@contoso.com' }] }), fakeSpool());
  const bounce = record('', ['scanner@printer.local']);
  const plain = planner.prepare(bounce, { via: 'default', upstream: 'a', forcedSender: { address: 'central@contoso.com' } }, ['scanner@printer.local']);
  assert.equal(plain.request.sender, '');
  assert.equal(plain.rewrittenSender, undefined);
  assert.equal(await text(plain.request.openMessage()), STORED, 'stored bytes, not even the From rewritten');

  const tested = planner.prepare(bounce, { via: 'default', upstream: 'a', testMode: { to: 'test@contoso.com' } }, ['scanner@printer.local']);
  assert.deepEqual(tested.request.recipients, ['test@contoso.com']);
  assert.equal(tested.request.sender, '');
  assert.equal(await text(tested.request.openMessage()), `X-Smarthost-Original-Recipients: scanner@printer.local\r\n${STORED}`);
});

/** A spool whose body stream fails like an unreadable file, after the first `good` bytes of `body`. */
function failingSpool(good: string): Spool {
  return {
    openBody: () =>
      Readable.from(
        (async function* () {
          yield Buffer.from(good);
          throw new MessageUnreadable('EIO: i/o error, read');
        })(),
      ),
  } as unknown as Spool;
}

/** Reads the stream as a reader that rewrites the error's code would (nodemailer sets ESTREAM); answers the error. */
async function readLikeNodemailer(stream: Readable): Promise<Error> {
  const failed = new Promise<Error>((resolve) => stream.on('error', (err: Error & { code?: unknown }) => ((err.code = 'ESTREAM'), resolve(err))));
  stream.resume();
  return failed;
}

test('a body the spool cannot read is the delivery\'s local failure, 451 4.3.0, with or without the header rewrite in between', async () => {
  for (const rewrite of [[], [{ match: '@printer.local', to: 'scans@contoso.com' }]]) {
    const p = createPlanner(config({ rewrite }), failingSpool(STORED)).prepare(record(), { via: 'default', upstream: 'a' }, ['r1@contoso.com']);
    assert.equal(p.localFailure(), undefined, 'nothing before a read');
    await readLikeNodemailer(p.request.openMessage());
    assert.equal(p.localFailure()?.reply, '451 4.3.0 queued message could not be read: EIO: i/o error, read', `rules: ${rewrite.length}`);
  }
});

test('the header rewrite\'s own refusal is kept as it was made, though the reader rewrites the error it is handed', async () => {
  const huge = `Subject: ${'x'.repeat(1100 * 1024)}\r\n`;
  const p = createPlanner(config({ rewrite: [{ match: '@printer.local', to: 'scans@contoso.com' }] }), fakeSpool(huge)).prepare(record(), { via: 'default', upstream: 'a' }, ['r1@contoso.com']);
  const seen = await readLikeNodemailer(p.request.openMessage());
  assert.equal((seen as { code?: unknown }).code, 'ESTREAM');
  assert.equal(p.localFailure()?.reply, '554 5.6.0 message header block too large to rewrite');
});

test('a reader that gives up on the stream with an error of its own leaves no local failure', async () => {
  for (const rewrite of [[], [{ match: '@printer.local', to: 'scans@contoso.com' }]]) {
    const p = createPlanner(config({ rewrite }), fakeSpool()).prepare(record(), { via: 'default', upstream: 'a' }, ['r1@contoso.com']);
    const stream = p.request.openMessage();
    const closed = new Promise((resolve) => stream.once('close', resolve));
    stream.on('error', () => {});
    stream.destroy(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }));
    await closed;
    assert.equal(p.localFailure(), undefined, `rules: ${rewrite.length}`);
  }
});
