/**
 * The README is where newcomers copy their first config from: every complete configuration in it (a yaml
 * block with top-level spool: and listeners:) must load, with placeholders for the secrets it reads from
 * the environment and files it names that do not exist here.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { withTestCertificateFiles } from '../helpers/tls.js';

const README = new URL('../../../README.md', import.meta.url);
const text = await readFile(README, 'utf8');
const complete = [...text.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!).filter((b) => /^spool:/m.test(b) && /^listeners:/m.test(b));

test('the README shows complete configurations', () => {
  assert.ok(complete.length >= 3, `found ${complete.length}`);
});

for (const [i, block] of complete.entries()) {
  test(`README configuration ${i + 1} of ${complete.length} passes the config schema`, async () => {
    for (const [, name] of block.matchAll(/env: ([A-Z0-9_]+)/g)) process.env[name!] ??= 'placeholder';
    // Secret files named in the README do not exist on a test machine; the loader reads them, so they are swapped
    // for env: a real (throwaway) key for a Google service account, a placeholder for the rest.
    const runnable = block
      .replace(/(serviceAccount: )\{ file: [^}]+\}/g, '$1{ env: README_SERVICE_ACCOUNT }')
      .replace(/\{ file: [^}]+\}/g, '{ env: README_FILE_SECRET }');
    process.env.README_FILE_SECRET ??= 'placeholder';
    process.env.README_SERVICE_ACCOUNT ??= serviceAccount();
    // Listener certificates are read too: they become a throwaway pair.
    const withCertificates = await withTestCertificateFiles(runnable);
    assert.doesNotThrow(() => parseConfig(withCertificates, `README block ${i + 1}`));
  });
}

function serviceAccount(): string {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  return JSON.stringify({ type: 'service_account', client_email: 'relay@project.iam.gserviceaccount.com', private_key_id: 'k1', private_key: pem });
}
