/**
 * An upstream that fails in every way an SMTP server can: 421 at the greeting, 452 and 550 at RCPT,
 * 451 after the data, a connection dropped in the middle of DATA and a reply that never comes. Thirty
 * messages with several recipients each go through the daemon; at the end every recipient was delivered
 * exactly once or bounced with a correct DSN, and the queue is empty.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { test } from 'node:test';
import nodemailer from 'nodemailer';
import { startFaultySmtp, type DataFault, type Transaction } from '../fakes/faulty-smtp.js';
import { startInProcess, tempDir, testConfig } from '../helpers/daemon.js';
import { smtpDialog, smtpReplies } from '../helpers/net.js';

type Log = Record<string, unknown>;

/** What the upstream does to one message; each message gets one, in turn. */
const PLANS = ['clean', 'data451', 'drop', 'stall', 'rcpt452', 'rcpt550', 'mixed', 'all550', 'mixedCase'] as const;
type Plan = (typeof PLANS)[number];

const MESSAGES = 30;
/** Connections whose greeting is 421 (by their number at the upstream, from 1). */
const GREETING_421 = new Set([1, 4, 8]);

interface Planned {
  plan: Plan;
  sender: string;
  messageId: string;
  recipients: string[];
  /** Lower-cased recipient -> its fault at RCPT and how many times (Infinity: always). */
  rcptFaults: Map<string, { reply: '452' | '550'; times: number }>;
  /** The DATA outcome of this message's 1st, 2nd, ... transaction; 'ok' beyond. */
  dataFaults: DataFault[];
  /** Big enough that a drop at the first data chunk really is in the middle of the transfer. */
  bodySize: number;
}

function planMessage(i: number): Planned {
  const plan = PLANS[i % PLANS.length]!;
  const needed = plan === 'mixed' || plan === 'mixedCase' ? 3 : 2;
  const count = Math.max(needed, 2 + (i % 3));
  const recipients = Array.from({ length: count }, (_, j) => `m${i}-r${j}@dest.test`);
  const rcptFaults = new Map<string, { reply: '452' | '550'; times: number }>();
  const fault = (j: number, reply: '452' | '550', times: number) => rcptFaults.set(recipients[j]!.toLowerCase(), { reply, times });
  let dataFaults: DataFault[] = [];
  switch (plan) {
    case 'data451':
      dataFaults = ['451', '451'];
      break;
    case 'drop':
      dataFaults = ['drop'];
      break;
    case 'stall':
      dataFaults = ['stall'];
      break;
    case 'rcpt452':
      fault(1, '452', 2);
      break;
    case 'rcpt550':
      fault(1, '550', Infinity);
      break;
    case 'mixed':
      fault(1, '452', 1);
      fault(2, '550', Infinity);
      dataFaults = ['451'];
      break;
    case 'all550':
      recipients.forEach((_, j) => fault(j, '550', Infinity));
      break;
    case 'mixedCase':
      // Domains as a client may well type them; nodemailer lower-cases them on the wire and names refused
      // recipients that way. Such a refused recipient used to be taken for delivered: lost, no DSN.
      recipients[1] = `m${i}-r1@Dest.TEST`;
      recipients[2] = `m${i}-r2@DEST.test`;
      fault(1, '550', Infinity);
      fault(2, '452', 1);
      break;
    case 'clean':
      break;
  }
  return {
    plan,
    sender: `sender-m${i}@origin.test`,
    messageId: `<faults-${i}@origin.test>`,
    recipients,
    rcptFaults,
    dataFaults,
    bodySize: plan === 'drop' ? 512 * 1024 : 200,
  };
}

function rawMessage(p: Planned): string {
  const line = 'All work and no play makes Jack a dull boy. 0123456789 abcdefghijklmnopqrstuvwxyz\r\n';
  const body = line.repeat(Math.ceil(p.bodySize / line.length));
  return `From: ${p.sender}\r\nTo: ${p.recipients.join(', ')}\r\nSubject: ${p.plan}\r\nMessage-ID: ${p.messageId}\r\n\r\n${body}`;
}

/**
 * Sends one message over a raw dialog, for the recipients whose domain is not in lower case: nodemailer
 * lower-cases the domains of an envelope, a printer or a script need not. Returns the reply to the data.
 */
