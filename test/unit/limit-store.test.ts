import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatUses } from '../../src/cli/limits.js';
import { configSchema } from '../../src/config/schema.js';
import { LimitsFileError, limiterFromFile, limitsFile, openLimitStore, readLimitsFile } from '../../src/delivery/limit-store.js';
import { configuredLimits, resolveLimits } from '../../src/delivery/limits-config.js';

const T0 = Date.UTC(2025, 5, 3, 12, 0, 0);

function config(upstreams: Record<string, unknown>) {
  return configSchema.parse({
    spool: { dir: '/tmp/spool' },
    listeners: [{ name: 'relay', role: 'relay', port: 2525 }],
    upstreams,
    routing: { default: Object.keys(upstreams)[0] },
  });
}

test('presets: m365-smtp and graph carry the Exchange Online limits; keys override them; false turns them off', () => {
  assert.deepEqual(resolveLimits({ type: 'm365-smtp' }), { messagesPerMinute: 30, recipientsPerDay: 10_000, perMailbox: true, mode: 'sliding' });
  assert.deepEqual(resolveLimits({ type: 'graph' }), { recipientsPerDay: 10_000, perMailbox: true, mode: 'sliding' });
  assert.deepEqual(resolveLimits({ type: 'm365-smtp', limits: { messagesPerMinute: 10, mode: 'fixed' } }), {
    messagesPerMinute: 10,
    recipientsPerDay: 10_000,
    perMailbox: true,
    mode: 'fixed',
  });
  assert.equal(resolveLimits({ type: 'm365-smtp', limits: false }), undefined);
  assert.equal(resolveLimits({ type: 'smtp' }), undefined, 'a plain smtp upstream is unlimited unless configured');
});

test('config: upstreams.<name>.limits is validated strictly and resolved per upstream', () => {
  const c = config({ sink: { type: 'smtp', host: 'mx.test', limits: { messagesPerHour: 100, perMailbox: false } } });
  assert.deepEqual([...configuredLimits(c.upstreams)], [['sink', { messagesPerHour: 100, perMailbox: false, mode: 'fixed' }]]);
  assert.throws(() => config({ sink: { type: 'smtp', host: 'mx.test', limits: { messagesPerFortnight: 1 } } }));
  assert.throws(() => config({ sink: { type: 'smtp', host: 'mx.test', limits: { messagesPerMinute: 0 } } }));
});

test('counters survive a restart: saved to state.dir/limits.json at close, taken over by the next store', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'smarthost-limits-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const upstreams = { sink: { type: 'smtp', limits: { messagesPerMinute: 2, perMailbox: true } } } as const;
  const first = await openLimitStore(upstreams, dir, () => T0);
  const key = first.limiter.key('sink', 'a@x')!;
  first.limiter.record(key, 1, T0);
  first.limiter.record(key, 1, T0);
  await first.close();
  const saved = JSON.parse(await readFile(limitsFile(dir), 'utf8')) as { limits: unknown };
  assert.deepEqual(saved.limits, { sink: { messagesPerMinute: 2, perMailbox: true, mode: 'fixed' } });

  const second = await openLimitStore(upstreams, dir, () => T0);
  t.after(() => second.close());
  assert.equal(second.limiter.check(key, 1, T0 + 1).ok, false, 'the budget used before the restart still counts');

  const data = await readLimitsFile(limitsFile(dir));
  const text = formatUses(limiterFromFile(data!).uses(T0 + 1), limitsFile(dir), data!.savedAt);
  assert.match(text, /sink\/a@x\s+messages\/minute\s+2\/2\s+2025-06-03T12:01:00.000Z/);
});

test('a missing state file is no error: show prints that nothing was used', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'smarthost-limits-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  assert.equal(await readLimitsFile(limitsFile(dir)), undefined);
  assert.match(formatUses([], limitsFile(dir), undefined), /no send limit has been used/);
});

test('a damaged state file stops the start and limits show with its path and what to do, and is left as it is', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'smarthost-limits-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = limitsFile(dir);
  await mkdir(dir, { recursive: true });
  await writeFile(file, '{"savedAt": "x", ');
  const named = (err: unknown) => {
    assert.ok(err instanceof LimitsFileError, String(err));
    assert.equal(err.file, file);
    assert.match(err.message, new RegExp(`^cannot use the send-limit counters ${file}: .*JSON.*; move it aside to start with empty counters`));
    return true;
  };
  // Empty counters would hand out a fresh budget: the provider's own daily limit could be exceeded.
  await assert.rejects(openLimitStore({ sink: { type: 'smtp', limits: { recipientsPerDay: 10 } } }, dir, () => T0), named);
  await assert.rejects(readLimitsFile(file), named);
  assert.equal(await readFile(file, 'utf8'), '{"savedAt": "x", ');
});
