/**
 * `smarthost route`, run as the built CLI against a config file with routes, rewrite rules, sender
 * restrictions, users and test mode: the explanation an admin reads, in text and JSON.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../src/cli.js', import.meta.url));
const HASH = '$scrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U';

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[]): Promise<Result> {
  const env = { ...process.env };
  delete env.SMARTHOST_CONFIG;
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [CLI, ...args], { env, timeout: 20_000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: child.exitCode, stdout, stderr });
    });
  });
}

const dir = mkdtempSync(join(tmpdir(), 'smarthost-route-'));
const CONFIG = join(dir, 'smarthost.yaml');
writeFileSync(
  CONFIG,
  `
spool: { dir: ${dir}/spool }
state: { dir: ${dir}/state }
listeners:
  - { name: relay, role: relay, port: 2525, networks: [127.0.0.0/8, 192.168.10.0/24] }
  - { name: submission, role: submission, port: 2587, allowInsecureAuth: true }
users:
  - { name: erp, passwordHash: "${HASH}", upstream: accounting }
  - { name: scanner, passwordHash: "${HASH}", allowedSenders: ["@printer.local", "@contoso.test"] }
upstreams:
  outbox: { type: outbox, dir: ${dir}/outbox }
  m365: { type: smtp, host: smtp.office365.com, security: starttls }
  accounting: { type: smtp, host: mail.accounting.test, port: 2525, security: none }
routing:
  default: outbox
  routes:
    - name: from-submission
      match: { listener: submission, sender: "@printer.local" }
      upstream: m365
    - name: customers
      match: { recipient: "@customer.test", network: 10.0.0.0/8 }
      upstream: m365
    - name: scans
      match: { sender: "*@printer.local" }
      upstream: m365
    - name: invoices
      match: { sender: "/^invoice-(\\\\d+)@/" }
      upstream: accounting
      sender: { address: invoices@contoso.test, name: Contoso Invoices, replyTo: billing@contoso.test }
      testMode: { to: qa@contoso.test }
rewrite:
  - match: "*@printer.local"
    to: "scans+$1@contoso.test"
    displayName: { set: Scanner }
senderRestrictions:
  - network: 192.168.10.0/24
    allowedSenders: ["@printer.local"]
`,
);
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

describe('smarthost route', { concurrency: true }, () => {
  test('names the matched rule, the upstream, both rewritten senders, and why each earlier rule did not match', async () => {
    const r = await run(['route', '--config', CONFIG, '--from', 'hall@printer.local', '--to', 'alice@example.test']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    const out = r.stdout;
    assert.match(out, /^MAIL FROM +accepted$/m);
    assert.match(out, /^recipient alice@example\.test$/m);
    assert.match(out, /^ {2}route +routes\[2\] scans$/m);
    assert.match(out, /^ {2}upstream +m365 \(smtp, smtp\.office365\.com port 587, starttls\)$/m);
    assert.match(out, /^ {2}envelope sender +scans\+hall@contoso\.test \(was hall@printer\.local; by rewrite\[0\] \(\*@printer\.local -> scans\+\$1@contoso\.test\)\)$/m);
    assert.match(out, /^ {2}header From +"Scanner" <scans\+hall@contoso\.test> \(was <hall@printer\.local>\)$/m);
    assert.match(out, /^ {2}Reply-To +<hall@printer\.local>/m);
    assert.match(out, /^ {2}test mode +off$/m);
    assert.match(out, /^ {2}suppression +not listed$/m);
    assert.match(out, /^ {2}rules before the match that did not match:$/m);
    assert.match(out, /^ {4}routes\[0\] from-submission: listener relay is not submission$/m);
    assert.match(out, /^ {4}routes\[1\] customers: recipient alice@example\.test \(domain example\.test\) matches none of @customer\.test; client 127\.0\.0\.1 is in none of 10\.0\.0\.0\/8$/m);
    assert.doesNotMatch(out, /routes\[3\]/, 'rules after the match are not tried');
  });

  test('--json gives the same explanation as data', async () => {
    const r = await run(['route', '--config', CONFIG, '--from', 'hall@printer.local', '--to', 'alice@example.test', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const e = JSON.parse(r.stdout) as {
      sender: string;
      mailFrom: { accepted: boolean };
      listener: string;
      clientAddress: string;
      recipients: {
        recipient: string;
        matched: string;
        upstream: { name: string; type: string };
        envelopeSender: { original: string; rewritten: string; by?: string };
        headerFrom: { rewritten: string[]; changed: boolean };
        notMatched: { rule: string; reasons: string[] }[];
        suppression: { listed: boolean };
        deliveredTo: string;
      }[];
    };
    assert.equal(e.sender, 'hall@printer.local');
    assert.equal(e.listener, 'relay', 'the first listener by default');
    assert.equal(e.clientAddress, '127.0.0.1', 'loopback by default');
    assert.deepEqual(e.mailFrom, { accepted: true });
    const [alice] = e.recipients;
    assert.equal(alice!.matched, 'routes[2] scans');
    assert.deepEqual(alice!.upstream, { name: 'm365', type: 'smtp', target: 'smtp.office365.com port 587, starttls' });
    assert.equal(alice!.envelopeSender.rewritten, 'scans+hall@contoso.test');
    assert.deepEqual(alice!.headerFrom.rewritten, ['"Scanner" <scans+hall@contoso.test>']);
    assert.deepEqual(
      alice!.notMatched.map((c) => c.rule),
      ['routes[0] from-submission', 'routes[1] customers'],
    );
    assert.equal(alice!.notMatched[1]!.reasons.length, 2);
    assert.deepEqual(alice!.suppression, { listed: false });
    assert.equal(alice!.deliveredTo, 'alice@example.test');
  });

  test('several --to give one block each, each routed on its own (recipient split)', async () => {
    const r = await run([
      'route', '--config', CONFIG, '--from', 'hall@printer.local', '--ip', '10.1.2.3', '--user', 'scanner',
      '--to', 'bob@customer.test', '--to', 'carol@example.test', '--json',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const e = JSON.parse(r.stdout) as { mailFrom: { accepted: boolean }; recipients: { recipient: string; matched: string }[] };
    assert.deepEqual(e.mailFrom, { accepted: true }, 'scanner may send as @printer.local and its rewritten @contoso.test');
    assert.deepEqual(
      e.recipients.map((x) => [x.recipient, x.matched]),
      [
        ['bob@customer.test', 'routes[1] customers'],
        ['carol@example.test', 'routes[2] scans'],
      ],
    );
    const text = await run(['route', '--config', CONFIG, '--from', 'hall@printer.local', '--to', 'bob@customer.test', '--to', 'carol@example.test']);
    assert.equal(text.stdout.match(/^recipient /gm)?.length, 2);
  });

  test('a route that forces a named sender with a reply address and has test mode shows all three; a header From given apart is rewritten on its own', async () => {
    const r = await run([
      'route', '--config', CONFIG, '--from', 'invoice-77@erp.local', '--header-from', '"ERP" <noreply@erp.local>', '--to', 'dave@example.test',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^header From +"ERP" <noreply@erp\.local>$/m, 'no "assumed" note when given');
    assert.match(r.stdout, /^ {2}route +routes\[3\] invoices$/m);
    assert.match(r.stdout, /^ {2}upstream +accounting \(smtp, mail\.accounting\.test port 2525, none\)$/m);
    assert.match(r.stdout, /^ {2}envelope sender +invoices@contoso\.test \(was invoice-77@erp\.local; by the sender of routes\[3\] invoices\)$/m);
    assert.match(r.stdout, /^ {2}header From +"Contoso Invoices" <invoices@contoso\.test> \(was "ERP" <noreply@erp\.local>\)$/m);
    assert.match(r.stdout, /^ {2}Reply-To +<billing@contoso\.test> \(added when the message has none\)$/m, "the route's reply address, not the original From");
    assert.match(r.stdout, /^ {2}test mode +ON: delivered to qa@contoso\.test instead; the recipient is listed in X-Smarthost-Original-Recipients$/m);
    assert.match(r.stdout, /^ {4}routes\[2\] scans: sender invoice-77@erp\.local matches none of \*@printer\.local$/m);
  });

  test("a user's own upstream wins and the rules are reported as not consulted", async () => {
    const r = await run(['route', '--config', CONFIG, '--from', 'hall@printer.local', '--to', 'erin@example.test', '--user', 'erp', '--listener', 'submission']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^client +127\.0\.0\.1 on listener submission, authenticated as erp$/m);
    assert.match(r.stdout, /^ {2}route +user erp$/m);
    assert.match(r.stdout, /^ {2}upstream +accounting /m);
    assert.match(r.stdout, /^ {2}rules +not consulted: user erp's own upstream beats the route rules$/m);
  });

  test('MAIL FROM verdicts: sender restrictions, user restrictions and missing authentication', async () => {
    const restricted = await run(['route', '--config', CONFIG, '--from', 'x@elsewhere.test', '--to', 'a@example.test', '--ip', '192.168.10.7']);
    assert.equal(restricted.code, 0, 'an explanation is a success even when the answer is no');
    assert.match(restricted.stdout, /^MAIL FROM +refused: 553 5\.7\.1 Sender <x@elsewhere\.test> is not allowed for clients in 192\.168\.10\.0\/24 \(senderRestrictions\[0\]\)$/m);

    const user = await run(['route', '--config', CONFIG, '--from', 'x@elsewhere.test', '--to', 'a@example.test', '--user', 'scanner']);
    assert.match(user.stdout, /^MAIL FROM +refused: 553 5\.7\.1 Sender <x@elsewhere\.test> is not allowed for user scanner \(users\[1\]\.allowedSenders\)$/m);

    const outsider = await run(['route', '--config', CONFIG, '--from', 'x@elsewhere.test', '--to', 'a@example.test', '--ip', '203.0.113.9']);
    assert.match(outsider.stdout, /^MAIL FROM +refused: 530 5\.7\.0 Authentication required {2}\(client 203\.0\.113\.9 is in none of listener relay's networks/m);
  });

  test('shows the suppression status of each recipient after smarthost suppress add', async () => {
    const add = await run(['suppress', 'add', 'Frank@Example.test', '--reason', 'complaint', '--config', CONFIG]);
    assert.equal(add.code, 0, add.stderr);
    const r = await run(['route', '--config', CONFIG, '--from', 'hall@printer.local', '--to', 'frank@example.test', '--to', 'grace@example.test']);
    assert.equal(r.code, 0, r.stderr);
    const [frank, grace] = r.stdout.split(/^recipient /m).slice(1);
    assert.match(frank!, /^ {2}RCPT TO +refused: 550 5\.7\.1 Recipient is on the suppression list$/m);
    assert.match(frank!, /^ {2}suppression +LISTED since \S+ \(complaint\): refused at RCPT TO with 550 5\.7\.1/m);
    assert.match(grace!, /^ {2}suppression +not listed$/m);
    assert.doesNotMatch(grace!, /RCPT TO/);
  });

  test('the null sender is explained as a bounce that is never rewritten', async () => {
    const r = await run(['route', '--config', CONFIG, '--from', '<>', '--to', 'henry@example.test', '--header-from', 'MAILER-DAEMON@relay.test']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^sender +<> \(null sender\)$/m);
    assert.match(r.stdout, /^ {2}envelope sender +<> \(unchanged\)$/m);
    assert.match(r.stdout, /^ {2}header From +<MAILER-DAEMON@relay\.test> \(unchanged\); bounces \(null sender\) are delivered exactly as written$/m);
    assert.match(r.stdout, /^ {2}route +default$/m);
    assert.match(r.stdout, /^ {2}no rule matched:$/m);
  });

  test('wrong command lines exit 2 with the problem in words; --help exits 0', async () => {
    const cases: [string[], RegExp][] = [
      [['route', '--config', CONFIG, '--to', 'a@example.test'], /--from SENDER is required/],
      [['route', '--config', CONFIG, '--from', 'a@b.test'], /at least one --to RECIPIENT is required/],
      [['route', '--config', CONFIG, '--from', 'a@b.test', '--to', 'c@d.test', '--listener', 'nope'], /--listener "nope" names no listener; configured: relay, submission/],
      [['route', '--config', CONFIG, '--from', 'a@b.test', '--to', 'c@d.test', '--user', 'nobody'], /--user "nobody" names no local user; configured: erp, scanner/],
      [['route', '--config', CONFIG, '--from', 'a@b.test', '--to', 'c@d.test', '--ip', '300.1.1.1'], /--ip "300\.1\.1\.1" is not an IPv4 or IPv6 address/],
      [['route', '--config', CONFIG, '--from', 'a@b.test', '--to', 'c@d.test', '--bogus'], /Unknown option '--bogus'/],
    ];
    for (const [args, message] of cases) {
      const r = await run(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, message);
      assert.match(r.stderr, /Usage: smarthost route/);
    }
    const help = await run(['route', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^Usage: smarthost route --from SENDER --to RECIPIENT/);
    const viaHelp = await run(['help', 'route']);
    assert.equal(viaHelp.stdout, help.stdout);
  });
});