async function sendRaw(port: number, p: Planned): Promise<string> {
  const transcript = await smtpDialog(port, [
    'EHLO client.test',
    `MAIL FROM:<${p.sender}>`,
    ...p.recipients.map((r) => `RCPT TO:<${r}>`),
    'DATA',
    `RAW:${rawMessage(p)}.\r\n`,
    'QUIT',
  ]);
  const replies = smtpReplies(transcript);
  return replies[replies.length - 2] ?? transcript;
}

const permanent = (p: Planned) => new Set([...p.rcptFaults].filter(([, f]) => f.reply === '550').map(([r]) => r));

interface DsnEntry {
  finalRecipient: string;
  action: string;
  status: string;
}

/** The per-recipient blocks of a DSN's message/delivery-status part. */
function dsnEntries(t: Transaction): DsnEntry[] {
  const raw = t.raw.toString('latin1');
  const split = raw.indexOf('\r\n\r\n');
  const top = raw.slice(0, split).replace(/\r\n[ \t]+/g, ' ');
  assert.match(top, /^Content-Type: multipart\/report; report-type=delivery-status;/im);
  const boundary = /boundary="?([^";\r\n]+)"?/i.exec(top)?.[1];
  assert.ok(boundary, 'the DSN names its boundary');
  const part = raw
    .slice(split + 4)
    .split(`--${boundary}`)
    .find((s) => /^Content-Type:\s*message\/delivery-status\b/im.test(s.slice(0, s.indexOf('\r\n\r\n'))));
  assert.ok(part, 'the DSN has a message/delivery-status part');
  const blocks = part.slice(part.indexOf('\r\n\r\n') + 4).split(/\r\n\r\n/).slice(1);
  return blocks
    .filter((b) => /Final-Recipient:/i.test(b))
    .map((b) => ({
      finalRecipient: /^Final-Recipient: rfc822; *(\S+)\r?$/im.exec(b)?.[1] ?? '',
      action: /^Action: *(\S+)\r?$/im.exec(b)?.[1] ?? '',
      status: /^Status: *(\S+)\r?$/im.exec(b)?.[1] ?? '',
    }));
}

