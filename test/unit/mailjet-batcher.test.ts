/**
 * The batcher behind the mailjet upstream: concurrent entries share calls, a call never exceeds its slots or
 * bytes, every entry gets its own result, and a failed call fails each of its entries.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Batcher } from '../../src/upstreams/mailjet/batcher.js';

function recordingSend(calls: string[][]) {
  return async (items: string[]) => {
    calls.push(items);
    return items.map((i) => `result of ${i}`);
  };
}

test('entries arriving within the window share one call, each resolving with its own result', async () => {
  const calls: string[][] = [];
  const batcher = new Batcher({ maxItems: 50, maxBytes: 1000, windowMs: 0 }, recordingSend(calls));
  const results = await Promise.all(['a', 'b', 'c'].map((x) => batcher.add(x, 1, 10)));
  assert.deepEqual(calls, [['a', 'b', 'c']]);
  assert.deepEqual(results, ['result of a', 'result of b', 'result of c']);
});

test('a call is sent as soon as it is full, and an entry that would overflow it starts the next one', async () => {
  const calls: string[][] = [];
  const batcher = new Batcher({ maxItems: 4, maxBytes: 1000, windowMs: 60_000 }, recordingSend(calls));
  // "b" takes 3 slots (a Bcc-only delivery of three messages): a+b fill the call, which goes at once.
  const ab = [batcher.add('a', 1, 1), batcher.add('b', 3, 1)];
  assert.deepEqual(calls, [['a', 'b']], 'sent without waiting for the window');
  // c (2) + d (3) would be 5 slots: c goes alone, d waits for company.
  const cd = [batcher.add('c', 2, 1), batcher.add('d', 3, 1)];
  assert.deepEqual(calls, [['a', 'b'], ['c']]);
  await batcher.drain();
  assert.deepEqual(calls, [['a', 'b'], ['c'], ['d']]);
  assert.deepEqual(await Promise.all([...ab, ...cd]), ['result of a', 'result of b', 'result of c', 'result of d']);
});

test('the byte limit splits calls too; an entry bigger than the limit goes alone', async () => {
  const calls: string[][] = [];
  const batcher = new Batcher({ maxItems: 50, maxBytes: 100, windowMs: 0 }, recordingSend(calls));
  await Promise.all([batcher.add('small', 1, 60), batcher.add('huge', 1, 500), batcher.add('tail', 1, 10)]);
  assert.deepEqual(calls, [['small'], ['huge'], ['tail']]);
});

test('a call that fails fails each of its entries; drain() sends what waits and awaits it', async () => {
  const batcher = new Batcher<string, string>({ maxItems: 50, maxBytes: 1000, windowMs: 60_000 }, async () => {
    throw new Error('network down');
  });
  const a = batcher.add('a', 1, 1);
  const b = batcher.add('b', 1, 1);
  await batcher.drain();
  await assert.rejects(a, /network down/);
  await assert.rejects(b, /network down/);
});

test('an answer with the wrong number of results fails the call instead of mixing up entries', async () => {
  const batcher = new Batcher<string, string>({ maxItems: 50, maxBytes: 1000, windowMs: 0 }, async () => ['only one']);
  await assert.rejects(Promise.all([batcher.add('a', 1, 1), batcher.add('b', 1, 1)]), /1 results for 2 entries/);
});
