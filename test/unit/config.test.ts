import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { ConfigError, DEFAULT_CONFIG_PATH, loadConfig, parseConfig } from '../../src/config/load.js';
import { Secret } from '../../src/config/secret.js';
import { makeTestCertificate } from '../helpers/tls.js';

const VALID_HASH = '$scrypt$ln=15,r=8,p=1$c21hcnRob3N0LWR1bW15$2Yxj6B5bIo7m0ZbKxS6dCXbqAqcqJ8yAGT0aBY1r2KI';

/** A minimal valid config; `listeners`, `upstreams` and `extra` replace or add top-level YAML blocks. */
function yaml(o: { listeners?: string; upstreams?: string; routing?: string; extra?: string } = {}): string {
  return [
    'spool: { dir: /var/spool/smarthost }',
    'listeners:',
    o.listeners ?? '  - { name: relay, role: relay, port: 2525 }\n  - { name: submission, role: submission, port: 2587 }',
    'upstreams:',
    o.upstreams ?? '  outbox: { type: outbox, dir: /var/outbox }',
    `routing: { default: ${o.routing ?? 'outbox'} }`,
    o.extra ?? '',
  ].join('\n');
}

const smtpUpstream = (pass: string) => `  mail: { type: smtp, host: smtp.example.com, auth: { user: relay@example.com, pass: ${pass} } }`;

