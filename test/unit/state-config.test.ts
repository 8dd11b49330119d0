/**
 * `state.redis`: validated with the key path and without printing the URL (it may carry a password), a secret
 * from the environment like any other, embedded by default; and the Redis client module never loaded by a
 * static import, so a config without Redis does not pay for it at start-up.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError, parseConfig } from '../../src/config/load.js';

const base = ['spool: { dir: /var/spool/smarthost }', 'listeners: [{ name: relay, role: relay, port: 2525 }]', 'upstreams: { outbox: { type: outbox, dir: /var/outbox } }', 'routing: { default: outbox }'].join('\n');

test('without state.redis everything stays embedded in state.dir', () => {
  const config = parseConfig(base);
  assert.deepEqual(config.state, { dir: './data/state' });
});

test('state.redis: the URL is a secret (here from the environment); the key prefix defaults to "smarthost:"', () => {
  process.env.TEST_SMARTHOST_REDIS_URL = 'redis://:s3cret@redis.internal:6380/2';
  const config = parseConfig(`${base}\nstate: { dir: /var/lib/smarthost, redis: { url: { env: TEST_SMARTHOST_REDIS_URL } } }`);
  assert.equal(config.state.redis?.url.reveal(), 'redis://:s3cret@redis.internal:6380/2');
  assert.equal(config.state.redis?.keyPrefix, 'smarthost:');
  assert.doesNotMatch(JSON.stringify(config), /s3cret/, 'the password never prints with the config');
  assert.equal(parseConfig(`${base}\nstate: { redis: {} }`).state.redis?.url.reveal(), 'redis://127.0.0.1:6379/0', 'a local Redis by default');
});

test('state.redis: a URL that is not redis:// or rediss:// is refused with the key path, without echoing it', () => {
  assert.throws(
    () => parseConfig(`${base}\nstate: { redis: { url: "http://user:hunter2@redis.internal" } }`, 'test.yaml'),
    (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.startsWith('state.redis.url: expected a redis:// or rediss:// URL')) && !err.message.includes('hunter2'),
  );
  assert.throws(() => parseConfig(`${base}\nstate: { redis: { url: "redis://x", keyprefix: "a:" } }`), (err: unknown) => err instanceof ConfigError && /state\.redis/.test(err.message));
});

test('the redis client is only ever imported dynamically (when state.redis is configured)', async () => {
  const src = fileURLToPath(new URL('../../src/', import.meta.url));
  const files = (await readdir(src, { recursive: true })).filter((f) => f.endsWith('.js'));
  const importers: string[] = [];
  for (const file of files) {
    const text = await readFile(join(src, file), 'utf8');
    if (/^\s*(import|export)\b[^;]*?from\s*['"](redis|@redis\/[^'"]+)['"]/m.test(text) || /^\s*import\s*['"](redis|@redis\/)/m.test(text)) importers.push(file);
  }
  assert.ok(files.length > 50, `looked at the compiled sources (${files.length} files)`);
  assert.deepEqual(importers, [], 'no compiled module imports redis statically');
  const dynamic = await readFile(join(src, 'state', 'redis.js'), 'utf8');
  assert.match(dynamic, /await import\('redis'\)/);
});
