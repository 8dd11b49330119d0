import assert from 'node:assert/strict';
import { test } from 'node:test';
import { newQueueId, QUEUE_ID } from '../../src/spool/queue-id.js';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

test('queue IDs are 22 Crockford base32 characters that sort by time, then by sequence within a millisecond', () => {
  const ids = [newQueueId(1_700_000_000_000), newQueueId(1_700_000_000_000), newQueueId(1_700_000_000_000), newQueueId(1_700_000_000_001)];
  for (const id of ids) assert.match(id, QUEUE_ID);
  assert.deepEqual([...ids].sort(), ids);
  // The first 10 characters are the time, the next 4 the sequence.
  assert.equal(ids[0]!.slice(0, 10), ids[2]!.slice(0, 10));
  assert.deepEqual(
    ids.slice(0, 3).map((id) => id.slice(10, 14)),
    ['0000', '0001', '0002'],
  );
  assert.equal(ids[3]!.slice(10, 14), '0000');
  const time = [...ids[0]!.slice(0, 10)].reduce((n, c) => n * 32 + ALPHABET.indexOf(c), 0);
  assert.equal(time, 1_700_000_000_000);
});

test('the random part uses all 40 bits and does not repeat, also across refills of the random pool', () => {
  // 4096 / 5 IDs per pool: 3,000 IDs draw from it four times.
  const tails = new Set<string>();
  const seen = Array.from({ length: 8 }, () => new Set<string>());
  for (let i = 0; i < 3000; i++) {
    const tail = newQueueId(1_700_000_000_500 + i).slice(14);
    tails.add(tail);
    [...tail].forEach((c, j) => seen[j]!.add(c));
  }
  assert.equal(tails.size, 3000);
  // Every position takes (nearly) every symbol: no position is stuck, e.g. at 0 from lost high bits.
  for (const [position, symbols] of seen.entries()) assert.ok(symbols.size >= 30, `position ${position} took only ${symbols.size} symbols`);
});
