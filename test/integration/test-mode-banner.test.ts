/**
 * The start-up banner for test mode: a warn line that says where mail goes instead, and none when
 * test mode is off.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';

async function start(t: TestContext, routing: Record<string, unknown>): Promise<InProcessDaemon> {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const config = await testConfig({ dir: dir.path });
  config.routing = { default: 'outbox', ...routing };
  const relay = await startInProcess(config);
  t.after(() => relay.stop());
  // The banner is written before the listeners; once both listen, every start-up line is in.
  await relay.waitForLog((l) => l.event === 'listening' && l.listener === 'submission');
  return relay;
}

test('global and per-route test mode are announced at start-up with their addresses, as a warning', async (t) => {
  const relay = await start(t, {
    testMode: { to: 'qa@contoso.test' },
    routes: [
      { name: 'invoices', match: { sender: '@erp.local' }, upstream: 'outbox', testMode: { to: 'invoice-test@contoso.test' } },
      { name: 'scans', match: { sender: '@printer.local' }, upstream: 'outbox' },
    ],
  });
  const banners = relay.logs().filter((l) => l.event === 'config.test_mode');
  assert.equal(banners.length, 1);
  const banner = banners[0]!;
  assert.equal(banner.level, 'warn');
  assert.equal(banner.testModeTo, 'qa@contoso.test');
  assert.deepEqual(banner.routes, [{ route: 'invoices', to: 'invoice-test@contoso.test' }]);
  assert.match(String(banner.msg), /TEST MODE/);
  assert.match(String(banner.msg), /every recipient is redirected to qa@contoso\.test/);
  assert.match(String(banner.msg), /route invoices: recipients are redirected to invoice-test@contoso\.test/);
  assert.doesNotMatch(String(banner.msg), /scans/);
});

test('a route-only test mode is announced without claiming that all mail is redirected', async (t) => {
  const relay = await start(t, {
    routes: [{ name: 'invoices', match: { sender: '@erp.local' }, upstream: 'outbox', testMode: { to: 'invoice-test@contoso.test' } }],
  });
  const banner = relay.logs().find((l) => l.event === 'config.test_mode');
  assert.ok(banner, 'a banner is logged');
  assert.equal(banner.testModeTo, undefined);
  assert.doesNotMatch(String(banner.msg), /every recipient/);
  assert.match(String(banner.msg), /invoice-test@contoso\.test/);
});

test('without test mode there is no banner', async (t) => {
  const relay = await start(t, { routes: [{ name: 'scans', match: { sender: '@printer.local' }, upstream: 'outbox' }] });
  assert.equal(relay.logs().filter((l) => l.event === 'config.test_mode').length, 0);
});
