/** The RCPT TO check for Direct Send upstreams: routed like the scheduler routes, refused only when unreachable. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { unreachableRecipient } from '../../src/upstreams/reachability.js';

function config(routes: string, extra = '') {
  return parseConfig(
    [
      'spool: { dir: /tmp/x }',
      'listeners: [{ name: relay, role: relay, port: 2525 }]',
      'upstreams:',
      '  tenant: { type: m365-connector, mode: directSend, domain: contoso.com, acceptedDomains: [contoso.com] }',
      '  outbox: { type: outbox, dir: /tmp/o }',
      'routing:',
      '  default: tenant',
      routes,
      extra,
    ].join('\n'),
  );
}

const input = (recipient: string) => ({ sender: 'scanner@contoso.com', recipient, clientAddress: '192.168.1.5', listener: 'relay' });

test('a recipient routed to Direct Send outside its accepted domains is refused with 550 5.7.1', () => {
  const c = config('');
  assert.equal(unreachableRecipient(c, input('alice@contoso.com')), undefined);
  const refused = unreachableRecipient(c, input('eve@example.net'));
  assert.equal(refused?.reply, "550 5.7.1 Recipient address rejected: upstream tenant (Direct Send) reaches only its tenant's accepted domains");
});

test('a rule routing outside recipients elsewhere makes them acceptable', () => {
  const c = config('  routes: [{ name: outside, match: { recipient: "/@(?!contoso\\\\.com$)/" }, upstream: outbox }]');
  assert.equal(unreachableRecipient(c, input('eve@example.net')), undefined);
  assert.equal(unreachableRecipient(c, input('alice@contoso.com')), undefined);
});

test('nothing is refused at RCPT when routing depends on the header From (unknown before DATA)', () => {
  const c = config('  routes: [{ name: hf, match: { headerFrom: "@printer.local" }, upstream: outbox }]');
  assert.equal(unreachableRecipient(c, input('eve@example.net')), undefined);
});

test('in test mode the test address is what must be reachable', () => {
  assert.equal(unreachableRecipient(config('  testMode: { to: it@contoso.com }'), input('eve@example.net')), undefined);
  assert.ok(unreachableRecipient(config('  testMode: { to: it@example.net }'), input('alice@contoso.com')));
});
