import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hashPassword, isPasswordHash, verifyPassword } from '../../src/inbound/passwords.js';

test('a hash verifies the password it was made from', async () => {
  const hash = await hashPassword('correct horse battery staple');
  assert.match(hash, /^\$scrypt\$ln=15,r=8,p=1\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$/);
  assert.equal(isPasswordHash(hash), true);
  assert.equal(await verifyPassword('correct horse battery staple', hash), true);
});

test('a wrong password does not verify, not even one differing in case or a trailing space', async () => {
  const hash = await hashPassword('Secret');
  assert.equal(await verifyPassword('secret', hash), false);
  assert.equal(await verifyPassword('Secret ', hash), false);
  assert.equal(await verifyPassword('', hash), false);
});

test('two hashes of the same password differ (random salt) and both verify', async () => {
  const [a, b] = await Promise.all([hashPassword('same'), hashPassword('same')]);
  assert.notEqual(a, b);
  assert.notEqual(a.split('$')[3], b.split('$')[3], 'salts should differ');
  assert.equal(await verifyPassword('same', a), true);
  assert.equal(await verifyPassword('same', b), true);
});

test('a password is compared after Unicode NFC normalisation', async () => {
  const hash = await hashPassword('caf\u00e9');
  assert.equal(await verifyPassword('cafe\u0301', hash), true);
});

test('malformed hashes never match and never throw', async () => {
  const good = await hashPassword('pw');
  const malformed = [
    '',
    'pw',
    '$2b$10$abcdefghijklmnopqrstuu',
    good.replace('$scrypt$', '$argon2$'),
    good.replace('ln=15', 'ln=x'),
    good.slice(0, good.lastIndexOf('$')),
    `${good}$extra`,
    good.replace('ln=15', 'ln=99'),
    good.replace('ln=15', 'ln=0'),
    good.replace('r=8', 'r=0'),
  ];
  for (const hash of malformed) {
    assert.equal(isPasswordHash(hash), false, `isPasswordHash(${JSON.stringify(hash)})`);
    assert.equal(await verifyPassword('pw', hash), false, `verifyPassword with ${JSON.stringify(hash)}`);
  }
});

test('a hash whose key was altered does not match', async () => {
  const hash = await hashPassword('pw');
  const key = hash.slice(hash.lastIndexOf('$') + 1);
  const flipped = (key[0] === 'A' ? 'B' : 'A') + key.slice(1);
  const altered = hash.slice(0, hash.lastIndexOf('$') + 1) + flipped;
  assert.equal(isPasswordHash(altered), true);
  assert.equal(await verifyPassword('pw', altered), false);
});
