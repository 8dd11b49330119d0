/**
 * Config of the Mailjet and Google upstreams: the mailjet-smtp preset parses into a plain smtp upstream,
 * smtpFallback must name an smtp upstream, and the README's example passes check-config's validation.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { configuredLimits } from '../../src/delivery/limits-config.js';
import { inlineRelayConfig, type MailjetUpstreamConfig } from '../../src/upstreams/mailjet/config.js';
import { makeServiceAccount } from '../fakes/google-token.js';

function withUpstreams(upstreams: string, routingDefault = 'mj'): string {
  return `spool: { dir: /s }\nlisteners: [{ name: relay, role: relay, port: 2525 }]\nupstreams:\n${upstreams}\nrouting: { default: ${routingDefault} }\n`;
}

function problems(text: string): string[] {
  try {
    parseConfig(text, 'test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err.problems;
  }
  return assert.fail('the config was accepted');
}

test('mailjet-smtp is the smtp upstream preset for in-v3.mailjet.com:587 with STARTTLS, logging in with the API keys', () => {
  const config = parseConfig(withUpstreams('  mj: { type: mailjet-smtp, apiKey: public-key, secretKey: secret-key }'));
  const mj = config.upstreams.mj;
  assert.equal(mj?.type, 'smtp', 'downstream it is an smtp upstream');
  if (mj?.type !== 'smtp') return;
  assert.deepEqual(
    { host: mj.host, port: mj.port, security: mj.security, verifyCertificate: mj.verifyCertificate, method: mj.auth?.method, user: mj.auth?.user, pass: mj.auth?.pass.reveal() },
    { host: 'in-v3.mailjet.com', port: undefined, security: 'starttls', verifyCertificate: true, method: 'PLAIN', user: 'public-key', pass: 'secret-key' },
  );
  assert.deepEqual(problems(withUpstreams('  mj: { type: mailjet-smtp, apiKey: k }')), ['upstreams.mj.secretKey: expected a secret: a string, { env: VARIABLE } or { file: PATH }']);
});

test('every upstream type may carry send limits, mailjet-smtp too: the smtp upstream it becomes keeps them', () => {
  const limits = { messagesPerDay: 200 };
  const upstreams = {
    box: { type: 'outbox', dir: '/tmp/outbox' },
    mx: { type: 'smtp', host: 'mx.example.net' },
    graph: { type: 'graph', app: 'contoso', mailbox: 'scans@contoso.com' },
    m365: { type: 'm365-smtp', app: 'contoso', mailbox: 'scans@contoso.com' },
    connector: { type: 'm365-connector', domain: 'contoso.com' },
    api: { type: 'mailjet', apiKey: 'k', secretKey: 's' },
    mj: { type: 'mailjet-smtp', apiKey: 'k', secretKey: 's' },
    gmail: { type: 'google', serviceAccount: makeServiceAccount().json, mailbox: 'scans@contoso.com' },
  };
  const text = (mj: Record<string, unknown>) =>
    JSON.stringify({
      spool: { dir: '/s' },
      listeners: [{ name: 'relay', role: 'relay', port: 2525 }],
      microsoft: { apps: { contoso: { tenantId: '72f988bf-86f1-41af-91ab-2d7cd011db47', clientId: '11111111-2222-3333-4444-555555555555', clientSecret: 's' } } },
      upstreams: { ...Object.fromEntries(Object.entries(upstreams).map(([name, u]) => [name, { ...u, limits }])), mj },
      routing: { default: 'mj' },
    });
  const config = parseConfig(text({ ...upstreams.mj, limits }));
  assert.equal(config.upstreams.mj?.type, 'smtp');
  assert.deepEqual(
    [...configuredLimits(config.upstreams)].map(([name, l]) => [name, l.messagesPerDay]),
    Object.keys(upstreams).map((name) => [name, 200]),
  );
  assert.deepEqual(problems(text({ ...upstreams.mj, limits: { messagesPerDay: 200, perSender: true } })), ['upstreams.mj.limits.perSender: unknown key'], 'checked as strictly as on any upstream');
});

test('mailjet defaults: api.mailjet.com, no sandbox, batches of up to 50 within 20 ms', () => {
  const mj = parseConfig(withUpstreams('  mj: { type: mailjet, apiKey: k, secretKey: s }')).upstreams.mj as MailjetUpstreamConfig;
  assert.deepEqual(
    { baseUrl: mj.baseUrl, sandboxMode: mj.sandboxMode, batch: mj.batch, timeout: mj.timeout, smtpFallback: mj.smtpFallback },
    { baseUrl: 'https://api.mailjet.com', sandboxMode: false, batch: { maxMessages: 50, window: 20, maxBytes: 20_000_000 }, timeout: 60_000, smtpFallback: undefined },
  );
  assert.match(problems(withUpstreams('  mj: { type: mailjet, apiKey: k, secretKey: s, baseUrl: "http://api.example.com" }')).join('\n'), /upstreams\.mj\.baseUrl: expected an https URL/);
  assert.match(problems(withUpstreams('  mj: { type: mailjet, apiKey: k, secretKey: s, batch: { maxMessages: 51 } }')).join('\n'), /upstreams\.mj\.batch\.maxMessages: expected an integer 1-50/);
});

test('smtpFallback names an smtp or mailjet-smtp upstream, or is an inline relay with the same keys', () => {
  assert.deepEqual(problems(withUpstreams('  mj: { type: mailjet, apiKey: k, secretKey: s, smtpFallback: nowhere }')), ['upstreams.mj.smtpFallback: names no upstream; defined: mj, got "nowhere"']);
  assert.deepEqual(problems(withUpstreams('  mj: { type: mailjet, apiKey: k, secretKey: s, smtpFallback: box }\n  box: { type: outbox, dir: /o }')), [
    'upstreams.mj.smtpFallback: names a outbox upstream; expected an smtp or mailjet-smtp upstream, got "box"',
  ]);
  parseConfig(withUpstreams('  mj: { type: mailjet, apiKey: k, secretKey: s, smtpFallback: relay }\n  relay: { type: mailjet-smtp, apiKey: k, secretKey: s }'));
  const inline = parseConfig(withUpstreams('  mj: { type: mailjet, apiKey: k, secretKey: s, smtpFallback: {} }')).upstreams.mj as MailjetUpstreamConfig;
  const relay = inlineRelayConfig(inline);
  assert.deepEqual([relay?.host, relay?.security, relay?.auth?.user, relay?.auth?.pass.reveal()], ['in-v3.mailjet.com', 'starttls', 'k', 's']);
});

test('an unknown upstream type lists the new ones', () => {
  assert.match(problems(withUpstreams('  mj: { type: sendgrid }')).join('\n'), /expected "type" to be one of: .*mailjet, mailjet-smtp, google/);
});

test('the README\'s Mailjet and Google Workspace example is a valid config', async (t) => {
  const readme = readFileSync(fileURLToPath(new URL('../../../README.md', import.meta.url)), 'utf8');
  const start = readme.indexOf('\n## Mailjet and Google Workspace\n');
  assert.ok(start >= 0, 'the README has the section');
  const next = readme.indexOf('\n## ', start + 1);
  const section = readme.slice(start, next < 0 ? undefined : next);
  const blocks = [...section.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
  assert.ok(blocks.length >= 1, 'the section has a YAML example');
  const dir = await mkdtemp(join(tmpdir(), 'smarthost-readme-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const keyFile = join(dir, 'google-service-account.json');
  await writeFile(keyFile, makeServiceAccount().json);
  process.env.MAILJET_SECRET_KEY = 'secret-from-env';
  t.after(() => delete process.env.MAILJET_SECRET_KEY);
  for (const block of blocks) {
    const config = parseConfig(block.replaceAll('/etc/smarthost/google-service-account.json', keyFile), 'README.md');
    assert.deepEqual(Object.keys(config.upstreams).map((n) => [n, config.upstreams[n]!.type]), [
      ['mailjet', 'mailjet'],
      ['mailjet-relay', 'smtp'],
      ['gmail', 'google'],
    ]);
    assert.deepEqual(config.tags, { header: 'X-Tag', allowed: ['invoice', 'scan', 'report'] });
  }
});