/** The problems of the ConfigError that parsing `text` must throw. */
function problems(text: string): string[] {
  try {
    parseConfig(text, 'test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.equal(err.source, 'test.yaml');
    return err.problems;
  }
  assert.fail('parseConfig accepted an invalid config');
}

function assertProblem(text: string, expected: string | RegExp): void {
  const found = problems(text);
  const ok = typeof expected === 'string' ? found.includes(expected) : found.some((p) => expected.test(p));
  assert.ok(ok, `no problem matching ${String(expected)} in:\n${found.join('\n')}`);
}

test('the embedded default config loads: relay on 2525, submission on 2587, outbox upstream', () => {
  const config = loadConfig(DEFAULT_CONFIG_PATH);
  assert.deepEqual(
    config.listeners.map((l) => [l.name, l.role, l.host, l.port]),
    [
      ['relay', 'relay', '127.0.0.1', 2525],
      ['submission', 'submission', '127.0.0.1', 2587],
    ],
  );
  assert.equal(config.routing.default, 'outbox');
  assert.equal(config.upstreams.outbox?.type, 'outbox');
  assert.deepEqual(config.users, []);
});

test('defaults are filled in: Postfix retry schedule, 25 MiB messages, info logging', () => {
  const config = parseConfig(yaml());
  assert.deepEqual(config.delivery.retry, { initialDelay: 300_000, maxDelay: 4_000_000, lifetime: 432_000_000, bounceLifetime: 432_000_000 });
  assert.equal(config.listeners[0]!.maxMessageSize, 26_214_400);
  assert.equal(config.listeners[0]!.host, '127.0.0.1');
  assert.equal(config.log.level, 'info');
});

test('a non-numeric port names the listener index and key and quotes the value', () => {
  const text = yaml({ listeners: '  - { name: relay, role: relay, port: 2525 }\n  - { name: sub, role: submission, port: "abc" }' });
  assert.deepEqual(problems(text), ['listeners[1].port: expected an integer 1-65535, got "abc"']);
});

test('a port out of range is refused', () => {
  assertProblem(yaml({ listeners: '  - { name: relay, role: relay, port: 70000 }' }), 'listeners[0].port: expected an integer 1-65535, got 70000');
});

test('a misspelled key is an error, not silently ignored', () => {
  const found = problems(yaml({ listeners: '  - { name: relay, role: relay, prot: 2525 }' }));
  assert.ok(found.includes('listeners[0].prot: unknown key'), found.join('\n'));
  assert.ok(found.includes('listeners[0].port: required key is missing (expected an integer 1-65535)'), found.join('\n'));
});

test('an unknown top-level key is an error', () => {
  assertProblem(yaml({ extra: 'logging: { level: debug }' }), 'logging: unknown key');
});

test('missing required sections are each reported by name', () => {
  const found = problems('hostname: relay.example');
  for (const key of ['spool', 'listeners', 'upstreams', 'routing']) {
    assert.ok(
      found.some((p) => p.startsWith(`${key}: required key is missing`)),
      `${key} not reported in:\n${found.join('\n')}`,
    );
  }
});

test('a listener without a name is reported at listeners[0].name', () => {
  assertProblem(yaml({ listeners: '  - { role: relay, port: 2525 }' }), 'listeners[0].name: required key is missing (expected string)');
});

test('a role outside the enum is refused with the allowed values', () => {
  assertProblem(yaml({ listeners: '  - { name: relay, role: relai, port: 2525 }' }), 'listeners[0].role: expected "relay" or "submission", got "relai"');
});

test('a log level outside the enum lists the allowed levels', () => {
  assertProblem(yaml({ extra: 'log: { level: verbose }' }), /^log\.level: expected one of .*"info".*, got "verbose"$/);
});

test('a bad CIDR in networks names its index', () => {
  assertProblem(
    yaml({ listeners: '  - { name: relay, role: relay, port: 2525, networks: [192.168.1.0/24, 10.0.0.0/33] }' }),
    /^listeners\[0\]\.networks\[1\]: expected an IPv4 or IPv6 network .*, got "10\.0\.0\.0\/33"$/,
  );
});

test('a duration without a known unit is refused with examples', () => {
  assertProblem(
    yaml({ extra: 'delivery: { retry: { initialDelay: 5 minutes } }' }),
    'delivery.retry.initialDelay: expected a duration such as 30s, 5m, 4h or 5d (a bare number means seconds), got "5 minutes"',
  );
});

test('a negative duration is refused', () => {
  assertProblem(yaml({ extra: 'delivery: { retry: { maxDelay: -5 } }' }), /^delivery\.retry\.maxDelay: expected a duration .*, got -5$/);
});

test('a size with an unknown unit is refused with examples', () => {
  assertProblem(
    yaml({ listeners: '  - { name: relay, role: relay, port: 2525, maxMessageSize: 25 megs }' }),
    'listeners[0].maxMessageSize: expected a size such as 25MB, 512KiB or a byte count, got "25 megs"',
  );
});

test('durations: a unit suffix or a bare number of seconds, in milliseconds', () => {
  const config = parseConfig(
    yaml({ extra: 'delivery: { retry: { initialDelay: 5m, maxDelay: 30, lifetime: 2d, bounceLifetime: 1.5h }, shutdownTimeout: 250ms }' }),
  );
  assert.deepEqual(config.delivery.retry, { initialDelay: 300_000, maxDelay: 30_000, lifetime: 172_800_000, bounceLifetime: 5_400_000 });
  assert.equal(config.delivery.shutdownTimeout, 250);
});

test('sizes: decimal and binary units and bare byte counts', () => {
  const config = parseConfig(
    yaml({
      listeners: [
        '  - { name: a, role: relay, port: 2525, maxMessageSize: 25MB }',
        '  - { name: b, role: relay, port: 2526, maxMessageSize: 512KiB }',
        '  - { name: c, role: relay, port: 2527, maxMessageSize: 1000 }',
      ].join('\n'),
    }),
  );
  assert.deepEqual(
    config.listeners.map((l) => l.maxMessageSize),
    [25_000_000, 524_288, 1000],
  );
});

test('routing.default must name a defined upstream', () => {
  assertProblem(yaml({ routing: 'nowhere' }), 'routing.default: names no upstream; defined: outbox, got "nowhere"');
});

test('routing.default may not name an Object.prototype property', () => {
  assertProblem(yaml({ routing: 'constructor' }), 'routing.default: names no upstream; defined: outbox, got "constructor"');
});

test('an unknown upstream type lists the known ones', () => {
  assertProblem(yaml({ upstreams: '  outbox: { type: pigeon, dir: /x }' }), /^upstreams\.outbox\.type: expected "type" to be one of: outbox, smtp, graph\b/);
});

test('an upstream name with a space is refused with the naming rule', () => {
  assertProblem(yaml({ upstreams: '  out box: { type: outbox, dir: /x }', routing: 'outbox' }), /^upstreams\.out box: invalid name: expected a name of letters/);
});

test('duplicate listener names point at the second one and the first', () => {
  const text = yaml({ listeners: '  - { name: relay, role: relay, port: 2525 }\n  - { name: relay, role: submission, port: 2587 }' });
  assert.deepEqual(problems(text), ['listeners[1].name: duplicates listeners[0].name, got "relay"']);
});

test('listener TLS files that cannot be read are named at listeners[i].tls.cert and .key, before start reads them', () => {
  const tls = '{ cert: /nonexistent/cert.pem, key: /nonexistent/key.pem }';
  const found = problems(yaml({ listeners: `  - { name: relay, role: relay, port: 2525 }\n  - { name: submission, role: submission, port: 2587, tls: ${tls} }` }));
  assert.deepEqual(found.map((p) => p.replace(/: ENOENT.*/, '')), [
    'listeners[1].tls.cert: cannot read certificate file /nonexistent/cert.pem',
    'listeners[1].tls.key: cannot read key file /nonexistent/key.pem',
  ]);
});

test('listener TLS files that are no certificate, or a key of another certificate, are refused at their key path', async (t) => {
  const { certPath, keyPath } = await makeTestCertificate();
  const dir = mkdtempSync(join(tmpdir(), 'smarthost-config-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const otherKey = join(dir, 'other-key.pem');
  writeFileSync(otherKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const withTls = (cert: string, key: string) => yaml({ listeners: `  - { name: relay, role: relay, port: 2525, tls: { cert: ${cert}, key: ${key} } }` });

  assert.deepEqual(parseConfig(withTls(certPath, keyPath)).listeners[0]?.tls?.cert, certPath);
  assertProblem(withTls(keyPath, keyPath), new RegExp(`^listeners\\[0\\]\\.tls\\.cert: ${keyPath} is not a usable certificate: `));
  assertProblem(withTls(certPath, certPath), new RegExp(`^listeners\\[0\\]\\.tls\\.key: ${certPath} is not a usable private key: `));
  assertProblem(withTls(certPath, otherKey), new RegExp(`^listeners\\[0\\]\\.tls\\.key: ${otherKey} is not the key of the certificate ${certPath}: .*key values mismatch`));
});

test('two listeners on one address and port are refused, naming both (start would fail with EADDRINUSE)', () => {
  const twice = (a: string, b: string) => yaml({ listeners: `  - { name: a, role: relay, host: "${a}", port: 25 }\n  - { name: b, role: submission, host: "${b}", port: 25 }` });
  assert.deepEqual(problems(twice('127.0.0.1', '127.0.0.1')), [
    'listeners[1].port: 127.0.0.1:25 is already taken by listeners[0].host/.port (127.0.0.1:25): both cannot listen there (EADDRINUSE)',
  ]);
  // A wildcard takes the port on the addresses it covers: "::" on every one, "0.0.0.0" on the IPv4 ones.
  assertProblem(twice('0.0.0.0', '192.168.1.10'), /^listeners\[1\]\.port: 192\.168\.1\.10:25 is already taken by listeners\[0\]\.host\/\.port \(0\.0\.0\.0:25\)/);
  assertProblem(twice('127.0.0.1', '::'), /^listeners\[1\]\.port: \[::\]:25 is already taken by listeners\[0\]/);
  assertProblem(twice('::1', '0:0:0:0:0:0:0:1'), /^listeners\[1\]\.port: /);
  for (const [a, b] of [['0.0.0.0', '::1'], ['192.168.1.10', '192.168.1.11']]) {
    assert.doesNotThrow(() => parseConfig(twice(a!, b!)), `${a} and ${b} may share a port`);
  }
});

test('the admin listener on a listener\'s address and port is refused at admin.port, naming the listener', () => {
  assert.deepEqual(problems(yaml({ extra: 'admin: { port: 2587 }' })), [
    'admin.port: 127.0.0.1:2587 is already taken by listeners[1].host/.port (127.0.0.1:2587): both cannot listen there (EADDRINUSE)',
  ]);
  assert.doesNotThrow(() => parseConfig(yaml({ extra: 'admin: { port: 2587, enabled: false }' })), 'a disabled admin listener takes no port');
  assert.doesNotThrow(() => parseConfig(yaml({ extra: 'admin: { port: 2587, host: "::1" }' })), 'another address');
});

test('routing.routes[].match.user takes any configured user name, also one written like an address', () => {
  const users = `users: [{ name: scan@contoso.com, passwordHash: "${VALID_HASH}" }, { name: erp, passwordHash: "${VALID_HASH}" }]`;
  const matchUser = (user: string) => yaml({ routing: `outbox, routes: [{ name: r, match: { user: ${user} }, upstream: outbox }]`, extra: users });
  assert.deepEqual(parseConfig(matchUser('scan@contoso.com')).routing.routes[0]?.match.user, ['scan@contoso.com'], 'one name is a list of one');
  assert.deepEqual(parseConfig(matchUser('[erp, scan@contoso.com]')).routing.routes[0]?.match.user, ['erp', 'scan@contoso.com']);
});

test('routing.routes[].match.user naming no configured user is refused at its key path (the rule could never match)', () => {
  const users = `users: [{ name: erp, passwordHash: "${VALID_HASH}" }]`;
  const text = yaml({ routing: 'outbox, routes: [{ name: r, match: { user: [erp, erpp] }, upstream: outbox }]', extra: users });
  assert.deepEqual(problems(text), ['routing.routes[0].match.user[1]: names no user, got "erpp"']);
});

test('a central sender is an address, or { address, name, replyTo } (the seeds\' sender name and reply-to); each problem at its key path', () => {
  const route = (sender: string) => yaml({ routing: `outbox, routes: [{ name: r, match: {}, upstream: outbox, sender: ${sender} }]` });
  assert.deepEqual(parseConfig(route('invoices@contoso.com')).routing.routes[0]?.sender, { address: 'invoices@contoso.com' });
  assert.deepEqual(parseConfig(route('{ address: invoices@contoso.com, name: "Contoso Accounting", replyTo: accounting@contoso.com }')).routing.routes[0]?.sender, {
    address: 'invoices@contoso.com',
    name: 'Contoso Accounting',
    replyTo: 'accounting@contoso.com',
  });
  const users = (sender: string) => yaml({ extra: `users: [{ name: erp, passwordHash: "${VALID_HASH}", sender: ${sender} }]` });
  assert.deepEqual(parseConfig(users('{ address: erp@contoso.com, name: ERP }')).users[0]?.sender, { address: 'erp@contoso.com', name: 'ERP' });

  assert.deepEqual(problems(route('invoices')), ['routing.routes[0].sender: expected an e-mail address such as scans@contoso.com, got "invoices"']);
  assert.deepEqual(problems(route('{ address: invoices@contoso.com, replyTo: accounting }')), [
    'routing.routes[0].sender.replyTo: expected an e-mail address such as scans@contoso.com, got "accounting"',
  ]);
  // A line break in the name would end the From field and start another one of the client's choosing.
  assert.deepEqual(problems(route('{ address: invoices@contoso.com, name: "Accounting\\r\\nBcc: x@evil.test" }')), [
    'routing.routes[0].sender.name: expected a display name on one line, without control characters, got "Accounting\\r\\nBcc: x@evil.test"',
  ]);
  assert.deepEqual(problems(route('{ adress: invoices@contoso.com }')), ['routing.routes[0].sender.address: required key is missing (expected string)', 'routing.routes[0].sender.adress: unknown key']);
  assert.deepEqual(problems(users('42')), ['users[0].sender: expected string or object, got 42']);
});

test('inside a union with a literal (limits: false), a problem names the alternatives and the key path the value needs', () => {
  const limits = (value: string) => yaml({ upstreams: `  outbox: { type: outbox, dir: /var/outbox, limits: ${value} }` });
  // A string is neither false nor an object: both are named, not false alone.
  assert.deepEqual(problems(limits('"30/min"')), ['upstreams.outbox.limits: expected false or object, got "30/min"']);
  // An object is the object alternative's to judge, down to its key; false is no object.
  assert.deepEqual(problems(limits('{ messagesPerMinute: many }')), ['upstreams.outbox.limits.messagesPerMinute: expected an integer 1-100000000, got "many"']);
  assert.deepEqual(problems(limits('true')), ['upstreams.outbox.limits: expected false, got true']);
  const displayName = (value: string) => yaml({ extra: `rewrite: [{ match: "*@printer.local", to: scans@contoso.com, displayName: ${value} }]` });
  assert.deepEqual(problems(displayName('{ set: 5 }')), ['rewrite[0].displayName.set: expected string, received number, got 5']);
  assert.deepEqual(problems(displayName('[]')), ['rewrite[0].displayName: expected one of "keep"|"derive" or object']);
});

test('a plaintext user password is refused and points at hash-password', () => {
  assertProblem(yaml({ extra: 'users: [{ name: scanner, password: hunter2 }]' }), /^users\[0\]\.password: plaintext passwords are refused.*hash-password/);
});

test('a passwordHash that is not an scrypt hash is refused without echoing it (it may be a pasted password)', () => {
  assertProblem(yaml({ extra: 'users: [{ name: scanner, passwordHash: "md5:abc" }]' }), /^users\[0\]\.passwordHash: expected a hash printed by "smarthost hash-password"[^,]*$/);
});

test('a passwordHash with a cost scrypt cannot run is refused', () => {
  const absurd = VALID_HASH.replace('ln=15', 'ln=99');
  assertProblem(yaml({ extra: `users: [{ name: scanner, passwordHash: "${absurd}" }]` }), /^users\[0\]\.passwordHash: expected a hash/);
});

test('a valid passwordHash is accepted', () => {
  const config = parseConfig(yaml({ extra: `users: [{ name: scanner, passwordHash: "${VALID_HASH}" }]` }));
  assert.equal(config.users[0]?.passwordHash, VALID_HASH);
});

test('a YAML syntax error is reported with its line', () => {
  assertProblem(yaml({ extra: 'delivery: [1, 2' }), /^YAML syntax: .*line \d+, column \d+$/);
});

test('a duplicated YAML key is a syntax error, not last-one-wins', () => {
  assertProblem(yaml({ extra: 'spool: { dir: /elsewhere }' }), /^YAML syntax: Map keys must be unique/);
});

test('the error message lists every problem with the source name', () => {
  const text = yaml({ listeners: '  - { name: relay, role: relai, port: 0 }' });
  assert.throws(
    () => parseConfig(text, 'relay.yaml'),
    (err: unknown) =>
      err instanceof ConfigError &&
      err.message.startsWith('invalid configuration in relay.yaml:\n') &&
      err.message.includes('\n  listeners[0].role: ') &&
      err.message.includes('\n  listeners[0].port: '),
  );
});

test('loadConfig names an unreadable file', () => {
  assert.throws(
    () => loadConfig('/nonexistent/smarthost.yaml'),
    (err: unknown) => err instanceof ConfigError && err.source === '/nonexistent/smarthost.yaml' && /^cannot read file: /.test(err.problems[0] ?? ''),
  );
});

test('secrets: an inline string', () => {
  const config = parseConfig(yaml({ upstreams: smtpUpstream('inline-pass'), routing: 'mail' }));
  const mail = config.upstreams.mail;
  assert.ok(mail?.type === 'smtp' && mail.auth);
  assert.equal(mail.auth.pass.reveal(), 'inline-pass');
});

test('secrets: { env: VAR } reads the environment at load time', () => {
  process.env.SMARTHOST_TEST_PASS = 'from-env';
  try {
    const config = parseConfig(yaml({ upstreams: smtpUpstream('{ env: SMARTHOST_TEST_PASS }'), routing: 'mail' }));
    const mail = config.upstreams.mail;
    assert.ok(mail?.type === 'smtp' && mail.auth);
    assert.equal(mail.auth.pass.reveal(), 'from-env');
  } finally {
    delete process.env.SMARTHOST_TEST_PASS;
  }
});

test('secrets: a missing environment variable is named at its key path', () => {
  delete process.env.SMARTHOST_TEST_UNSET;
  assert.deepEqual(problems(yaml({ upstreams: smtpUpstream('{ env: SMARTHOST_TEST_UNSET }'), routing: 'mail' })), [
    'upstreams.mail.auth.pass: environment variable SMARTHOST_TEST_UNSET is not set',
  ]);
});

test('secrets: { file: PATH } reads the file and drops one trailing newline', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'smarthost-config-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'pass');
  writeFileSync(path, 'from-file \n');
  const config = parseConfig(yaml({ upstreams: smtpUpstream(`{ file: ${path} }`), routing: 'mail' }));
  const mail = config.upstreams.mail;
  assert.ok(mail?.type === 'smtp' && mail.auth);
  assert.equal(mail.auth.pass.reveal(), 'from-file ');

  writeFileSync(path, 'two-newlines\r\n\n');
  const again = parseConfig(yaml({ upstreams: smtpUpstream(`{ file: ${path} }`), routing: 'mail' })).upstreams.mail;
  assert.ok(again?.type === 'smtp' && again.auth);
  assert.equal(again.auth.pass.reveal(), 'two-newlines\r\n', 'only one trailing newline is dropped');
});

test('secrets: an unreadable file is named at its key path', () => {
  assertProblem(
    yaml({ upstreams: smtpUpstream('{ file: /nonexistent/secret }'), routing: 'mail' }),
    /^upstreams\.mail\.auth\.pass: cannot read secret file \/nonexistent\/secret: .*ENOENT/,
  );
});

test('secrets: any other shape is refused with the three accepted forms', () => {
  assertProblem(
    yaml({ upstreams: smtpUpstream('{ vault: smtp }'), routing: 'mail' }),
    'upstreams.mail.auth.pass: expected a secret: a string, { env: VARIABLE } or { file: PATH }',
  );
});

test('a Secret never prints its value through JSON, String, templates or inspect', () => {
  const config = parseConfig(yaml({ upstreams: smtpUpstream('s3cr3t-value'), routing: 'mail' }));
  const mail = config.upstreams.mail;
  assert.ok(mail?.type === 'smtp' && mail.auth);
  const pass = mail.auth.pass;
  assert.ok(pass instanceof Secret);
  for (const printed of [JSON.stringify(config), String(pass), `${pass}`, inspect(pass), inspect(config, { depth: null, showHidden: true })]) {
    assert.ok(!printed.includes('s3cr3t-value'), `secret leaked in: ${printed}`);
  }
  assert.ok(JSON.stringify(config).includes('"pass":"[secret]"'));
  assert.equal(String(pass), '[secret]');
});

test('the loaded config is deeply frozen', () => {
  const config = parseConfig(yaml());
  assert.throws(() => {
    (config as { hostname: string }).hostname = 'changed';
  }, TypeError);
  assert.throws(() => {
    (config.listeners[0] as { port: number }).port = 25;
  }, TypeError);
  assert.throws(() => {
    (config.listeners as unknown as unknown[]).push({});
  }, TypeError);
  assert.throws(() => {
    (config.upstreams as Record<string, unknown>).extra = {};
  }, TypeError);
  assert.throws(() => {
    (config.delivery.retry as { lifetime: number }).lifetime = 1;
  }, TypeError);
});
