import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { chooseRoute, type RoutingInput } from '../../src/routing/route.js';

const HASH = '$scrypt$ln=15,r=8,p=1$c21hcnRob3N0LWR1bW15$2Yxj6B5bIo7m0ZbKxS6dCXbqAqcqJ8yAGT0aBY1r2KI';
const UPSTREAMS = ['fallback', 'a', 'b', 'c', 'mine', 'lan'];

/** A validated config (through the real schema) with these routes and optional users/listener upstreams. */
function config(o: {
  routes?: unknown[];
  users?: Record<string, unknown>[];
  relayUpstream?: string;
  testMode?: string;
} = {}): Config {
  return parseConfig(
    stringify({
      spool: { dir: '/tmp/spool' },
      listeners: [
        { name: 'relay', role: 'relay', port: 2525, ...(o.relayUpstream ? { upstream: o.relayUpstream } : {}) },
        { name: 'submission', role: 'submission', port: 2587 },
      ],
      users: (o.users ?? []).map((u) => ({ passwordHash: HASH, ...u })),
      upstreams: Object.fromEntries(UPSTREAMS.map((n) => [n, { type: 'outbox', dir: `/tmp/${n}` }])),
      routing: { default: 'fallback', routes: o.routes ?? [], ...(o.testMode ? { testMode: { to: o.testMode } } : {}) },
    }),
    'route.test',
  );
}

const BASE: RoutingInput = {
  sender: 'scanner@printer.local',
  headerFrom: ['scanner@printer.local'],
  recipient: 'alice@contoso.com',
  clientAddress: '192.168.10.5',
  listener: 'relay',
};

function route(c: Config, input: Partial<RoutingInput> = {}) {
  return chooseRoute(c, { ...BASE, ...input });
}

function upstreamOf(c: Config, input: Partial<RoutingInput> = {}): string {
  return route(c, input).decision.upstream;
}

test('no rules, no user, no listener upstream: the default route', () => {
  const r = route(config());
  assert.deepEqual(r.decision, { via: 'default', upstream: 'fallback' });
  assert.deepEqual(r.checks, []);
});

test('an empty match catches everything', () => {
  const c = config({ routes: [{ name: 'all', upstream: 'a' }] });
  assert.deepEqual(route(c).decision, { via: 'routes[0] all', upstream: 'a' });
  assert.equal(upstreamOf(c, { sender: '', headerFrom: [], clientAddress: '::1', listener: 'submission' }), 'a');
});

test('criterion sender alone: exact, @domain, wildcard, regex; null sender matches none', () => {
  const c = config({
    routes: [
      { name: 'exact', match: { sender: 'ERP@Contoso.com' }, upstream: 'a' },
      { name: 'domain', match: { sender: '@printer.local' }, upstream: 'b' },
      { name: 'wild', match: { sender: 'scan-*@*.office.test' }, upstream: 'c' },
      { name: 'regex', match: { sender: '/^invoice-\\d+@/' }, upstream: 'mine' },
    ],
  });
  assert.equal(upstreamOf(c, { sender: 'erp@contoso.com' }), 'a');
  assert.equal(upstreamOf(c, { sender: 'anything@printer.local' }), 'b');
  assert.equal(upstreamOf(c, { sender: 'scan-3@floor1.office.test' }), 'c');
  assert.equal(upstreamOf(c, { sender: 'invoice-2024@billing.test' }), 'mine');
  assert.equal(upstreamOf(c, { sender: 'someone@else.test' }), 'fallback');
  assert.equal(upstreamOf(c, { sender: 'anything@sub.printer.local' }), 'fallback', '@domain excludes subdomains');
  assert.equal(upstreamOf(c, { sender: '' }), 'fallback', 'the null sender matches no sender pattern');
  // The sender criterion looks at the envelope, never the header From.
  assert.equal(upstreamOf(c, { sender: 'x@else.test', headerFrom: ['erp@contoso.com'] }), 'fallback');
});

test('criterion headerFrom alone: any of several From addresses may match; no From matches nothing', () => {
  const c = config({ routes: [{ name: 'accounting', match: { headerFrom: ['@accounting.test', 'boss@contoso.com'] }, upstream: 'a' }] });
  assert.equal(upstreamOf(c, { headerFrom: ['clerk@accounting.test'] }), 'a');
  assert.equal(upstreamOf(c, { headerFrom: ['other@x.test', 'BOSS@contoso.com'] }), 'a', 'second From address, second pattern');
  assert.equal(upstreamOf(c, { headerFrom: ['other@x.test'] }), 'fallback');
  assert.equal(upstreamOf(c, { headerFrom: [] }), 'fallback');
  // The envelope sender does not stand in for the header From.
  assert.equal(upstreamOf(c, { sender: 'clerk@accounting.test', headerFrom: ['x@y.test'] }), 'fallback');
});

