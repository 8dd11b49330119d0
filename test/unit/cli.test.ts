import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { verifyPassword } from '../../src/inbound/passwords.js';

const CLI = fileURLToPath(new URL('../../src/cli.js', import.meta.url));
const PACKAGE_JSON = new URL('../../../package.json', import.meta.url);

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI; SMARTHOST_CONFIG is removed from the environment unless `env` sets it. */
function run(args: string[], options: { env?: Record<string, string>; input?: string } = {}): Promise<Result> {
  const env = { ...process.env, ...options.env };
  if (!options.env?.SMARTHOST_CONFIG) delete env.SMARTHOST_CONFIG;
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [CLI, ...args], { env, timeout: 20_000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: child.exitCode, stdout, stderr });
    });
    child.stdin?.end(options.input ?? '');
  });
}

const VALID = `
spool: { dir: ./spool }
listeners:
  - { name: relay, role: relay, port: 2525, networks: [127.0.0.0/8] }
upstreams:
  outbox: { type: outbox, dir: ./outbox }
routing: { default: outbox }
`;

const INVALID = VALID.replace('port: 2525', 'port: "abc"');

function tempFiles(t: { after(fn: () => void): void }): (name: string, text: string) => string {
  const dir = mkdtempSync(join(tmpdir(), 'smarthost-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return (name, text) => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };
}

// Each test starts its own process (~0.3 s of module loading), so they run side by side.
describe('the smarthost command line', { concurrency: true }, () => {
  test('check-config on a valid file exits 0 and says it is valid', async (t) => {
    const path = tempFiles(t)('valid.yaml', VALID);
    const r = await run(['check-config', path]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), `${path}: configuration is valid`);
    assert.equal(r.stderr, '');
  });

  test('check-config on an invalid file exits 1 and names the key path on stderr', async (t) => {
    const path = tempFiles(t)('invalid.yaml', INVALID);
    const r = await run(['check-config', path]);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /invalid configuration in .*invalid\.yaml/);
    assert.ok(r.stderr.includes('listeners[0].port: expected an integer 1-65535, got "abc"'), r.stderr);
  });

  test('check-config accepts --config as well as a positional path', async (t) => {
    const path = tempFiles(t)('invalid.yaml', INVALID);
    const r = await run(['check-config', '--config', path]);
    assert.equal(r.code, 1);
    assert.ok(r.stderr.includes('listeners[0].port'), r.stderr);
  });

  test('check-config without a path honours SMARTHOST_CONFIG', async (t) => {
    const file = tempFiles(t);
    const invalid = file('invalid.yaml', INVALID);
    const valid = file('valid.yaml', VALID);
    const bad = await run(['check-config'], { env: { SMARTHOST_CONFIG: invalid } });
    assert.equal(bad.code, 1);
    assert.ok(bad.stderr.includes(invalid), bad.stderr);
    const good = await run(['check-config'], { env: { SMARTHOST_CONFIG: valid } });
    assert.equal(good.code, 0, good.stderr);
    assert.ok(good.stdout.includes(`${valid}: configuration is valid`), good.stdout);
  });

  test('check-config without a path or SMARTHOST_CONFIG checks the embedded default', async () => {
    const r = await run(['check-config']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /config\/default\.yaml: configuration is valid/);
  });

  test('check-config on a missing file exits 1 and says the file cannot be read', async () => {
    const r = await run(['check-config', '/nonexistent/smarthost.yaml']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot read file/);
  });

  test('limits show on a damaged state.dir/limits.json exits 1 and names the file', async (t) => {
    const file = tempFiles(t);
    const damaged = file('limits.json', '{"savedAt": "x", ');
    const config = file('c.yaml', `${VALID}state: { dir: ${dirname(damaged)} }\n`);
    const r = await run(['limits', 'show', '--config', config]);
    assert.equal(r.code, 1);
    const line = r.stderr.split('\n')[0]!;
    assert.ok(line.startsWith(`smarthost: cannot use the send-limit counters ${damaged}: `), line);
    assert.match(line, /; move it aside to start with empty counters/);
  });

  test('--version prints the version from package.json', async () => {
    const { version } = JSON.parse(readFileSync(PACKAGE_JSON, 'utf8')) as { version: string };
    const r = await run(['--version']);
    assert.equal(r.code, 0);
    assert.equal(r.stdout, `${version}\n`);
  });

  test('an unknown command exits 2 and shows the usage on stderr', async () => {
    const r = await run(['frobnicate']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown command "frobnicate"/);
    assert.match(r.stderr, /Usage: smarthost/);
  });

  test('hash-password reads stdin and prints an scrypt hash that verifies only that password', async () => {
    const r = await run(['hash-password'], { input: 'printer-pass\n' });
    assert.equal(r.code, 0, r.stderr);
    const hash = r.stdout.trim();
    assert.match(hash, /^\$scrypt\$ln=\d+,r=\d+,p=\d+\$/);
    assert.equal(r.stdout, `${hash}\n`, 'only the hash on stdout');
    assert.equal(await verifyPassword('printer-pass', hash), true);
    assert.equal(await verifyPassword('printer-pass\n', hash), false);
    assert.equal(await verifyPassword('wrong', hash), false);
  });

  test('hash-password with empty stdin fails instead of hashing an empty password', async () => {
    const r = await run(['hash-password'], { input: '' });
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /no password given/);
  });
});
