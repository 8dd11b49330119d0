/**
 * config/smarthost.schema.json is what `smarthost config-schema` generates from the zod schema (so it cannot
 * drift: regenerate with `npm run schema`), and every config the loader accepts is valid against it: the
 * embedded default and, once they exist, the examples under config/examples/. The schema is looser than
 * the loader, but it must still refuse the obvious mistakes an editor should underline.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { configJsonSchemaText, configSchemaCommand } from '../../src/cli/config-schema.js';
import { UsageError } from '../../src/cli/command.js';
import { parseConfig } from '../../src/config/load.js';
import { tempDir, testConfig } from '../helpers/daemon.js';
import { validate } from '../helpers/json-schema.js';
import { PROJECT } from '../helpers/packaging.js';
import { withTestCertificateFiles } from '../helpers/tls.js';

const SCHEMA_FILE = join(PROJECT, 'config', 'smarthost.schema.json');
const committed = await readFile(SCHEMA_FILE, 'utf8');
const schema = JSON.parse(committed) as Record<string, unknown> & { properties: Record<string, Record<string, unknown>> };

/** Config files the loader must accept: the embedded default, and the scenario examples when they exist. */
async function shippedConfigs(): Promise<string[]> {
  const examples = join(PROJECT, 'config', 'examples');
  const files = existsSync(examples) ? (await readdir(examples)).filter((f) => /\.ya?ml$/.test(f)).map((f) => join(examples, f)) : [];
  return [join(PROJECT, 'config', 'default.yaml'), ...files];
}

test('the committed config/smarthost.schema.json is exactly what the code generates (run "npm run schema")', () => {
  assert.equal(committed, configJsonSchemaText());
});

test('the schema is a draft-07 document without defaults that belong to the machine that generated it', () => {
  assert.equal(schema.$schema, 'http://json-schema.org/draft-07/schema#');
  assert.equal(schema.additionalProperties, false, 'unknown top-level keys are errors, as in the loader');
  assert.equal(schema.properties.hostname!.default, undefined);
  assert.ok(!committed.includes(`"default": ${JSON.stringify(hostname())}`), 'no default is this machine\'s host name');
  // Keys with defaults may be left out (io "input"), keys without are required.
  const required = schema.required as string[];
  assert.ok(required.includes('spool') && required.includes('listeners'), `required: ${required.join(', ')}`);
  assert.ok(!required.includes('hostname') && !required.includes('delivery'), `required: ${required.join(', ')}`);
});

test('secrets, durations and sizes accept every written form the loader does', () => {
  const listener = (schema.properties.listeners!.items as { properties: Record<string, Record<string, unknown>> }).properties;
  for (const good of ['5m', '30s', 300, '250ms']) assert.deepEqual(validate(listener.socketTimeout!, good), [], `duration ${good}`);
  for (const bad of ['5 minutes', -1, true]) assert.notDeepEqual(validate(listener.socketTimeout!, bad), [], `duration ${String(bad)}`);
  for (const good of ['25MB', '512KiB', 1000]) assert.deepEqual(validate(listener.maxMessageSize!, good), [], `size ${good}`);
  const smtp = ((schema.properties.upstreams!.additionalProperties as { oneOf: Record<string, unknown>[] }).oneOf).find(
    (s) => (s.properties as { type: { const: string } }).type.const === 'smtp',
  )!;
  const pass = ((smtp.properties as Record<string, { properties: Record<string, Record<string, unknown>> }>).auth!).properties.pass!;
  for (const good of ['inline', { env: 'SMTP_PASSWORD' }, { file: '/run/secrets/smtp' }]) assert.deepEqual(validate(pass, good), [], JSON.stringify(good));
  for (const bad of ['', { env: 'A', file: 'b' }, { vault: 'x' }]) assert.notDeepEqual(validate(pass, bad), [], JSON.stringify(bad));
});

test('the shipped configs and a typical test config are valid against the schema, as they are for the loader', async () => {
  const dir = await tempDir();
  try {
    const documents: [string, unknown][] = [];
    for (const file of await shippedConfigs()) {
      const text = await readFile(file, 'utf8');
      const line = text.split('\n').find((l) => l.startsWith('# yaml-language-server:'));
      assert.ok(line, `${file} names its schema for editors`);
      const ref = /\$schema=(\S+)/.exec(line)![1]!;
      assert.equal(join(dirname(file), ref), SCHEMA_FILE, `${file} points at config/smarthost.schema.json`);
      documents.push([file, parse(await withTestCertificateFiles(text))]);
    }
    documents.push(['test config', await testConfig({ dir: dir.path })]);
    // The examples read their secrets from the environment, as a real deployment would.
    for (const name of ['M365_CLIENT_SECRET', 'M365_APP_KEY_PEM', 'MJ_APIKEY_PRIVATE', 'IONOS_PASSWORD']) process.env[name] ??= 'placeholder';
    for (const [name, doc] of documents) {
      parseConfig(JSON.stringify(doc), name);
      assert.deepEqual(validate(schema, doc), [], name);
    }
  } finally {
    await dir.remove();
  }
});

test('mistakes an editor should underline are invalid against the schema', async () => {
  const dir = await tempDir();
  try {
    const base = await testConfig({ dir: dir.path });
    const mistakes: [string, (c: Record<string, any>) => void, RegExp][] = [
      ['unknown top-level key', (c) => (c.relayhost = 'x'), /\$\.relayhost: unknown key/],
      ['port as text', (c) => (c.listeners[0].port = 'abc'), /\$\.listeners\[0\]\.port: expected integer/],
      ['port out of range', (c) => (c.listeners[0].port = 70000), /\$\.listeners\[0\]\.port: above 65535/],
      ['unknown role', (c) => (c.listeners[0].role = 'mx'), /\$\.listeners\[0\]\.role: expected one of/],
      ['plaintext password', (c) => (c.users = [{ name: 'u', password: 'p', passwordHash: '$scrypt$' }]), /\$\.users\[0\]\.password: unknown key/],
      ['unknown upstream type', (c) => (c.upstreams.outbox.type = 'sendmail'), /\$\.upstreams\.outbox: matches none of oneOf/],
      ['no listeners', (c) => (c.listeners = []), /\$\.listeners: fewer than 1 items/],
      ['missing spool', (c) => delete c.spool, /\$\.spool: required/],
    ];
    for (const [what, mutate, expected] of mistakes) {
      const doc = structuredClone(base) as Record<string, any>;
      mutate(doc);
      const problems = validate(schema, doc);
      assert.ok(problems.some((p) => expected.test(p)), `${what}: ${problems.join('; ') || 'no problem reported'}`);
      assert.throws(() => parseConfig(JSON.stringify(doc), what), `${what}: the loader refuses it too`);
    }
  } finally {
    await dir.remove();
  }
});

test('smarthost config-schema --output writes the same text, and refuses stray arguments', async () => {
  const dir = await tempDir();
  try {
    const file = join(dir.path, 'schema.json');
    const quiet = console.error;
    console.error = () => {};
    try {
      assert.equal(await configSchemaCommand.run(['--output', file]), 0);
    } finally {
      console.error = quiet;
    }
    assert.equal(await readFile(file, 'utf8'), committed);
    await assert.rejects(configSchemaCommand.run(['extra']), UsageError);
  } finally {
    await dir.remove();
  }
});
