/**
 * No secret reaches the output, not even at log level trace: a local user's password (AUTH PLAIN and LOGIN,
 * accepted and refused), an smtp upstream's password given inline, through the environment and through a file
 * (accepted by the upstream and refused by it), and a config that check-config refuses. Every run captures
 * everything the daemon wrote (the in-process log lines, a child's stdout and stderr) and looks for each secret
 * as written, base64-encoded, and inside the AUTH PLAIN blob that carries it.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, test } from 'node:test';
import { inspect } from 'node:util';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { hashPassword } from '../../src/inbound/passwords.js';
import { createLogger } from '../../src/log.js';
import { CLI, spawnDaemon, startInProcess, tempDir, testConfig } from '../helpers/daemon.js';
import { freePort, smtpDialog, smtpReplyCodes } from '../helpers/net.js';
import { startSink, type Sink } from '../helpers/sink.js';

const USER = 'alice';
const USER_PASSWORD = 'Quokka-local-PW-7f3e9c!';
const WRONG_PASSWORD = 'Wombat-guess-PW-2b81d4?';
const UPSTREAM_USER = 'relay@upstream.test';
const UPSTREAM_PASS = { inline: 'Kestrel-inline-PW-4417#', env: 'Heron-env-PW-8821%', file: 'Ibis-file-PW-3359&' } as const;
type SecretSource = keyof typeof UPSTREAM_PASS;
/** What the refusing upstream wants instead; the daemon never learns it, but it must not show up either. */
const UPSTREAM_WANTS = 'Sink-wants-PW-6a0c5e$';
const ENV_VAR = 'SMARTHOST_TEST_SECRET_UPSTREAM_PASS';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

/** The forms a secret could leak in: as written, JSON-escaped, base64 (padded or not), and in AUTH PLAIN blobs. */
function leakForms(secret: string, users: string[]): string[] {
  return [
    secret,
    JSON.stringify(secret).slice(1, -1),
    b64(secret).replace(/=+$/, ''),
    Buffer.from(secret).toString('base64url'),
    ...users.flatMap((u) => [b64(`\0${u}\0${secret}`), b64(`${u}\0${u}\0${secret}`)]),
  ];
}

const ALL_SECRETS = [USER_PASSWORD, WRONG_PASSWORD, ...Object.values(UPSTREAM_PASS), UPSTREAM_WANTS];
const USERS = [USER, 'nobody', UPSTREAM_USER];

function assertNoSecret(output: string, where: string): void {
  for (const secret of ALL_SECRETS) {
    for (const form of leakForms(secret, USERS)) {
      const at = output.indexOf(form);
      assert.ok(at === -1, `${where} contains the secret ${JSON.stringify(secret)} as ${JSON.stringify(form)}: ...${output.slice(Math.max(0, at - 200), at + 100)}...`);
    }
  }
}

let dir: Awaited<ReturnType<typeof tempDir>>;
let passwordHash: string;
let secretFile: string;

before(async () => {
  dir = await tempDir();
  passwordHash = await hashPassword(USER_PASSWORD);
  secretFile = join(dir.path, 'upstream-pass');
  await writeFile(secretFile, `${UPSTREAM_PASS.file}\n`);
  process.env[ENV_VAR] = UPSTREAM_PASS.env;
});

after(async () => {
  delete process.env[ENV_VAR];
  await dir?.remove();
});

function passSpec(source: SecretSource): unknown {
  if (source === 'inline') return UPSTREAM_PASS.inline;
  if (source === 'env') return { env: ENV_VAR };
  return { file: secretFile };
}

/** A trace-level config: one local user, an smtp upstream at the sink that logs in with the given secret. */
async function traceConfig(subdir: string, sinkPort: number, source: SecretSource, method: 'PLAIN' | 'LOGIN'): Promise<Record<string, unknown>> {
  return testConfig({
    dir: join(dir.path, subdir),
    users: [{ name: USER, passwordHash }],
    upstreams: { up: { type: 'smtp', host: '127.0.0.1', port: sinkPort, security: 'none', auth: { method, user: UPSTREAM_USER, pass: passSpec(source) } } },
    extra: { log: { level: 'trace' } },
  });
}

