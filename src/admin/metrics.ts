/**
 * The one Prometheus registry of a daemon. Each module declares its own metrics beside the code that counts
 * them (src/inbound/metrics.ts, src/delivery/metrics.ts, src/spool/metrics.ts, src/upstreams/oauth/metrics.ts)
 * and registers them here; no module uses prom-client's global default registry, so several daemons in one
 * process (the tests) never collide.
 *
 * Naming: one `smarthost_` prefix, base units (seconds, bytes), `_total` counters; never an address as a label.
 */
import { collectDefaultMetrics, Gauge, Registry } from 'prom-client';

export const METRIC_PREFIX = 'smarthost_';

export function createRegistry(build: { version: string }): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: METRIC_PREFIX });
  const info = new Gauge({
    name: `${METRIC_PREFIX}build_info`,
    help: 'Always 1; the labels say which smarthost and Node.js versions run',
    labelNames: ['version', 'node_version'] as const,
    registers: [registry],
  });
  info.set({ version: build.version, node_version: process.version }, 1);
  return registry;
}
