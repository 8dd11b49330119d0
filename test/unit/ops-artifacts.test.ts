/**
 * config/prometheus-alerts.yml and config/grafana-dashboard.json name only metrics the daemon really exports
 * (read from a running daemon's registry), and promtool accepts the rules where it is installed.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse, stringify } from 'yaml';
import { startInProcess, tempDir, testConfig } from '../helpers/daemon.js';
import { PROJECT } from '../helpers/packaging.js';

const ALERTS = join(PROJECT, 'config', 'prometheus-alerts.yml');
const DASHBOARD = join(PROJECT, 'config', 'grafana-dashboard.json');

/** Every series name the registry can expose: histograms add _bucket, _sum and _count. */
async function exportedNames(): Promise<Set<string>> {
  const dir = await tempDir();
  const config = await testConfig({ dir: dir.path, extra: { admin: { enabled: false } } });
  const relay = await startInProcess(config);
  try {
    const metrics = await relay.daemon.registry.getMetricsAsJSON();
    return new Set(metrics.flatMap((m) => (String(m.type) === 'histogram' ? [m.name, `${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`] : [m.name])));
  } finally {
    await relay.stop();
    await dir.remove();
  }
}

const namesIn = (expr: string) => [...expr.matchAll(/\bsmarthost_[a-z0-9_]+/g)].map((m) => m[0]);

test('every smarthost_ metric in the alert rules and the dashboard exists in the registry', async () => {
  const exported = await exportedNames();
  const rules = (parse(await readFile(ALERTS, 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] }).groups.flatMap((g) => g.rules);
  assert.deepEqual(
    rules.map((r) => r.alert).filter((a) => /QueueGrowing|OldestMessage|UpstreamDown|TokenRefresh|BounceRate/.test(a)).length,
    5,
    'queue growing, oldest message, upstream down, token refresh, bounce rate',
  );
  const dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[]; templating: { list: { query?: unknown }[] } };
  const used = [
    ...rules.map((r) => ({ where: `alert ${r.alert}`, expr: r.expr })),
    ...dashboard.panels.flatMap((p) => p.targets.map((t) => ({ where: `panel ${p.title}`, expr: t.expr }))),
    ...dashboard.templating.list.flatMap((v) => (typeof v.query === 'string' ? [{ where: 'template variable', expr: v.query }] : [])),
  ];
  const unknown = used.flatMap((u) => namesIn(u.expr).filter((n) => !exported.has(n)).map((n) => `${u.where}: ${n}`));
  assert.deepEqual(unknown, []);
  assert.ok(used.every((u) => namesIn(u.expr).length > 0 || u.where === 'template variable'), 'each expression names a smarthost metric');
});

/** Runs promtool; undefined where it is not installed. */
function promtool(...args: string[]): Promise<{ code: number | null; out: string } | undefined> {
  return new Promise((resolve) => {
    execFile('promtool', args, (err, stdout, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') return resolve(undefined);
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

test('promtool check rules accepts config/prometheus-alerts.yml', async (t) => {
  const result = await promtool('check', 'rules', ALERTS);
  if (!result) return t.skip('promtool is not installed (Debian package prometheus)');
  assert.equal(result.code, 0, result.out);
});

test('SmarthostTokenRefreshFailing fires for an app whose refreshes all fail, not for one that still gets tokens (promtool test rules)', async (t) => {
  // Its two sides differ in their result label: a plain `and` matched nothing, so the alert could never fire.
  const dir = await tempDir();
  t.after(() => dir.remove());
  const series = (app: string, result: string, values: string) => ({ series: `smarthost_oauth_token_refreshes_total{app="${app}",result="${result}",instance="a"}`, values });
  const fixture = {
    rule_files: [ALERTS],
    evaluation_interval: '1m',
    tests: [
      {
        interval: '1m',
        input_series: [series('failing', 'failure', '0+1x40'), series('failing', 'success', '5x40'), series('recovering', 'failure', '0+1x40'), series('recovering', 'success', '0+1x40')],
        alert_rule_test: [
          {
            eval_time: '30m',
            alertname: 'SmarthostTokenRefreshFailing',
            exp_alerts: [
              {
                exp_labels: { severity: 'critical', app: 'failing', instance: 'a', result: 'failure' },
                exp_annotations: {
                  summary: 'smarthost cannot get access tokens for Microsoft app failing',
                  description: 'Mail for Microsoft 365 upstreams is deferred until tokens are issued again. The token.failed log line names the fix (expired secret, missing consent, ...).',
                },
              },
            ],
          },
        ],
      },
    ],
  };
  const file = join(dir.path, 'token-refresh.test.yml');
  await writeFile(file, stringify(fixture));
  const result = await promtool('test', 'rules', file);
  if (!result) return t.skip('promtool is not installed (Debian package prometheus)');
  assert.equal(result.code, 0, result.out);
});
