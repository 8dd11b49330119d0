/**
 * Every example under config/examples passes `smarthost check-config` (the built CLI, as an admin would run
 * it), with placeholder values for the secrets they read from the environment. Together they cover every
 * upstream type, so no type is left without an example.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { test } from 'node:test';
import { parse } from 'yaml';
import { CLI } from '../helpers/daemon.js';
import { withTestCertificateFiles } from '../helpers/tls.js';

const run = promisify(execFile);
const EXAMPLES = fileURLToPath(new URL('../../../config/examples/', import.meta.url));
const SECRETS = { M365_CLIENT_SECRET: 'placeholder', M365_APP_KEY_PEM: 'placeholder', MJ_APIKEY_PRIVATE: 'placeholder', IONOS_PASSWORD: 'placeholder' };

const files = (await readdir(EXAMPLES)).filter((f) => f.endsWith('.yaml')).sort();

test('there is an example for each scenario the README names', () => {
  assert.deepEqual(files, [
    'any-smtp-server.yaml',
    'legacy-app-m365-smtp-oauth.yaml',
    'mailjet.yaml',
    'many-devices-connector.yaml',
    'mixed-routing.yaml',
    'printer-to-graph.yaml',
  ]);
});

for (const file of files) {
  test(`config/examples/${file} passes check-config`, async (t) => {
    // check-config reads the listener certificates the example names; a copy points them at a test pair.
    const dir = await mkdtemp(join(tmpdir(), 'smarthost-example-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const copy = join(dir, file);
    await writeFile(copy, await withTestCertificateFiles(await readFile(`${EXAMPLES}${file}`, 'utf8')));
    const { stdout } = await run(process.execPath, [CLI, 'check-config', copy], { env: { ...process.env, ...SECRETS } });
    assert.match(stdout, /configuration is valid/);
  });
}

test('the examples together use every upstream type', async () => {
  const used = new Set<string>();
  for (const file of files) {
    const config = parse(await readFile(`${EXAMPLES}${file}`, 'utf8')) as { upstreams: Record<string, { type: string }> };
    for (const u of Object.values(config.upstreams)) used.add(u.type);
  }
  for (const type of ['smtp', 'm365-smtp', 'm365-connector', 'graph', 'mailjet', 'mailjet-smtp']) assert.ok(used.has(type), `no example uses type ${type}`);
});
