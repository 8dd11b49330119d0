import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { checkHeaderFromAllowed, checkSenderAllowed } from '../../src/policy/sender-policy.js';
import { SmtpError } from '../../src/smtp-error.js';

const HASH = '$scrypt$ln=15,r=8,p=1$c21hcnRob3N0LWR1bW15$2Yxj6B5bIo7m0ZbKxS6dCXbqAqcqJ8yAGT0aBY1r2KI';

function config(o: { users?: Record<string, unknown>[]; senderRestrictions?: unknown[]; rewrite?: unknown[] } = {}): Config {
  return parseConfig(
    stringify({
      spool: { dir: '/tmp/spool' },
      listeners: [{ name: 'relay', role: 'relay', port: 2525 }],
      users: (o.users ?? []).map((u) => ({ passwordHash: HASH, ...u })),
      upstreams: { out: { type: 'outbox', dir: '/tmp/out' } },
      routing: { default: 'out' },
      rewrite: o.rewrite ?? [],
      senderRestrictions: o.senderRestrictions ?? [],
    }),
    'sender-policy.test',
  );
}

const LAN = '192.168.10.5';
const OUTSIDE = '10.1.2.3';

/** The reply text, or 'allowed'. */
function check(c: Config, sender: string, o: { user?: string; clientAddress?: string } = {}): string {
  const err = checkSenderAllowed(c, { sender, clientAddress: o.clientAddress ?? LAN, ...(o.user !== undefined ? { user: o.user } : {}) });
  if (!err) return 'allowed';
  assert.ok(err instanceof SmtpError);
  assert.equal(err.code, 553);
  assert.equal(err.enhanced, '5.7.1');
  return err.reply;
}

test('no restrictions anywhere: every sender is allowed', () => {
  const c = config({ users: [{ name: 'scanner' }] });
  for (const sender of ['a@b.test', 'ceo@contoso.com', '']) {
    assert.equal(check(c, sender), 'allowed');
    assert.equal(check(c, sender, { user: 'scanner' }), 'allowed');
  }
});

test('user restriction: allowedSenders of the authenticated user, exact, @domain and pattern', () => {
  const c = config({ users: [{ name: 'scanner', allowedSenders: ['scanner@printer.local', '@scans.contoso.com', '/^dept-\\d+@contoso\\.com$/'] }, { name: 'free' }] });
  assert.equal(check(c, 'scanner@printer.local', { user: 'scanner' }), 'allowed');
  assert.equal(check(c, 'SCANNER@printer.local', { user: 'scanner' }), 'allowed');
  assert.equal(check(c, 'floor2@scans.contoso.com', { user: 'scanner' }), 'allowed');
  assert.equal(check(c, 'dept-12@contoso.com', { user: 'scanner' }), 'allowed');
  assert.equal(check(c, 'ceo@contoso.com', { user: 'scanner' }), '553 5.7.1 Sender <ceo@contoso.com> is not allowed for user scanner (users[0].allowedSenders)');
  assert.equal(check(c, 'x@sub.scans.contoso.com', { user: 'scanner' }), '553 5.7.1 Sender <x@sub.scans.contoso.com> is not allowed for user scanner (users[0].allowedSenders)');
  // A single pattern (not a list) works the same.
  const single = config({ users: [{ name: 'a' }, { name: 'scanner', allowedSenders: '@printer.local' }] });
  assert.equal(check(single, 'x@printer.local', { user: 'scanner' }), 'allowed');
  assert.match(check(single, 'x@other.test', { user: 'scanner' }), /is not allowed for user scanner \(users\[1\]\.allowedSenders\)$/);
  // Other users and unauthenticated clients are not bound by this user's list (unknown names: the next test).
  assert.equal(check(c, 'ceo@contoso.com', { user: 'free' }), 'allowed');
  assert.equal(check(c, 'ceo@contoso.com'), 'allowed');
});

test('network restriction: applies to clients in its networks only (IPv4, IPv6, IPv4-mapped)', () => {
  const c = config({ senderRestrictions: [{ network: ['192.168.10.0/24', '2001:db8:10::/64'], allowedSenders: '@printer.local' }] });
  assert.equal(check(c, 'scanner@printer.local'), 'allowed');
  assert.equal(check(c, 'ceo@contoso.com'), '553 5.7.1 Sender <ceo@contoso.com> is not allowed for clients in 192.168.10.0/24, 2001:db8:10::/64 (senderRestrictions[0])');
  assert.match(check(c, 'ceo@contoso.com', { clientAddress: '::ffff:192.168.10.9' }), /senderRestrictions\[0\]/);
  assert.match(check(c, 'ceo@contoso.com', { clientAddress: '2001:db8:10::99' }), /senderRestrictions\[0\]/);
  assert.equal(check(c, 'ceo@contoso.com', { clientAddress: OUTSIDE }), 'allowed');
  assert.equal(check(c, 'ceo@contoso.com', { clientAddress: '2001:db8:11::1' }), 'allowed');
  // Authenticated users in the network are restricted too: the network policy is about where mail comes from.
  assert.match(check(config({ users: [{ name: 'u' }], senderRestrictions: [{ network: '192.168.10.0/24', allowedSenders: '@printer.local' }] }), 'ceo@contoso.com', { user: 'u' }), /senderRestrictions\[0\]/);
});

