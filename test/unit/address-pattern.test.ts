import { test } from 'node:test';
import assert from 'node:assert/strict';
import { domainOf, expandTarget, matchAddress, matchesAny, patternProblem } from '../../src/routing/address-pattern.js';

/** [pattern, address, expected captures or false when it must not match]. */
const CASES: Array<[string, string, string[] | false]> = [
  // exact address: whole address, any case
  ['alice@contoso.com', 'alice@contoso.com', []],
  ['alice@contoso.com', 'ALICE@Contoso.COM', []],
  ['alice@contoso.com', 'malice@contoso.com', false],
  ['alice@contoso.com', 'alice@contoso.com.evil.test', false],
  ['alice@contoso.com', 'alice@contosoXcom', false],
  ['a.b+tag@contoso.com', 'a.b+tag@contoso.com', []],
  ['a.b+tag@contoso.com', 'a.bbtag@contoso.com', false],
  // @domain: any local part at exactly that domain, not its subdomains or look-alikes
  ['@contoso.com', 'bob@contoso.com', []],
  ['@contoso.com', 'BOB@CONTOSO.COM', []],
  ['@contoso.com', 'bob@mail.contoso.com', false],
  ['@contoso.com', 'bob@contoso.com.evil.test', false],
  ['@contoso.com', 'bob@contosoxcom', false],
  ['@contoso.com', 'bob@evilcontoso.com', false],
  // wildcards: * any run (captured), ? one character (captured)
  ['*@*.printer.local', 'scan@floor2.printer.local', ['scan', 'floor2']],
  ['*@*.printer.local', 'scan@printer.local', false],
  ['*@*.printer.local', 'Scan@A.B.Printer.Local', ['Scan', 'A.B']],
  ['scan-?@contoso.com', 'scan-7@contoso.com', ['7']],
  ['scan-?@contoso.com', 'scan-17@contoso.com', false],
  ['scan-?@contoso.com', 'scan-@contoso.com', false],
  ['*@contoso.com', 'anyone@contoso.com', ['anyone']],
  ['*@contoso.com', 'anyone@contoso.community', false],
  ['*', '', ['']],
  ['*.b@x.test', 'aXb@x.test', false], // the dot is literal, not a regex wildcard
  ['*', 'anything@at.all', ['anything@at.all']],
  // regular expressions: JavaScript syntax, case ignored, captures numbered
  ['/^scan-(\\d+)@/', 'scan-42@printer.local', ['42']],
  ['/^scan-(\\d+)@/', 'SCAN-42@printer.local', ['42']],
  ['/^scan-(\\d+)@/', 'scan-x@printer.local', false],
  ['/^(?<user>[a-z]+)@(dept)?\\.test$/', 'bob@.test', ['bob', '']],
  ['/printer/', 'scanner@printer.local', []], // unanchored: anywhere in the address
  ['/^a$/g', 'a', []], // g and y flags are dropped, so a cached regex keeps no lastIndex state
  ['/^a$/g', 'a', []],
  ['/^a/y', 'a@x', []],
  ['/^a/y', 'a@x', []],
  ['/^ä@x$/u', 'Ä@X', []],
];

for (const [pattern, address, expected] of CASES) {
  test(`pattern ${pattern} ${expected === false ? 'does not match' : 'matches'} ${JSON.stringify(address)}`, () => {
    const m = matchAddress(pattern, address);
    assert.equal(m.matched, expected !== false);
    assert.deepEqual(m.captures, expected === false ? [] : expected);
  });
}

test('pattern problems: empty, blank and invalid regular expressions are reported, every other form is usable', () => {
  assert.match(patternProblem('') ?? '', /expected an address, @domain, wildcard or \/regular expression\//);
  assert.match(patternProblem('   ') ?? '', /expected an address/);
  assert.match(patternProblem('/(unclosed/') ?? '', /^invalid regular expression: /);
  assert.match(patternProblem('/a/q') ?? '', /^invalid regular expression: /, 'unknown flag');
  for (const ok of ['alice@contoso.com', '@contoso.com', '*@*.printer.local', 'scan-?@x', '/^scan-(\\d+)@/i', '/a/gimsy']) {
    assert.equal(patternProblem(ok), undefined, ok);
  }
});

test('regular expression characters in exact and @domain patterns are literal', () => {
  assert.equal(matchAddress('a|b@x.test', 'a@x.test').matched, false);
  assert.equal(matchAddress('a|b@x.test', 'a|b@x.test').matched, true);
  assert.equal(matchAddress('@x(y).test', 'q@x(y).test').matched, true);
  assert.equal(matchAddress('@x(y).test', 'q@xy.test').matched, false);
  assert.equal(matchAddress('(a)@x.test', 'a@x.test').matched, false);
});

test('matchesAny returns the first pattern that matches, undefined when none does', () => {
  assert.equal(matchesAny(['@a.test', '*@b.test', 'c@b.test'], 'c@b.test'), '*@b.test');
  assert.equal(matchesAny(['@a.test', 'c@b.test'], 'c@b.test'), 'c@b.test');
  assert.equal(matchesAny(['@a.test'], 'c@b.test'), undefined);
  assert.equal(matchesAny([], 'c@b.test'), undefined);
});

test('domainOf: lowercased part after the last @, empty without one', () => {
  assert.equal(domainOf('Bob@Contoso.COM'), 'contoso.com');
  assert.equal(domainOf('"a@b"@c.test'), 'c.test');
  assert.equal(domainOf('postmaster'), '');
  assert.equal(domainOf(''), '');
});

test('expandTarget fills $1..$9 from captures; missing captures become empty', () => {
  assert.equal(expandTarget('$1@contoso.com', ['scan']), 'scan@contoso.com');
  assert.equal(expandTarget('$2.$1@contoso.com', ['scan', 'floor2']), 'floor2.scan@contoso.com');
  assert.equal(expandTarget('fixed@contoso.com', ['ignored']), 'fixed@contoso.com');
  assert.equal(expandTarget('$3x@contoso.com', ['a']), 'x@contoso.com');
  assert.equal(expandTarget('$$1', ['a']), '$a');
});

test('captures of a wildcard and a regex flow into a rewrite target', () => {
  const w = matchAddress('*@*.printer.local', 'scan@floor2.printer.local');
  assert.equal(expandTarget('$1-$2@contoso.com', w.captures), 'scan-floor2@contoso.com');
  const r = matchAddress('/^scan-(\\d+)@(.+)$/', 'scan-42@printer.local');
  assert.equal(expandTarget('scanner$1@$2', r.captures), 'scanner42@printer.local');
});
