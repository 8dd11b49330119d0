import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DueQueue } from '../../src/delivery/due-queue.js';

function drain(q: DueQueue, now: number): string[] {
  const out: string[] = [];
  for (let id = q.popDue(now); id !== undefined; id = q.popDue(now)) out.push(id);
  return out;
}

test('an empty queue has no due time and pops nothing', () => {
  const q = new DueQueue();
  assert.equal(q.size, 0);
  assert.equal(q.peekTime(), undefined);
  assert.equal(q.popDue(Number.MAX_SAFE_INTEGER), undefined);
});

test('IDs come out in due-time order regardless of insertion order', () => {
  const q = new DueQueue();
  const times = [50, 10, 40, 30, 20, 60, 0, 35, 15];
  times.forEach((at) => q.set(`m${at}`, at));
  assert.equal(q.size, times.length);
  assert.equal(q.peekTime(), 0);
  assert.deepEqual(drain(q, 100), [...times].sort((a, b) => a - b).map((at) => `m${at}`));
  assert.equal(q.size, 0);
});

test('popDue returns only IDs due at or before now', () => {
  const q = new DueQueue();
  q.set('a', 100);
  q.set('b', 200);
  q.set('c', 300);
  assert.equal(q.popDue(99), undefined);
  assert.deepEqual(drain(q, 200), ['a', 'b']);
  assert.equal(q.peekTime(), 300);
  assert.equal(q.size, 1);
  assert.equal(q.popDue(299), undefined);
  assert.equal(q.popDue(300), 'c');
});

test('setting an ID again replaces its due time, later or earlier', () => {
  const q = new DueQueue();
  q.set('a', 100);
  q.set('b', 150);
  q.set('a', 200);
  assert.equal(q.size, 2);
  assert.equal(q.peekTime(), 150);
  assert.deepEqual(drain(q, 199), ['b']);
  q.set('a', 50);
  assert.equal(q.peekTime(), 50);
  assert.deepEqual(drain(q, 1000), ['a'], 'a must come out once, not once per set');
  assert.equal(q.size, 0);
});

test('a replaced time that equals an old one yields the ID once', () => {
  const q = new DueQueue();
  q.set('a', 100);
  q.set('a', 300);
  q.set('a', 100);
  assert.deepEqual(drain(q, 1000), ['a']);
  q.set('a', 300);
  assert.deepEqual(drain(q, 1000), ['a']);
});

test('a deleted ID is never popped and no longer counts', () => {
  const q = new DueQueue();
  q.set('a', 10);
  q.set('b', 20);
  q.delete('a');
  assert.equal(q.size, 1);
  assert.equal(q.peekTime(), 20);
  assert.deepEqual(drain(q, 100), ['b']);
  q.delete('missing');
  assert.equal(q.size, 0);
});

test('an ID deleted and set again is due at its new time', () => {
  const q = new DueQueue();
  q.set('a', 10);
  q.delete('a');
  q.set('a', 500);
  assert.equal(q.popDue(100), undefined);
  assert.equal(q.popDue(500), 'a');
});

test('many random operations agree with a simple reference model', () => {
  let seed = 42;
  const rand = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
  const q = new DueQueue();
  const model = new Map<string, number>();
  for (let i = 0; i < 2000; i++) {
    const id = `m${Math.floor(rand() * 30)}`;
    const op = rand();
    if (op < 0.6) {
      const at = Math.floor(rand() * 1000);
      q.set(id, at);
      model.set(id, at);
    } else if (op < 0.75) {
      q.delete(id);
      model.delete(id);
    } else {
      const now = Math.floor(rand() * 1000);
      const popped = q.popDue(now);
      const earliest = Math.min(...model.values());
      if (model.size === 0 || earliest > now) assert.equal(popped, undefined);
      else {
        assert.ok(popped !== undefined && model.get(popped) === earliest, `step ${i}: popped ${popped}, expected one due at ${earliest}`);
        model.delete(popped);
      }
    }
    assert.equal(q.size, model.size);
    assert.equal(q.peekTime(), model.size ? Math.min(...model.values()) : undefined);
  }
});
