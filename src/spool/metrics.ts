import { statfs } from 'node:fs/promises';
import { Gauge, type Registry } from 'prom-client';

/** Free bytes on the spool's file system, for an unprivileged process. */
export async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

/** smarthost_spool_free_bytes, read (statfs) at every scrape. */
export function registerSpoolMetrics(registry: Registry, dir: string): void {
  new Gauge({
    name: 'smarthost_spool_free_bytes',
    help: "Free space on the spool directory's file system, in bytes",
    registers: [registry],
    async collect() {
      try {
        this.set(await freeBytes(dir));
      } catch {
        // A scrape must not fail because the spool is unreadable; /readyz reports that.
        this.set(0);
      }
    },
  });
}
