/**
 * `npm pack` makes a tarball that installs and runs on a machine with nothing but Node and npm: it is
 * installed globally into a scratch prefix (from the local npm cache), and the installed `smarthost`
 * command prints its version and relays a message. Slow: about 10 s, most of it the install.
 */
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../helpers/daemon.js';
import { NPM, npmFromCache, npmHadNoNetwork, PROJECT, proveItRelays, run } from '../helpers/packaging.js';

const pkg = JSON.parse(await readFile(join(PROJECT, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  bin: Record<string, string>;
  files: string[];
  scripts: Record<string, string>;
};

test('package.json builds before packing and ships the command, configs, schema, unit and licence', () => {
  assert.match(pkg.scripts.prepack ?? '', /\bnpm run build\b/, 'prepack builds, so a tarball never carries a stale dist/');
  assert.equal(pkg.bin.smarthost, 'dist/src/cli.js');
  for (const entry of ['dist/src', 'config', 'systemd', 'README.md', 'LICENSE']) assert.ok(pkg.files.includes(entry), `"files" lists ${entry}`);
});

test('npm test names every test file, in a form Node 20, 22 and 24 all read', async () => {
  // Node 22 and 24 take a directory argument to --test for a module and run nothing; Node 20 has no globs.
  // So the shell expands the pattern, which reaches test files exactly one folder below test/.
  const pattern = 'dist/test/*/*.test.js';
  assert.ok(pkg.scripts.test?.endsWith(` ${pattern}`), `the test script ends with ${pattern}: ${pkg.scripts.test}`);
  const testDir = join(PROJECT, 'test');
  const files = (await readdir(testDir, { recursive: true })).filter((f) => f.endsWith('.test.ts'));
  assert.ok(files.length > 50, `found the test files (${files.length})`);
  const unreached = files.filter((f) => !/^[^/]+\/[^/]+\.test\.ts$/.test(f));
  assert.deepEqual(unreached, [], 'every test file sits in a folder directly under test/');
});

test('the packed tarball installs globally and its smarthost command starts and relays', { timeout: 120_000 }, async (t) => {
  const scratch = await tempDir('smarthost-pack-');
  t.after(() => scratch.remove());

  // --ignore-scripts: `npm test` has just built dist/, and a prepack rebuild here would rewrite it under the
  // feet of the test files running beside this one. The first test checks that prepack builds.
  const packed = await run(NPM, ['pack', '--ignore-scripts', '--json', '--pack-destination', scratch.path], { cwd: PROJECT });
  assert.equal(packed.code, 0, packed.stderr);
  const [info] = JSON.parse(packed.stdout) as { filename: string; files: { path: string; mode: number }[] }[];
  const paths = info!.files.map((f) => f.path);
  for (const path of ['package.json', 'LICENSE', 'README.md', 'dist/src/cli.js', 'config/default.yaml', 'config/smarthost.schema.json', 'systemd/smarthost.service']) {
    assert.ok(paths.includes(path), `the tarball holds ${path}`);
  }
  const strays = paths.filter((p) => /^(src|test|bench|docs|\.ci|data|node_modules)\/|^dist\/(test|bench)\//.test(p));
  assert.deepEqual(strays, [], 'no sources, tests or local data in the tarball');
  const cli = await readFile(join(PROJECT, 'dist/src/cli.js'), 'utf8');
  assert.ok(cli.startsWith('#!/usr/bin/env node\n'), 'the bin script has a node shebang');

  const prefix = join(scratch.path, 'prefix');
  const started = Date.now();
  const install = await npmFromCache(['install', '--global', '--prefix', prefix, join(scratch.path, info!.filename)], { cwd: scratch.path, timeoutMs: 90_000 });
  if (npmHadNoNetwork(install)) return t.skip(`npm could not install from the cache and no registry is reachable: ${install.stderr.trim().split('\n').at(-1)}`);
  assert.equal(install.code, 0, install.stderr);
  t.diagnostic(`npm install -g (${install.mode}): ${Date.now() - started} ms`);

  const smarthost = join(prefix, 'bin', 'smarthost');
  const version = await run(smarthost, ['--version']);
  assert.equal(version.code, 0, version.stderr);
  assert.equal(version.stdout.trim(), pkg.version);

  // The installed package finds its own files: the embedded default config validates.
  const installedConfig = join(prefix, 'lib', 'node_modules', pkg.name, 'config', 'default.yaml');
  const check = await run(smarthost, ['check-config', installedConfig]);
  assert.equal(check.code, 0, check.stderr);
  assert.ok((await readdir(join(prefix, 'lib', 'node_modules', pkg.name, 'systemd'))).includes('smarthost.service'));

  const data = join(scratch.path, 'data');
  await mkdir(data);
  const proof = await proveItRelays([smarthost], data, { configVia: 'option' });
  t.diagnostic(`the installed command relayed ${proof.queueId}`);
});