test('overlapping network restrictions: every one that holds the client must allow the sender', () => {
  const c = config({
    senderRestrictions: [
      { network: '192.168.0.0/16', allowedSenders: '@contoso.com' },
      { network: '192.168.10.0/24', allowedSenders: ['scans@contoso.com', '@printer.local'] },
    ],
  });
  assert.equal(check(c, 'scans@contoso.com'), 'allowed', 'allowed by both');
  assert.match(check(c, 'ceo@contoso.com'), /for clients in 192\.168\.10\.0\/24 \(senderRestrictions\[1\]\)$/, 'allowed by the wide one only');
  assert.match(check(c, 'x@printer.local'), /for clients in 192\.168\.0\.0\/16 \(senderRestrictions\[0\]\)$/, 'allowed by the narrow one only');
  assert.equal(check(c, 'ceo@contoso.com', { clientAddress: '192.168.20.1' }), 'allowed', 'only the wide one holds this client');
});

test('user and network restriction both: each must allow; the refusal names the one that refused', () => {
  const c = config({
    users: [{ name: 'scanner', allowedSenders: ['@printer.local', 'scans@contoso.com'] }],
    senderRestrictions: [{ network: '192.168.10.0/24', allowedSenders: ['@contoso.com'] }],
  });
  assert.equal(check(c, 'scans@contoso.com', { user: 'scanner' }), 'allowed');
  assert.match(check(c, 'x@printer.local', { user: 'scanner' }), /^553 5\.7\.1 Sender <x@printer\.local> is not allowed for clients in 192\.168\.10\.0\/24 \(senderRestrictions\[0\]\)$/);
  assert.match(check(c, 'ceo@contoso.com', { user: 'scanner' }), /^553 5\.7\.1 Sender <ceo@contoso\.com> is not allowed for user scanner \(users\[0\]\.allowedSenders\)$/);
  assert.equal(check(c, 'x@printer.local', { user: 'scanner', clientAddress: OUTSIDE }), 'allowed', 'outside the network only the user list applies');
});

test('a user the config does not know is refused, not let through without a check', () => {
  const c = config({ users: [{ name: 'scanner', allowedSenders: ['@printer.local'] }] });
  assert.equal(check(c, 'x@printer.local', { user: 'scanner' }), 'allowed');
  assert.equal(check(c, 'ceo@contoso.com', { user: 'removed' }), '553 5.7.1 Sender <ceo@contoso.com> is not allowed: user removed is not configured');
  assert.equal(check(config({}), 'x@printer.local', { user: 'removed' }), '553 5.7.1 Sender <x@printer.local> is not allowed: user removed is not configured');
});

test('alias targets must be allowed too: rewriting is no way around a restriction', () => {
  const rewrite = [
    { match: 'boss@printer.local', to: 'ceo@contoso.com' },
    { match: '*@printer.local', to: '$1@scans.contoso.com' },
  ];
  const c = config({
    users: [{ name: 'scanner', allowedSenders: ['@printer.local', '@scans.contoso.com'] }],
    senderRestrictions: [{ network: '192.168.10.0/24', allowedSenders: ['@printer.local', '@scans.contoso.com'] }],
    rewrite,
  });
  // Rewritten to an allowed address (with captures): fine.
  assert.equal(check(c, 'floor2@printer.local', { user: 'scanner', clientAddress: OUTSIDE }), 'allowed');
  assert.equal(check(c, 'floor2@printer.local'), 'allowed');
  // Rewritten to a forbidden one: refused, by whichever policy applies, naming the target.
  assert.equal(
    check(c, 'boss@printer.local', { user: 'scanner', clientAddress: OUTSIDE }),
    '553 5.7.1 Sender <boss@printer.local> (rewritten to <ceo@contoso.com>) is not allowed for user scanner (users[0].allowedSenders)',
  );
  assert.equal(
    check(c, 'boss@printer.local'),
    '553 5.7.1 Sender <boss@printer.local> (rewritten to <ceo@contoso.com>) is not allowed for clients in 192.168.10.0/24 (senderRestrictions[0])',
  );
  // Unrestricted clients may use the rule.
  assert.equal(check(c, 'boss@printer.local', { clientAddress: OUTSIDE }), 'allowed');
});

