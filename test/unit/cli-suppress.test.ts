/**
 * `smarthost suppress add|remove|list` as the built CLI: exit codes, output, the file it writes, and how it
 * finds state.dir (--config, SMARTHOST_CONFIG).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../src/cli.js', import.meta.url));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], env: Record<string, string> = {}): Promise<Result> {
  const full = { ...process.env, ...env };
  if (!env.SMARTHOST_CONFIG) delete full.SMARTHOST_CONFIG;
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [CLI, ...args], { env: full, timeout: 20_000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: child.exitCode, stdout, stderr });
    });
  });
}

/** A config whose state.dir is in a fresh temporary directory. */
function setup(t: TestContext): { config: string; file: string } {
  const dir = mkdtempSync(join(tmpdir(), 'smarthost-suppress-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, 'smarthost.yaml');
  writeFileSync(
    config,
    `spool: { dir: ${dir}/spool }
state: { dir: ${dir}/state }
listeners: [{ name: relay, role: relay, port: 2525 }]
upstreams: { outbox: { type: outbox, dir: ${dir}/outbox } }
routing: { default: outbox }
`,
  );
  return { config, file: join(dir, 'state', 'suppression.json') };
}

test('add, list, list --json and remove, with the exit codes scripts rely on', async (t) => {
  const { config, file } = setup(t);
  const empty = await run(['suppress', 'list', '--config', config]);
  assert.equal(empty.code, 0, empty.stderr);
  assert.equal(empty.stdout, `no address is on the suppression list (${file})\n`);

  const add = await run(['suppress', 'add', '<Alice@Example.test>', '--reason', 'asked to be removed', '--config', config]);
  assert.equal(add.code, 0, add.stderr);
  assert.equal(add.stdout, `added Alice@Example.test to the suppression list (${file})\n`);
  const again = await run(['suppress', 'add', 'alice@example.test', '--config', config]);
  assert.equal(again.code, 0, 'adding a listed address is not an error');
  assert.match(again.stdout, /^Alice@Example\.test is already on the suppression list since \S+ \(reason: asked to be removed\)$/m);
  assert.equal((await run(['suppress', 'add', 'bob@example.test', '--config', config])).code, 0);

  const onDisk = JSON.parse(readFileSync(file, 'utf8')) as { suppressed: { address: string; reason: string; addedAt: string }[] };
  assert.deepEqual(onDisk.suppressed.map((e) => [e.address, e.reason]), [
    ['Alice@Example.test', 'asked to be removed'],
    ['bob@example.test', 'added from the command line'],
  ]);

  const table = await run(['suppress', 'list', '--config', config]);
  assert.equal(table.code, 0);
  const lines = table.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^ADDRESS +ADDED +REASON$/);
  assert.match(lines[1]!, /^Alice@Example\.test +\d{4}-\d\d-\d\dT\S+Z +asked to be removed$/);
  assert.match(lines[2]!, /^bob@example\.test +\S+ +added from the command line$/);
  assert.equal(lines.at(-1), `2 addresses on the suppression list (${file}); action: refuse`);

  const json = await run(['suppress', 'list', '--json', '--config', config]);
  assert.equal(json.code, 0, json.stderr);
  const parsed = JSON.parse(json.stdout) as { file: string; action: string; suppressed: { address: string }[] };
  assert.equal(parsed.file, file);
  assert.equal(parsed.action, 'refuse');
  assert.deepEqual(parsed.suppressed.map((e) => e.address), ['Alice@Example.test', 'bob@example.test']);

  const remove = await run(['suppress', 'remove', 'ALICE@example.test', '--config', config]);
  assert.equal(remove.code, 0, remove.stderr);
  assert.equal(remove.stdout, `removed Alice@Example.test from the suppression list (${file})\n`);
  const missing = await run(['suppress', 'remove', 'alice@example.test', '--config', config]);
  assert.equal(missing.code, 1);
  assert.equal(missing.stdout, '');
  assert.match(missing.stderr, /alice@example\.test is not on the suppression list/);
});

test('finds state.dir through SMARTHOST_CONFIG and through a --config given before the command', async (t) => {
  const { config, file } = setup(t);
  const viaEnv = await run(['suppress', 'add', 'carol@example.test'], { SMARTHOST_CONFIG: config });
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  assert.ok(viaEnv.stdout.includes(file), viaEnv.stdout);
  const global = await run(['--config', config, 'suppress', 'list', '--json']);
  assert.equal(global.code, 0, global.stderr);
  assert.deepEqual((JSON.parse(global.stdout) as { suppressed: { address: string }[] }).suppressed.map((e) => e.address), ['carol@example.test']);
});

test('wrong command lines exit 2 and say what is wrong', async (t) => {
  const { config } = setup(t);
  const cases: [string[], RegExp][] = [
    [['suppress'], /expected add, remove or list/],
    [['suppress', 'purge'], /unknown action "purge"/],
    [['suppress', 'add'], /takes exactly one ADDRESS, got 0/],
    [['suppress', 'add', 'a@b.test', 'c@d.test'], /takes exactly one ADDRESS, got 2/],
    [['suppress', 'add', 'not-an-address'], /"not-an-address" is not an e-mail address/],
    [['suppress', 'remove', 'a@b.test', '--reason', 'x'], /--reason is only for "suppress add"/],
    [['suppress', 'add', 'a@b.test', '--reason', ' '], /--reason must not be empty/],
    [['suppress', 'add', 'a@b.test', '--json'], /--json is only for "suppress list"/],
    [['suppress', 'list', 'a@b.test'], /takes no address/],
  ];
  for (const [args, message] of cases) {
    const r = await run([...args, '--config', config]);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.match(r.stderr, /Usage: smarthost suppress add ADDRESS/);
  }
  const help = await run(['suppress', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: smarthost suppress add ADDRESS/);
});

test('a damaged list file is reported in plain words and left as it is', async (t) => {
  const { config, file } = setup(t);
  assert.equal((await run(['suppress', 'add', 'dave@example.test', '--config', config])).code, 0);
  writeFileSync(file, '{ "suppressed": [');
  for (const args of [['suppress', 'list'], ['suppress', 'add', 'erin@example.test']]) {
    const r = await run([...args, '--config', config]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, new RegExp(`^cannot use the suppression list ${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: `));
  }
  assert.equal(readFileSync(file, 'utf8'), '{ "suppressed": [');
});

test('a config that is not valid stops the command with the config problem', async (t) => {
  const { config } = setup(t);
  writeFileSync(config, readFileSync(config, 'utf8').replace('port: 2525', 'port: "abc"'));
  const r = await run(['suppress', 'list', '--config', config]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /listeners\[0\]\.port: expected an integer 1-65535/);
});