/** AUTH PLAIN and LOGIN with the right and wrong passwords (and an unknown user) on the submission port. */
async function authenticate(port: number): Promise<void> {
  const attempts: [string[], number][] = [
    [[`AUTH PLAIN ${b64(`\0${USER}\0${WRONG_PASSWORD}`)}`], 535],
    [['AUTH PLAIN', b64(`\0${USER}\0${WRONG_PASSWORD}`)], 535],
    [['AUTH LOGIN', b64(USER), b64(WRONG_PASSWORD)], 535],
    [['AUTH LOGIN', b64('nobody'), b64(USER_PASSWORD)], 535],
    [['AUTH LOGIN', b64(USER), b64(USER_PASSWORD)], 235],
    [[`AUTH PLAIN ${b64(`${USER}\0${USER}\0${USER_PASSWORD}`)}`], 235],
    [['AUTH PLAIN', b64(`\0${USER}\0${USER_PASSWORD}`)], 235],
  ];
  for (const [lines, code] of attempts) {
    const t = await smtpDialog(port, ['EHLO client.test', ...lines, 'QUIT'], { localAddress: '127.0.0.2' });
    assert.equal(smtpReplyCodes(t).at(-2), code, t);
  }
}

/** One message through the relay port (trusted 127.0.0.1, no AUTH), for the upstream to log in and take. */
async function send(port: number, recipient: string): Promise<void> {
  const t = await smtpDialog(port, ['EHLO client.test', 'MAIL FROM:<sender@example.com>', `RCPT TO:<${recipient}>`, 'DATA', 'RAW:Subject: secrets\r\n\r\nhello\r\n.\r\n', 'QUIT']);
  assert.deepEqual(smtpReplyCodes(t), [220, 250, 250, 250, 354, 250, 221], t);
}

const portOf = (config: Record<string, unknown>, name: string): number =>
  (config.listeners as { name: string; port: number }[]).find((l) => l.name === name)!.port;

// ---------------------------------------------------------------------------------------------------------

test('in process at trace level: local user passwords and an inline upstream password never reach the log', async () => {
  const sink = await startSink({ auth: { user: UPSTREAM_USER, pass: UPSTREAM_PASS.inline } });
  const relay = await startInProcess(await traceConfig('in-process', sink.port, 'inline', 'PLAIN'));
  try {
    await authenticate(relay.port('submission'));
    await send(relay.port('relay'), 'in-process@example.com');
    await sink.waitForMessages(1);
    await relay.waitForLog((l) => l.event === 'queue.removed');
    assert.equal(relay.logs().filter((l) => l.event === 'smtp.auth_failed').length, 4, 'the failed attempts were logged');
    assertNoSecret(relay.logs().map((l) => JSON.stringify(l)).join('\n'), 'the in-process log');
    assertNoSecret(JSON.stringify(relay.daemon.config), 'JSON.stringify(config)');
    assertNoSecret(inspect(relay.daemon.config, { depth: Infinity }), 'util.inspect(config)');
  } finally {
    await relay.stop();
    await sink.close();
  }
});

const CHILD_CASES: [SecretSource, 'PLAIN' | 'LOGIN', boolean][] = [
  ['inline', 'PLAIN', true],
  ['env', 'LOGIN', true],
  ['file', 'PLAIN', true],
  ['inline', 'LOGIN', false],
  ['env', 'PLAIN', false],
  ['file', 'LOGIN', false],
];

for (const [source, method, accepted] of CHILD_CASES) {
  test(`daemon process at trace level, ${source} upstream password, AUTH ${method}, upstream ${accepted ? 'accepts' : 'refuses'} it: no secret on stdout or stderr`, async () => {
    const sink: Sink = await startSink({ auth: { user: UPSTREAM_USER, pass: accepted ? UPSTREAM_PASS[source] : UPSTREAM_WANTS } });
    const name = `child-${source}-${method}-${accepted}`;
    const config = await traceConfig(name, sink.port, source, method);
    const child = await spawnDaemon(config, dir.path);
    try {
      // The local user's password too, once: in the daemon process with the upstream that logs in with a password.
      if (source === 'inline' && accepted) await authenticate(portOf(config, 'submission'));
      await send(portOf(config, 'relay'), `${name}@example.com`);
      if (accepted) {
        await sink.waitForMessages(1);
        await child.waitForOutput(/"event":"queue\.removed"/);
      } else {
        await child.waitForOutput(/"event":"delivery"[^\n]*"result":"deferred"/);
        assert.equal(sink.messages.length, 0);
        assert.match(child.stdout(), /"event":"delivery"[^\n]*"reply":"4\d\d [^"]*535/, 'the refusal is logged with the upstream reply');
      }
    } finally {
      child.proc.kill('SIGTERM');
      await child.exited;
      await sink.close();
    }
    assertNoSecret(child.stdout(), 'the daemon stdout');
    assertNoSecret(child.stderr(), 'the daemon stderr');
  });
}