test('a faulty upstream (421 greeting, 452/550 RCPT, 451 after DATA, drop mid-DATA, stall): every recipient delivered once or bounced, none lost, none stuck', async (t) => {
  const planned = Array.from({ length: MESSAGES }, (_, i) => planMessage(i));
  const bySender = new Map(planned.map((p) => [p.sender, p]));
  const faultOf = new Map(planned.flatMap((p) => [...p.rcptFaults]));

  const upstream = await startFaultySmtp({
    connection: (n) => (GREETING_421.has(n) ? 'reject421' : 'ok'),
    recipient: (address, attempt) => {
      const f = faultOf.get(address.toLowerCase());
      return f && attempt <= f.times ? f.reply : 'ok';
    },
    data: (sender, attempt) => bySender.get(sender)?.dataFaults[attempt - 1] ?? 'ok',
  });
  t.after(() => upstream.close());

  const dir = await tempDir();
  t.after(() => dir.remove());
  const config = await testConfig({
    dir: dir.path,
    upstreams: { faulty: { type: 'smtp', host: '127.0.0.1', port: upstream.port, security: 'none', timeout: '1s' } },
    retry: { initialDelay: '100ms', maxDelay: '500ms' },
  });
  const relay = await startInProcess(config);
  t.after(() => relay.stop());

  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  const queueIds = new Map<string, Planned>();
  try {
    for (const p of planned) {
      const response = p.plan === 'mixedCase' ? await sendRaw(relay.port('relay'), p) : (await client.sendMail({ envelope: { from: p.sender, to: p.recipients }, raw: rawMessage(p) })).response;
      const id = /^250 .*queued as ([0-9A-Z]{22})$/.exec(response)?.[1];
      assert.ok(id, `not acknowledged: ${response}`);
      queueIds.set(id, p);
    }
  } finally {
    client.close();
  }

  // Every message leaves the queue; each one that bounced queued a DSN first, and that leaves the queue too.
  for (const id of queueIds.keys()) await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === id, 30_000);
  const bounces = relay.logs().filter((l) => l.event === 'bounce.queued');
  for (const b of bounces) await relay.waitForLog((l) => l.event === 'queue.removed' && l.queueId === b.bounceId, 30_000);
  assert.deepEqual(await readdir(relay.daemon.spool.queueDir), [], 'nothing is stuck in the queue');
  assert.equal(relay.daemon.scheduler.size, 0);

  const deliveries = relay.logs().filter((l) => l.event === 'delivery' && queueIds.has(String(l.queueId)));
  const outcomes = { delivered: 0, deferred: 0, bounced: 0 };
  for (const l of deliveries) outcomes[l.result as keyof typeof outcomes] += 1;
  const mix = PLANS.map((plan) => `${plan} ${planned.filter((p) => p.plan === plan).length}`).join(', ');
  t.diagnostic(`messages ${MESSAGES} (${planned.reduce((n, p) => n + p.recipients.length, 0)} recipients); plans: ${mix}`);
  t.diagnostic(`faults fired: ${Object.entries(upstream.faults).map(([k, n]) => `${k} ${n}`).join(', ')}; upstream connections ${upstream.connections()}`);
  t.diagnostic(`delivery attempts per recipient: delivered ${outcomes.delivered}, deferred ${outcomes.deferred}, bounced ${outcomes.bounced}; DSNs ${bounces.length}`);
  for (const [kind, n] of Object.entries(upstream.faults)) assert.ok(n > 0, `fault ${kind} occurred`);

  const originals = upstream.delivered.filter((d) => d.sender !== '');
  const dsns = upstream.delivered.filter((d) => d.sender === '');
  // Every finding is collected first, so one run reports all of them.
  const problems: string[] = [];
  const lost: string[] = [];
  const twice: string[] = [];
  for (const d of originals) if (!bySender.has(d.sender)) problems.push(`unexpected transaction from ${d.sender}`);
  for (const p of planned) {
    const refused = permanent(p);
    const mine = originals.filter((d) => d.sender === p.sender);
    for (const d of mine) if (d.messageId !== p.messageId) problems.push(`${p.sender} sent ${d.messageId}`);
    for (const r of p.recipients) {
      const key = r.toLowerCase();
      const copies = mine.filter((d) => d.recipients.some((x) => x.toLowerCase() === key)).length;
      if (refused.has(key) && copies > 0) problems.push(`${r} was refused with 550 yet delivered`);
      else if (!refused.has(key) && copies === 0) lost.push(`${r} (${p.plan})`);
      else if (copies > 1) twice.push(`${r} x${copies} (${p.plan})`);
    }

    // The DSNs for this message name exactly its 5xx recipients, each once, as failed with a 5.x.x status.
    const entries = dsns.filter((d) => d.recipients.length === 1 && d.recipients[0] === p.sender).flatMap(dsnEntries);
    const named = entries.map((e) => e.finalRecipient.toLowerCase()).sort();
    if (named.join() !== [...refused].sort().join()) {
      problems.push(`DSN Final-Recipients for ${p.sender} (${p.plan}): [${named.join(', ')}], expected [${[...refused].sort().join(', ')}]`);
    }
    for (const e of entries) {
      if (e.action !== 'failed' || !/^5\.\d{1,3}\.\d{1,3}$/.test(e.status)) problems.push(`DSN entry ${e.finalRecipient}: Action ${e.action}, Status ${e.status}`);
    }
  }
  for (const d of dsns) {
    const to = d.recipients[0] ?? '';
    if (d.recipients.length !== 1 || !bySender.has(to)) problems.push(`DSN to ${d.recipients.join(', ')}`);
    if (!new RegExp(`^To: <${to.replace(/\./g, '\\.')}>\\r$`, 'm').test(d.raw.toString('latin1'))) problems.push(`DSN to ${to} lacks its To: header`);
  }
  if (dsns.length !== bounces.length) problems.push(`${bounces.length} DSNs queued, ${dsns.length} arrived`);

  // The logs agree: one final outcome per recipient, a bounce exactly for the 5xx ones.
  for (const [id, p] of queueIds) {
    const refused = permanent(p);
    for (const r of p.recipients) {
      const final = deliveries.filter((l: Log) => l.queueId === id && String(l.recipient).toLowerCase() === r.toLowerCase() && l.result !== 'deferred');
      const expected = refused.has(r.toLowerCase()) ? 'bounced' : 'delivered';
      if (final.map((l) => l.result).join() !== expected) problems.push(`log: final outcome of ${r} (${p.plan}) is [${final.map((l) => l.result).join(', ')}], expected ${expected}`);
    }
  }
  t.diagnostic(`lost ${lost.length}, delivered twice ${twice.length}, other problems ${problems.length}`);
  assert.deepEqual(lost, [], 'recipients never delivered (lost)');
  assert.deepEqual(twice, [], 'recipients delivered more than once');
  assert.deepEqual(problems, []);
});