test('criterion recipient alone: address or domain', () => {
  const c = config({
    routes: [
      { name: 'partner', match: { recipient: '@partner.test' }, upstream: 'a' },
      { name: 'ceo', match: { recipient: 'ceo@contoso.com' }, upstream: 'b' },
    ],
  });
  assert.equal(upstreamOf(c, { recipient: 'x@partner.test' }), 'a');
  assert.equal(upstreamOf(c, { recipient: 'X@PARTNER.TEST' }), 'a');
  assert.equal(upstreamOf(c, { recipient: 'ceo@contoso.com' }), 'b');
  assert.equal(upstreamOf(c, { recipient: 'cfo@contoso.com' }), 'fallback');
  assert.equal(upstreamOf(c, { recipient: 'x@mail.partner.test' }), 'fallback');
});

test('criterion user alone: only that authenticated user; unauthenticated clients never match', () => {
  const c = config({ users: [{ name: 'erp' }, { name: 'billing' }, { name: 'scanner' }], routes: [{ name: 'erp', match: { user: ['erp', 'billing'] }, upstream: 'a' }] });
  assert.equal(upstreamOf(c, { user: 'erp' }), 'a');
  assert.equal(upstreamOf(c, { user: 'billing' }), 'a', 'any name of the list');
  assert.equal(upstreamOf(c, { user: 'scanner' }), 'fallback');
  assert.equal(upstreamOf(c, { user: 'ERP' }), 'fallback', 'user names are compared exactly');
  assert.equal(upstreamOf(c), 'fallback');
});

test('criterion network alone: IPv4 and IPv6 CIDRs, IPv4-mapped addresses', () => {
  const c = config({ routes: [{ name: 'lan', match: { network: ['192.168.10.0/24', '2001:db8:10::/64'] }, upstream: 'lan' }] });
  assert.equal(upstreamOf(c, { clientAddress: '192.168.10.200' }), 'lan');
  assert.equal(upstreamOf(c, { clientAddress: '::ffff:192.168.10.7' }), 'lan');
  assert.equal(upstreamOf(c, { clientAddress: '2001:db8:10::25' }), 'lan');
  assert.equal(upstreamOf(c, { clientAddress: '192.168.11.1' }), 'fallback');
  assert.equal(upstreamOf(c, { clientAddress: '2001:db8:11::25' }), 'fallback');
  assert.equal(upstreamOf(c, { clientAddress: 'not-an-ip' }), 'fallback');
});

test('criterion listener alone', () => {
  const c = config({ routes: [{ name: 'subm', match: { listener: 'submission' }, upstream: 'a' }] });
  assert.equal(upstreamOf(c, { listener: 'submission' }), 'a');
  assert.equal(upstreamOf(c, { listener: 'relay' }), 'fallback');
});

test('criteria combine with AND; each list combines with OR', () => {
  const c = config({
    users: [{ name: 'erp' }],
    routes: [
      {
        name: 'combo',
        match: {
          sender: ['@printer.local', '@scanners.test'],
          headerFrom: '*@printer.local',
          recipient: ['@contoso.com', '@partner.test'],
          user: 'erp',
          network: '192.168.10.0/24',
          listener: ['relay', 'submission'],
        },
        upstream: 'a',
      },
    ],
  });
  const all: Partial<RoutingInput> = { user: 'erp' };
  assert.equal(upstreamOf(c, all), 'a', 'every criterion holds');
  assert.equal(upstreamOf(c, { ...all, sender: 'x@scanners.test', recipient: 'y@partner.test', listener: 'submission' }), 'a', 'other list entries');
  // Any single criterion failing makes the whole rule fail, and is the only reason given.
  const single: Array<[Partial<RoutingInput>, RegExp]> = [
    [{ sender: 'x@other.test' }, /^sender x@other\.test matches none of @printer\.local, @scanners\.test$/],
    [{ headerFrom: ['x@other.test'] }, /^header From x@other\.test matches none of \*@printer\.local$/],
    [{ recipient: 'x@other.test' }, /^recipient x@other\.test \(domain other\.test\) matches none of @contoso\.com, @partner\.test$/],
    [{ user: 'someone' }, /^user someone is not erp$/],
    [{ clientAddress: '10.0.0.1' }, /^client 10\.0\.0\.1 is in none of 192\.168\.10\.0\/24$/],
  ];
  for (const [change, reason] of single) {
    const r = route(c, { ...all, ...change });
    assert.equal(r.decision.upstream, 'fallback', JSON.stringify(change));
    assert.equal(r.checks.length, 1);
    assert.equal(r.checks[0]!.matched, false);
    assert.equal(r.checks[0]!.reasons.length, 1, JSON.stringify(r.checks[0]));
    assert.match(r.checks[0]!.reasons[0]!, reason);
  }
  // Every failed criterion is listed, in the order of the config schema.
  const r = route(config({ users: [{ name: 'u' }], routes: [{ name: 'strict', match: { sender: 'a@a.test', headerFrom: 'a@a.test', recipient: 'a@a.test', user: 'u', network: '10.0.0.0/8', listener: 'submission' }, upstream: 'a' }] }), {
    sender: '',
    headerFrom: [],
  });
  assert.deepEqual(r.checks[0]!.reasons, [
    'sender <> (null sender) matches none of a@a.test',
    'header From (none) matches none of a@a.test',
    'recipient alice@contoso.com (domain contoso.com) matches none of a@a.test',
    'user (not authenticated) is not u',
    'client 192.168.10.5 is in none of 10.0.0.0/8',
    'listener relay is not submission',
  ]);
});

