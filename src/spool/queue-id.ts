import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'; // Crockford base32: no I, L, O, U

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
  return encode(now, 10) + encode(sequence, 4) + encodeBytes(randomBytes(5));
}

export const QUEUE_ID = /^[0-9A-HJKMNP-TV-Z]{22}$/;

function encode(value: number, length: number): string {
  let out = '';
  for (let i = 0; i < length; i++) {
    out = ALPHABET[value % 32] + out;
    value = Math.floor(value / 32);
  }
  return out;
}

function encodeBytes(bytes: Buffer): string {
  let bits = 0n;
  for (const b of bytes) bits = (bits << 8n) | BigInt(b);
  let out = '';
  for (let i = 0; i < (bytes.length * 8) / 5; i++) {
    out = ALPHABET[Number(bits & 31n)] + out;
    bits >>= 5n;
  }
  return out;
}
