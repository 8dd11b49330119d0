import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkEnvelopeAddress, normalizeAddress } from '../../src/policy/address-policy.js';

/** [address, reason pattern or undefined when accepted] for both sender and recipient. */
const CASES: Array<[string, RegExp | undefined]> = [
  // nmap smtp-open-relay style vectors
  ['relaytest%target.example@victim.example', /percent-hack/],
  ['"relaytest@target.example"', /quoted local part hides/],
  ['"relaytest@target.example"@victim.example', /quoted local part hides/],
  ['relaytest@target.example@victim.example', /more than one '@'/],
  ['@victim.example:relaytest@target.example', /source route/],
  ['target.example!relaytest', /bang path/],
  ['target.example!relaytest@victim.example', /bang path/],
  ['relaytest%target.example@[127.0.0.1]', /percent-hack/],
  ['"relaytest%target.example"@[127.0.0.1]', /quoted local part hides/],
  ['relaytest@target.example@[127.0.0.1]', /more than one '@'/],
  ['@[127.0.0.1]:relaytest@target.example', /source route/],
  ['target.example!relaytest@[127.0.0.1]', /bang path/],
  ['@a,@b:user@c.example', /source route/],
  ['victim.example:relaytest@target.example', /source route/],
  ['"a!b"@example.com', /quoted local part hides/],
  // syntax
  ['user', /missing domain/],
  ['user@', /missing domain/],
  ['@example.com', /source route/],
  ['""@example.com', /missing local part/],
  ['"unterminated@example.com', /unterminated/],
  ['"a"b@example.com', /after quoted local part/],
  ['john doe@example.com', /spaces outside quotes/],
  ['user@exa mple.com', /spaces outside quotes/],
  [' user@example.com', /spaces outside quotes/],
  ['us\r\ner@example.com', /control characters/],
  ['user\u0000@example.com', /control characters/],
  ['a..b@example.com', /invalid local part/],
  ['.a@example.com', /invalid local part/],
  ['a(b)@example.com', /invalid local part/],
  ['user@-example.com', /invalid domain/],
  ['user@example..com', /invalid domain/],
  ['user@example.com.', /invalid domain/],
  ['user@exa_mple.com', /invalid domain/],
  [`user@${'a'.repeat(64)}.com`, /invalid domain/],
  [`${'a'.repeat(65)}@example.com`, /local part too long/],
  [`a@${'abcdefghi.'.repeat(25)}com`, /too long/],
  ['user@[999.1.1.1]', /invalid domain literal/],
  ['user@[127.0.0.1', /invalid domain literal/],
  ['user@[localhost]', /invalid domain literal/],
  ['user@[IPv6:not-an-address]', /invalid domain literal/],
  ['user@[2001:db8::1]', /invalid domain literal/],
  // accepted
  ['a.b+tag@example.com', undefined],
  ['user@[192.0.2.1]', undefined],
  ['user@[IPv6:2001:db8::1]', undefined],
  ['"john doe"@example.com', undefined],
  ['"quoted\\"escape"@example.com', undefined],
  ['用户@例子.广告', undefined],
  ['Grüße@bücher.example', undefined],
  ['x@localhost', undefined],
  ["o'brien_{x}=y@sub-domain.example.co.uk", undefined],
  ['user@xn--bcher-kva.example', undefined],
  ['Postmaster@Example.COM', undefined],
  [`${'a'.repeat(64)}@${'a'.repeat(63)}.example`, undefined],
];

for (const kind of ['sender', 'recipient'] as const) {
  test(`${kind} address table`, () => {
    for (const [address, expected] of CASES) {
      const err = checkEnvelopeAddress(address, kind);
      if (expected === undefined) {
        assert.equal(err, undefined, `${address} should be accepted, got: ${err?.message}`);
        continue;
      }
      assert.ok(err, `${address} should be refused`);
      assert.equal(err.code, 553, address);
      assert.equal(err.enhanced, kind === 'sender' ? '5.1.7' : '5.1.3', address);
      assert.match(err.message, expected, address);
      assert.ok(err.message.includes(kind), err.message);
    }
  });
}

test('null address: allowed as sender, 501 5.1.3 as recipient', () => {
  assert.equal(checkEnvelopeAddress('', 'sender'), undefined);
  const err = checkEnvelopeAddress('', 'recipient');
  assert.equal(err?.code, 501);
  assert.equal(err?.enhanced, '5.1.3');
});

test('bare postmaster: accepted as recipient in any case, refused as sender', () => {
  assert.equal(checkEnvelopeAddress('postmaster', 'recipient'), undefined);
  assert.equal(checkEnvelopeAddress('PostMaster', 'recipient'), undefined);
  assert.match(checkEnvelopeAddress('postmaster', 'sender')?.message ?? '', /missing domain/);
});

test('normalizeAddress lowercases the domain only', () => {
  assert.equal(normalizeAddress('John.Doe@Example.COM'), 'John.Doe@example.com');
  assert.equal(normalizeAddress('"Mixed@Case"@EXAMPLE.org'), '"Mixed@Case"@example.org');
  assert.equal(normalizeAddress('user@[IPv6:2001:DB8::1]'), 'user@[ipv6:2001:db8::1]');
  assert.equal(normalizeAddress('Postmaster'), 'Postmaster');
  assert.equal(normalizeAddress(''), '');
});