test('alias targets of envelope-only and header-only rules are both checked', () => {
  const restrictions = [{ network: '192.168.10.0/24', allowedSenders: '@printer.local' }];
  const envelopeOnly = config({ senderRestrictions: restrictions, rewrite: [{ match: 'a@printer.local', to: 'env@contoso.com', apply: 'envelope' }] });
  assert.match(check(envelopeOnly, 'a@printer.local'), /\(rewritten to <env@contoso\.com>\)/);
  const headerOnly = config({ senderRestrictions: restrictions, rewrite: [{ match: 'a@printer.local', to: 'hdr@contoso.com', apply: 'header' }] });
  assert.match(check(headerOnly, 'a@printer.local'), /\(rewritten to <hdr@contoso\.com>\)/);
  // Different targets for envelope and header: both must be allowed.
  const split = config({
    senderRestrictions: [{ network: '192.168.10.0/24', allowedSenders: ['@printer.local', 'env@contoso.com'] }],
    rewrite: [
      { match: 'a@printer.local', to: 'env@contoso.com', apply: 'envelope' },
      { match: 'a@printer.local', to: 'hdr@contoso.com', apply: 'header' },
    ],
  });
  assert.match(check(split, 'a@printer.local'), /\(rewritten to <hdr@contoso\.com>\)/);
});

test('null sender: allowed where no restriction applies, refused by a restriction unless a pattern allows it', () => {
  const c = config({
    users: [{ name: 'scanner', allowedSenders: '@printer.local' }],
    senderRestrictions: [{ network: '192.168.10.0/24', allowedSenders: '@printer.local' }],
    rewrite: [{ match: '*', to: 'catchall@contoso.com' }],
  });
  assert.equal(check(c, '', { clientAddress: OUTSIDE }), 'allowed', 'a catch-all rule never rewrites <>, so it is not checked against');
  assert.equal(check(c, ''), '553 5.7.1 Sender <> is not allowed for clients in 192.168.10.0/24 (senderRestrictions[0])');
  assert.equal(check(c, '', { user: 'scanner', clientAddress: OUTSIDE }), '553 5.7.1 Sender <> is not allowed for user scanner (users[0].allowedSenders)');
  const explicit = config({ senderRestrictions: [{ network: '192.168.10.0/24', allowedSenders: ['@printer.local', '/^$/'] }] });
  assert.equal(check(explicit, ''), 'allowed');
});

test('header From rewriting: a From mailbox a header rule would turn into a forbidden address is refused (550 5.7.1)', () => {
  const c = config({
    users: [{ name: 'scanner', allowedSenders: ['@printer.local', '@scans.contoso.com'] }],
    senderRestrictions: [{ network: '192.168.10.0/24', allowedSenders: ['@printer.local', '@scans.contoso.com'] }],
    rewrite: [
      { match: 'ceo-alias@printer.local', to: 'ceo@contoso.com', apply: 'header' },
      { match: 'env-only@printer.local', to: 'ceo@contoso.com', apply: 'envelope' },
      { match: '*@printer.local', to: '$1@scans.contoso.com' },
    ],
  });
  const reply = (headerFrom: string[], o: { user?: string; clientAddress?: string } = {}) => {
    const err = checkHeaderFromAllowed(c, { headerFrom, clientAddress: o.clientAddress ?? LAN, ...(o.user ? { user: o.user } : {}) });
    return err ? err.reply : 'allowed';
  };
  assert.equal(reply(['floor2@printer.local']), 'allowed', 'rewritten to an allowed address');
  assert.equal(reply(['someone@elsewhere.test']), 'allowed', 'no rule rewrites it: not this check’s business');
  assert.equal(reply(['env-only@printer.local']), 'allowed', 'an envelope-only rule does not touch the From; the next rule makes it allowed');
  assert.equal(
    reply(['floor2@printer.local', 'ceo-alias@printer.local']),
    '550 5.7.1 Header From <ceo-alias@printer.local> (rewritten to <ceo@contoso.com>) is not allowed for clients in 192.168.10.0/24 (senderRestrictions[0])',
  );
  assert.equal(
    reply(['ceo-alias@printer.local'], { user: 'scanner', clientAddress: OUTSIDE }),
    '550 5.7.1 Header From <ceo-alias@printer.local> (rewritten to <ceo@contoso.com>) is not allowed for user scanner (users[0].allowedSenders)',
  );
  assert.equal(reply(['ceo-alias@printer.local'], { clientAddress: OUTSIDE }), 'allowed', 'unrestricted clients may use the rule');
});
