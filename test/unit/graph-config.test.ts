import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError, parseConfig } from '../../src/config/load.js';

const README = fileURLToPath(new URL('../../../README.md', import.meta.url));

/** The YAML example of the README's "Microsoft Graph" section. */
function readmeExample(): string {
  const text = readFileSync(README, 'utf8');
  const section = text.slice(text.indexOf('\n## Microsoft Graph\n'));
  const m = /```yaml\n([\s\S]*?)```/.exec(section);
  assert.ok(m, 'the section has a YAML example');
  return m[1]!;
}

function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, 'test');
    return [];
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
}

test('the README example for Microsoft Graph passes the config check, with its documented values', () => {
  process.env.GRAPH_CLIENT_SECRET = 'from-the-environment';
  const config = parseConfig(readmeExample(), 'README.md');
  const up = config.upstreams.m365!;
  assert.equal(up.type, 'graph');
  if (up.type !== 'graph') return;
  assert.deepEqual(
    { app: up.app, mailbox: up.mailbox, saveToSentItems: up.saveToSentItems, perMailbox: up.maxConcurrentPerMailbox, concurrency: up.maxConcurrency, timeout: up.timeout, base: up.graphBaseUrl },
    { app: 'contoso', mailbox: 'scans@contoso.com', saveToSentItems: true, perMailbox: 4, concurrency: 16, timeout: 120_000, base: undefined },
  );
});

test('graph upstream defaults, and what the check refuses', () => {
  process.env.GRAPH_CLIENT_SECRET = 'x';
  const base = readmeExample();
  const minimal = base.replace(/ {4}saveToSentItems[\s\S]*?(?=routing:)/, '');
  const up = parseConfig(minimal, 'test').upstreams.m365!;
  assert.ok(up.type === 'graph' && up.saveToSentItems && up.maxConcurrentPerMailbox === 4 && up.graphBaseUrl === undefined);

  const withUpstream = (extra: string) => base.replace('    app: contoso                     # the app registration above\n', `    app: contoso\n${extra}`);
  assert.deepEqual(problems(withUpstream('    graphBaseUrl: http://graph.example.com/v1.0\n')), [
    'upstreams.m365.graphBaseUrl: expected an https URL (plain http only on loopback, for tests), got "http://graph.example.com/v1.0"',
  ]);
  assert.deepEqual(problems(withUpstream('    graphBaseUrl: http://127.0.0.1:8080/v1.0\n')), [], 'loopback http is allowed (tests)');
  assert.deepEqual(problems(base.replace('mailbox: scans@contoso.com', 'mailbox: scans')), [
    'upstreams.m365.mailbox: expected "fromSender" or the address of the sending mailbox, such as scans@contoso.com, got "scans"',
  ]);
  assert.match(problems(base.replace('app: contoso ', 'app: fabrikam '))[0]!, /^upstreams\.m365\.app: names no app registration under microsoft\.apps; defined: contoso/);
  assert.match(problems(base.replace('maxConcurrentPerMailbox: 4 ', 'maxConcurrentPerMailbox: 0 '))[0]!, /^upstreams\.m365\.maxConcurrentPerMailbox: expected an integer 1-100/);
  assert.match(problems(withUpstream('    sendAs: x\n'))[0]!, /^upstreams\.m365\.sendAs: unknown key/);
});