test('first match wins: rules are tried in order, later ones are not checked', () => {
  const c = config({
    routes: [
      { name: 'one', match: { recipient: '@nowhere.test' }, upstream: 'a' },
      { name: 'two', match: { sender: '@printer.local' }, upstream: 'b' },
      { name: 'three', match: { recipient: '@contoso.com' }, upstream: 'c' },
    ],
  });
  const r = route(c);
  assert.deepEqual(r.decision, { via: 'routes[1] two', upstream: 'b' });
  assert.deepEqual(
    r.checks.map((ch) => [ch.rule, ch.matched]),
    [
      ['routes[0] one', false],
      ['routes[1] two', true],
    ],
  );
  assert.deepEqual(r.checks[1]!.reasons, []);
  // Swapping the order swaps the winner.
  const swapped = config({
    routes: [
      { name: 'three', match: { recipient: '@contoso.com' }, upstream: 'c' },
      { name: 'two', match: { sender: '@printer.local' }, upstream: 'b' },
    ],
  });
  assert.deepEqual(route(swapped).decision, { via: 'routes[0] three', upstream: 'c' });
});

test('a rule that matches nothing records every rule and why in checks', () => {
  const c = config({
    users: [{ name: 'erp' }],
    routes: [
      { name: 'one', match: { recipient: '@nowhere.test' }, upstream: 'a' },
      { name: 'two', match: { listener: 'submission', user: 'erp' }, upstream: 'b' },
    ],
  });
  const r = route(c);
  assert.equal(r.decision.via, 'default');
  assert.deepEqual(r.checks, [
    { rule: 'routes[0] one', matched: false, reasons: ['recipient alice@contoso.com (domain contoso.com) matches none of @nowhere.test'] },
    { rule: 'routes[1] two', matched: false, reasons: ['user (not authenticated) is not erp', 'listener relay is not submission'] },
  ]);
});

test('recipient without a domain is reported as such', () => {
  const c = config({ routes: [{ name: 'one', match: { recipient: '@x.test' }, upstream: 'a' }] });
  assert.deepEqual(route(c, { recipient: 'postmaster' }).checks[0]!.reasons, ['recipient postmaster (domain none) matches none of @x.test']);
});

test('precedence: user upstream > first matching rule > listener upstream > default', () => {
  const c = config({
    users: [{ name: 'erp', upstream: 'mine' }, { name: 'plain' }],
    relayUpstream: 'lan',
    routes: [{ name: 'contoso', match: { recipient: '@contoso.com' }, upstream: 'a' }],
  });
  // The user's own upstream beats a matching rule, and no rule is even checked.
  const user = route(c, { user: 'erp' });
  assert.deepEqual(user.decision, { via: 'user erp', upstream: 'mine' });
  assert.deepEqual(user.checks, []);
  // A user without an upstream goes through the rules like anyone else.
  assert.deepEqual(route(c, { user: 'plain' }).decision, { via: 'routes[0] contoso', upstream: 'a' });
  // A matching rule beats the listener's upstream.
  assert.deepEqual(route(c).decision, { via: 'routes[0] contoso', upstream: 'a' });
  // No rule: the listener's upstream beats the default...
  assert.deepEqual(route(c, { recipient: 'x@elsewhere.test' }).decision, { via: 'listener relay', upstream: 'lan' });
  // ...but only for that listener.
  assert.deepEqual(route(c, { recipient: 'x@elsewhere.test', listener: 'submission' }).decision, { via: 'default', upstream: 'fallback' });
  // A user name nobody configured has no upstream of its own.
  assert.deepEqual(route(c, { user: 'ghost', recipient: 'x@elsewhere.test' }).decision, { via: 'listener relay', upstream: 'lan' });
});

