/**
 * Tag labels stay bounded: only allow-listed values, "other" and "none" can ever become a metric label.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { TAG_NONE, TAG_OTHER, tagLabel, tagsSchema, tagValue } from '../../src/upstreams/tags.js';

const config = tagsSchema.parse({ header: 'X-Tag', allowed: ['invoice', 'scan'] });

test('an allow-listed tag is its own label, compared trimmed and case-insensitively', () => {
  assert.equal(tagLabel(config, 'invoice'), 'invoice');
  assert.equal(tagLabel(config, '  Scan '), 'scan');
});

test('any other value is "other", so arbitrary header text never becomes a label', () => {
  assert.equal(tagLabel(config, 'invoice-4711'), TAG_OTHER);
  assert.equal(tagLabel(config, 'x'.repeat(1000)), TAG_OTHER);
  const labels = new Set(Array.from({ length: 500 }, (_, i) => tagLabel(config, `random-${i}`)));
  assert.deepEqual([...labels], [TAG_OTHER]);
});

test('no header, an empty one, or no tags config at all is "none"', () => {
  assert.equal(tagLabel(config, undefined), TAG_NONE);
  assert.equal(tagLabel(config, '   '), TAG_NONE);
  assert.equal(tagLabel(undefined, 'invoice'), TAG_NONE);
});

test('what a queued message keeps of its tag is trimmed and cut short, and still labels as the whole value would', () => {
  assert.equal(tagValue('  Invoice \t'), 'Invoice');
  assert.equal(tagValue('   '), undefined);
  assert.equal(tagValue(undefined), undefined);
  const longest = tagsSchema.parse({ header: 'X-Tag', allowed: ['a'.repeat(64)] });
  const text = `${'a'.repeat(64)}${'b'.repeat(10_000)}`;
  assert.ok(tagValue(text)!.length < 200, 'free text does not bloat the envelope');
  assert.equal(tagLabel(longest, tagValue(text)), TAG_OTHER, 'an allowed value followed by more text is not that value');
  const padded = `invoice${' '.repeat(200)}customer 4711`;
  assert.equal(tagLabel(config, padded), TAG_OTHER);
  assert.equal(tagLabel(config, tagValue(padded)), TAG_OTHER, 'nor is one followed by white space the cut ends in');
  assert.equal(tagLabel(longest, tagValue('A'.repeat(64))), 'a'.repeat(64));
});

test('the allow-list is bounded and may not reuse the reserved labels', () => {
  assert.equal(tagsSchema.safeParse({ header: 'X-Tag', allowed: Array.from({ length: 51 }, (_, i) => `t${i}`) }).success, false);
  assert.equal(tagsSchema.safeParse({ header: 'X-Tag', allowed: ['other'] }).success, false);
  assert.equal(tagsSchema.safeParse({ header: 'X-Tag', allowed: ['Invoice'] }).success, false, 'labels are written lower-case');
  assert.equal(tagsSchema.safeParse({ header: 'X Tag', allowed: [] }).success, false, 'a header name has no spaces');
});

test('tags is a top-level config key, validated with the rest', () => {
  const base = 'spool: { dir: /s }\nlisteners: [{ name: relay, role: relay, port: 2525 }]\nupstreams: { o: { type: outbox, dir: /o } }\nrouting: { default: o }\n';
  assert.deepEqual(parseConfig(`${base}tags: { header: X-Tag, allowed: [invoice] }`).tags, { header: 'X-Tag', allowed: ['invoice'] });
  assert.throws(() => parseConfig(`${base}tags: { header: X-Tag, allowed: [Bad Value] }`), (err: unknown) => err instanceof ConfigError && /tags\.allowed\[0\]/.test(err.message));
});