// ---------------------------------------------------------------------------------------------------------
// configuration

function runCli(args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [CLI, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: child.exitCode, output: `${stdout}${stderr}` });
    });
  });
}

async function configFile(name: string, config: Record<string, unknown>): Promise<string> {
  const path = join(dir.path, name);
  await writeFile(path, stringify(config));
  return path;
}

/** A config holding every kind of secret, inline and by reference, plus `broken` (one mistake elsewhere). */
async function secretConfig(broken: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  const config = await testConfig({
    dir: join(dir.path, 'config'),
    users: [{ name: USER, passwordHash }],
    upstreams: {
      inline: { type: 'smtp', host: 'mail.example.net', auth: { user: UPSTREAM_USER, pass: UPSTREAM_PASS.inline } },
      env: { type: 'smtp', host: 'mail.example.net', auth: { user: UPSTREAM_USER, pass: { env: ENV_VAR } } },
      file: { type: 'smtp', host: 'mail.example.net', auth: { user: UPSTREAM_USER, pass: { file: secretFile } } },
    },
  });
  return { ...config, ...broken };
}

test('check-config and start refuse a broken config without printing the secrets in it', async () => {
  const broken = await secretConfig({ delivery: { maxConcurrency: 'many' } });
  const path = await configFile('broken.yaml', broken);
  for (const args of [['check-config', path], ['start', '--config', path]]) {
    const r = await runCli(args);
    assert.equal(r.code, 1, r.output);
    assert.match(r.output, /delivery\.maxConcurrency/);
    assertNoSecret(r.output, `smarthost ${args[0]}`);
  }
  // The same config, valid: check-config says so and prints nothing else.
  const valid = await runCli(['check-config', await configFile('valid.yaml', await secretConfig())]);
  assert.equal(valid.code, 0, valid.output);
  assertNoSecret(valid.output, 'check-config on a valid file');
});

test('a parsed config prints no secret through JSON.stringify, util.inspect, String or the logger', async () => {
  const config = parseConfig(stringify(await secretConfig()), 'test');
  const auth = (name: string) => (config.upstreams[name] as { auth: { pass: { reveal(): string } } }).auth.pass;
  assert.deepEqual(['inline', 'env', 'file'].map((n) => auth(n).reveal()), [UPSTREAM_PASS.inline, UPSTREAM_PASS.env, UPSTREAM_PASS.file]);

  const lines: string[] = [];
  const stream = new PassThrough();
  stream.on('data', (c: Buffer) => lines.push(c.toString()));
  const log = createLogger('trace', stream);
  log.info({ config, upstream: config.upstreams.inline, pass: auth('env') }, 'config');
  log.info({ auth: { pass: auth('file').reveal(), password: USER_PASSWORD } }, 'revealed by mistake');
  log.flush();
  await new Promise((resolve) => setImmediate(resolve));

  assertNoSecret(JSON.stringify(config), 'JSON.stringify(config)');
  assertNoSecret(inspect(config, { depth: Infinity }), 'util.inspect(config)');
  assertNoSecret(['inline', 'env', 'file'].map((n) => `${String(auth(n))} ${auth(n)}`).join(' '), 'String(secret)');
  assert.ok(lines.length >= 2);
  assertNoSecret(lines.join(''), 'the logger');
});

// check-config echoes a refused value (`got <value>`) to help the admin, but never for a secret's key: a
// mistyped password must not reach the terminal or a CI log.
const ECHOED: [string, Record<string, unknown>][] = [
  ['a numeric upstream password (unquoted YAML)', { upstreams: { up: { type: 'smtp', host: 'h.example', auth: { user: 'u', pass: 98765432109 } } }, routing: { default: 'up' } }],
  ['a plaintext password put in users[].passwordHash', { users: [{ name: USER, passwordHash: USER_PASSWORD }] }],
];
for (const [i, [what, broken]] of ECHOED.entries()) {
  test(`check-config refusing ${what} does not print it`, async () => {
    const path = await configFile(`todo-${i}.yaml`, await secretConfig(broken));
    const r = await runCli(['check-config', path]);
    assert.equal(r.code, 1, r.output);
    assert.ok(!r.output.includes('98765432109'), r.output);
    assertNoSecret(r.output, 'check-config');
  });
}
