import { randomFillSync } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'; // Crockford base32: no I, L, O, U

/** Random bytes drawn a page at a time: one randomBytes(5) per message cost more than the rest of the ID. */
const random = Buffer.alloc(4096);
let randomOffset = random.length;

let lastTime = 0;
let sequence = 0;

/**
 * A ULID-style queue ID: 10 characters of millisecond time, then 4 of a per-millisecond sequence and
 * 8 random ones. IDs sort by arrival, stay unique across restarts and processes, and are safe as file names.
 */
export function newQueueId(now = Date.now()): string {
  if (now === lastTime) sequence++;
  else {
    lastTime = now;
    sequence = 0;
  }
  return encode(now, 10) + encode(sequence, 4) + encode(randomBits40(), 8);
}

export const QUEUE_ID = /^[0-9A-HJKMNP-TV-Z]{22}$/;

/** 40 random bits (8 characters' worth) as a number: exact, since doubles hold integers up to 2^53. */
function randomBits40(): number {
  if (randomOffset + 5 > random.length) {
    randomFillSync(random);
    randomOffset = 0;
  }
  const value = random.readUIntBE(randomOffset, 5);
  randomOffset += 5;
  return value;
}

function encode(value: number, length: number): string {
  let out = '';
  for (let i = 0; i < length; i++) {
    out = ALPHABET[value % 32] + out;
    value = Math.floor(value / 32);
  }
  return out;
}
