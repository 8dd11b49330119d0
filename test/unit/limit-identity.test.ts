/**
 * Whom send limits count: the mailbox each upstream sends as (Upstream.sendsAs), since Exchange Online and Gmail
 * count per mailbox. A fixed mailbox carries every sender through it on one budget; fromSender counts each sender.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { configuredLimits } from '../../src/delivery/limits-config.js';
import { SendLimiter } from '../../src/delivery/limits.js';
import { createLogger } from '../../src/log.js';
import { googleMailbox } from '../../src/upstreams/google/config.js';
import { graphMailbox } from '../../src/upstreams/graph/config.js';
import { createUpstream } from '../../src/upstreams/index.js';
import { m365SmtpMailbox } from '../../src/upstreams/m365/config.js';
import { MicrosoftApps } from '../../src/upstreams/oauth/msal.js';
import type { Upstream } from '../../src/upstreams/upstream.js';

const T0 = Date.UTC(2025, 5, 3, 12, 0, 0);

test('each upstream type maps a sender to the mailbox it sends as', () => {
  const fixed = { mailbox: 'scans@contoso.com' };
  assert.deepEqual(['a@contoso.com', 'b@contoso.com', ''].map((s) => m365SmtpMailbox(fixed, s)), ['scans@contoso.com', 'scans@contoso.com', 'scans@contoso.com']);
  const basic = { mailbox: 'scans@contoso.com', legacyBasicAuth: { user: 'device@contoso.com' } };
  assert.equal(m365SmtpMailbox(basic, 'a@contoso.com'), 'device@contoso.com', 'legacyBasicAuth logs in as its user');
  assert.equal(m365SmtpMailbox({ mailbox: 'fromSender' }, 'a@contoso.com'), 'a@contoso.com');
  assert.equal(graphMailbox(fixed, 'a@contoso.com'), 'scans@contoso.com');
  assert.equal(graphMailbox({ mailbox: 'fromSender' }, 'a@contoso.com'), 'a@contoso.com');
  assert.equal(googleMailbox(fixed, 'a@contoso.com'), 'scans@contoso.com');
  assert.equal(googleMailbox({ mailbox: 'fromSender' }, 'a@contoso.com'), 'a@contoso.com');
  assert.equal(googleMailbox({ mailbox: 'fromSender', bounceMailbox: 'postmaster@contoso.com' }, ''), 'postmaster@contoso.com', 'a bounce goes as bounceMailbox');
});

test('per mailbox: every sender through a fixed mailbox shares its budget; fromSender and smtp count each sender', async (t: TestContext) => {
  const config = parseConfig(
    [
      'spool: { dir: /tmp/spool }',
      'listeners: [{ name: relay, role: relay, port: 2525 }]',
      'microsoft: { apps: { contoso: { tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47, clientId: 11111111-2222-3333-4444-555555555555, clientSecret: s } } }',
      'upstreams:',
      '  scans: { type: m365-smtp, app: contoso, mailbox: Scans@contoso.com }',
      '  graph: { type: graph, app: contoso, mailbox: scans@contoso.com }',
      '  each: { type: m365-smtp, app: contoso, mailbox: fromSender }',
      '  erp: { type: smtp, host: mail.example.net, auth: { user: erp, pass: p }, limits: { messagesPerMinute: 30, perMailbox: true } }',
      'routing: { default: scans }',
    ].join('\n'),
  );
  const log = createLogger('fatal');
  const services = { log, microsoft: new MicrosoftApps(config.microsoft, { log }) };
  const upstreams = new Map<string, Upstream>(Object.entries(config.upstreams).map(([name, c]) => [name, createUpstream(name, c, 'relay.test', services)]));
  t.after(() => Promise.all([...upstreams.values()].map((u) => u.close())));
  const limits = new SendLimiter(configuredLimits(config.upstreams));
  // As the delivery attempt asks: the upstream's identity for the sender, the sender where it has none.
  const key = (name: string, sender: string) => limits.key(name, upstreams.get(name)!.sendsAs?.(sender) ?? sender);

  assert.equal(key('scans', 'a@contoso.com'), 'scans/scans@contoso.com');
  assert.equal(key('scans', 'b@contoso.com'), 'scans/scans@contoso.com');
  assert.equal(key('graph', 'b@contoso.com'), 'graph/scans@contoso.com', 'also through the graph upstream before its module has loaded');
  for (let i = 0; i < 30; i++) limits.record(key('scans', i % 2 ? 'a@contoso.com' : 'b@contoso.com')!, 1, T0);
  assert.equal(limits.check(key('scans', 'c@contoso.com')!, 1, T0).ok, false, 'the 31st message of the minute waits, whoever sends it');

  assert.equal(key('each', 'a@contoso.com'), 'each/a@contoso.com');
  assert.equal(key('each', 'b@contoso.com'), 'each/b@contoso.com');
  assert.equal(key('erp', 'a@contoso.com'), 'erp/a@contoso.com', 'an smtp upstream with perMailbox counts each envelope sender, as before');
});
