/**
 * What a reload applies now and what waits for a restart: users and routes at once; a changed secret (an
 * upstream password, the Redis URL with its password) is noticed although secrets serialise as "[secret]".
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planReload } from '../../src/admin/reload.js';
import { parseConfig } from '../../src/config/load.js';

function config(o: { pass?: string; redis?: string; routes?: unknown[]; upstreams?: Record<string, unknown> } = {}) {
  return parseConfig(
    JSON.stringify({
      spool: { dir: '/tmp/spool' },
      state: { dir: '/tmp/state', ...(o.redis ? { redis: { url: o.redis } } : {}) },
      listeners: [{ name: 'relay', role: 'relay', port: 2525 }],
      upstreams: { mail: { type: 'smtp', host: 'mail.example.net', auth: { user: 'relay', pass: o.pass ?? 'one' } }, ...o.upstreams },
      routing: { default: 'mail', routes: o.routes ?? [] },
    }),
  );
}

test('an unchanged config changes nothing', () => {
  assert.deepEqual(planReload(config(), config()), { config: planReload(config(), config()).config, changed: [], restartRequired: [] });
});

test('a changed upstream password is reported as waiting for a restart, and the running one is kept', () => {
  const plan = planReload(config({ pass: 'one' }), config({ pass: 'two' }));
  assert.deepEqual(plan.restartRequired, ['upstreams']);
  const kept = plan.config.upstreams.mail;
  assert.equal(kept?.type === 'smtp' ? kept.auth?.pass.reveal() : undefined, 'one');
});

test('a changed Redis URL (with its password) is reported as waiting for a restart', () => {
  const plan = planReload(config({ redis: 'redis://:a@127.0.0.1:6379/0' }), config({ redis: 'redis://:b@127.0.0.1:6379/0' }));
  assert.deepEqual(plan.restartRequired, ['state']);
  assert.deepEqual(plan.changed, []);
});

test('routes take effect now', () => {
  const plan = planReload(config(), config({ routes: [{ name: 'scans', match: { sender: '@printer.local' }, upstream: 'mail' }] }));
  assert.deepEqual(plan.changed, ['routing']);
  assert.deepEqual(plan.restartRequired, []);
  assert.equal(plan.config.routing.routes[0]?.name, 'scans');
});

test('a route whose fallback names an upstream that is not running yet is refused', () => {
  const upstreams = { newbox: { type: 'outbox', dir: '/tmp/newbox' } };
  const routes = [{ name: 'scans', match: { sender: '@printer.local' }, upstream: 'mail', fallbacks: ['newbox'] }];
  assert.throws(() => planReload(config(), config({ upstreams, routes })), {
    name: 'ReloadRefused',
    message: 'the new config routes mail to upstream newbox, which is not running yet: restart smarthost to add upstreams',
  });
});