test('forced sender: from the route, the user beats the route, the user at every level', () => {
  const routes = [
    { name: 'central', match: { recipient: '@contoso.com' }, upstream: 'a', sender: 'noreply@contoso.com' },
    { name: 'open', match: { recipient: '@open.test' }, upstream: 'b' },
  ];
  const c = config({
    users: [{ name: 'erp', sender: 'erp@contoso.com' }, { name: 'own', upstream: 'mine', sender: 'own@contoso.com' }, { name: 'plain' }],
    relayUpstream: 'lan',
    routes,
  });
  assert.equal(route(c).decision.forcedSender?.address, 'noreply@contoso.com', 'the route forces its central sender');
  assert.equal(route(c, { user: 'plain' }).decision.forcedSender?.address, 'noreply@contoso.com');
  assert.equal(route(c, { user: 'erp' }).decision.forcedSender?.address, 'erp@contoso.com', "the user's sender beats the route's");
  assert.equal(route(c, { recipient: 'x@open.test' }).decision.forcedSender, undefined, 'a route without sender forces nothing');
  assert.equal(route(c, { recipient: 'x@open.test', user: 'erp' }).decision.forcedSender?.address, 'erp@contoso.com');
  assert.deepEqual(route(c, { user: 'own' }).decision, { via: 'user own', upstream: 'mine', forcedSender: { address: 'own@contoso.com' } });
  assert.deepEqual(route(c, { user: 'erp', recipient: 'x@elsewhere.test' }).decision, { via: 'listener relay', upstream: 'lan', forcedSender: { address: 'erp@contoso.com' } });
  assert.deepEqual(route(c, { user: 'erp', recipient: 'x@elsewhere.test', listener: 'submission' }).decision, {
    via: 'default',
    upstream: 'fallback',
    forcedSender: { address: 'erp@contoso.com' },
  });
  assert.equal(route(c, { recipient: 'x@elsewhere.test' }).decision.forcedSender, undefined, 'no route, no user: nothing forced');
});

test('test mode: global applies at every level, a route’s own beats it, none means none', () => {
  const routes = [
    { name: 'tested', match: { recipient: '@contoso.com' }, upstream: 'a', testMode: { to: 'route-test@contoso.com' } },
    { name: 'plain', match: { recipient: '@plain.test' }, upstream: 'b' },
  ];
  const none = config({ routes, users: [{ name: 'own', upstream: 'mine' }], relayUpstream: 'lan' });
  assert.deepEqual(route(none).decision.testMode, { to: 'route-test@contoso.com' }, 'per-route test mode without a global one');
  for (const input of [{ recipient: 'x@plain.test' }, { recipient: 'x@else.test' }, { recipient: 'x@else.test', listener: 'submission' }, { user: 'own' }]) {
    assert.equal(route(none, input).decision.testMode, undefined, JSON.stringify(input));
  }

  const global = config({ routes, users: [{ name: 'own', upstream: 'mine' }], relayUpstream: 'lan', testMode: 'global-test@contoso.com' });
  assert.deepEqual(route(global).decision.testMode, { to: 'route-test@contoso.com' }, "the route's own test address wins");
  const levels: Array<[Partial<RoutingInput>, string]> = [
    [{ recipient: 'x@plain.test' }, 'routes[1] plain'],
    [{ recipient: 'x@else.test' }, 'listener relay'],
    [{ recipient: 'x@else.test', listener: 'submission' }, 'default'],
    [{ user: 'own' }, 'user own'],
  ];
  for (const [input, via] of levels) {
    const d = route(global, input).decision;
    assert.equal(d.via, via);
    assert.deepEqual(d.testMode, { to: 'global-test@contoso.com' }, via);
  }
});

test('routing is pure: the same input gives the same answer, and inputs are not modified', () => {
  const c = config({ routes: [{ name: 'lan', match: { network: '192.168.10.0/24' }, upstream: 'lan' }] });
  const input = { ...BASE, headerFrom: Object.freeze(['a@b.test']) };
  const first = chooseRoute(c, input);
  const second = chooseRoute(c, input);
  assert.deepEqual(first, second);
  assert.deepEqual(input.headerFrom, ['a@b.test']);
});
