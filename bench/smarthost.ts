/**
 * smarthost under test: the built CLI in a child process with a bench config, exactly as an operator
 * runs it, plus its resource use read from /proc (RSS sampled, VmHWM for the peak, utime+stime for CPU).
 * The floor relay (floor-relay.ts) runs and is measured the same way.
 */
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { freePort, isRunning, now, PeakSampler, readCpu, readPeakRss, readRss, resetPeakRss, spawnTracked, waitForExit, waitForSmtp, type ResourceUsage } from './process.js';

const CLI = fileURLToPath(new URL('../src/cli.js', import.meta.url));
const FLOOR_RELAY = fileURLToPath(new URL('./floor-relay.js', import.meta.url));

export interface SmarthostOptions {
  /** Working directory: config, spool and log live here. */
  dir: string;
  /** Where the `sink` upstream points: the bench sink, or a closed port to keep mail queued. */
  upstreamPort: number;
  /** Retry schedule override, e.g. short delays for the queued-restart scenario. */
  retry?: { initialDelay: string; maxDelay: string };
  /** The floor relay (floor-relay.ts) instead of smarthost: same port, upstream and measurements. */
  floor?: boolean;
  /** Write a V8 CPU profile (node --cpu-prof) into this directory when the process exits. */
  cpuProfile?: { dir: string; name: string };
}

/** A config like an operator's: one relay listener for loopback, one SMTP upstream, durable spool. */
export function benchConfig(o: SmarthostOptions, port: number): Record<string, unknown> {
  return {
    hostname: 'smarthost.bench.test',
    log: { level: 'warn' },
    spool: { dir: join(o.dir, 'spool') },
    listeners: [
      {
        name: 'relay',
        role: 'relay',
        host: '127.0.0.1',
        port,
        networks: ['127.0.0.0/8'],
        // Room for the 100 MB scenario plus headers.
        maxMessageSize: '200MB',
        // Scenario (b) opens 200 sessions from one address; the defaults (200 clients, 20 per address) would refuse most.
        maxClients: 1000,
        maxConnectionsPerIp: 1000,
      },
    ],
    upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: o.upstreamPort, security: 'none', maxConnections: 20 } },
    routing: { default: 'sink' },
    // Served as usual, on any free port: the default 9325 may belong to another smarthost on this machine.
    admin: { port: 0 },
    delivery: { ...(o.retry ? { retry: o.retry } : {}), shutdownTimeout: '10s' },
  };
}

export class SmarthostProcess {
  #sampler: PeakSampler | undefined;
  #idle: { cpu: number; rss: number; hwmReset: boolean } | undefined;

  private constructor(
    readonly child: ChildProcess,
    readonly port: number,
    readonly logPath: string,
    /** Epoch ms just before the process was spawned. */
    readonly spawnedAt: number,
    /** Epoch ms when it first answered an SMTP greeting. */
    readonly listeningAt: number,
    /** "smarthost" or "floor relay", for error messages. */
    readonly label: string,
  ) {}

  get pid(): number {
    return this.child.pid!;
  }

  static async start(o: SmarthostOptions): Promise<SmarthostProcess> {
    await mkdir(o.dir, { recursive: true });
    const port = await freePort();
    const configPath = join(o.dir, 'smarthost.yaml');
    if (!o.floor) await writeFile(configPath, stringify(benchConfig(o, port)));
    const logPath = join(o.dir, 'smarthost.log');
    const log = openSync(logPath, 'a');
    const profile = o.cpuProfile ? ['--cpu-prof', `--cpu-prof-dir=${o.cpuProfile.dir}`, `--cpu-prof-name=${o.cpuProfile.name}.cpuprofile`] : [];
    const spawnedAt = now();
    const label = o.floor ? 'floor relay' : 'smarthost';
    const program = o.floor
      ? [FLOOR_RELAY, '--port', String(port), '--upstream-port', String(o.upstreamPort), '--dir', join(o.dir, 'spool')]
      : [CLI, 'start', '--config', configPath];
    const child = spawnTracked(process.execPath, [...profile, ...program], { stdio: ['ignore', log, log] });
    closeSync(log);
    try {
      await waitForSmtp(port, 30_000, label, () => child.exitCode === null);
    } catch (err) {
      child.kill('SIGKILL');
      throw new Error(`${(err as Error).message}\n${tail(logPath)}`);
    }
    const started = new SmarthostProcess(child, port, logPath, spawnedAt, now(), label);
    started.#sampler = new PeakSampler(() => readRss(started.pid), 100);
    return started;
  }

  /**
   * Marks the idle point once start-up has settled: CPU and peak RSS are measured from here. The kernel's
   * peak (VmHWM) is reset so a start-up spike cannot hide the growth under load.
   */
  markIdle(): void {
    this.#sampler?.stop();
    this.#idle = { cpu: readCpu(this.pid)?.self ?? 0, rss: readRss(this.pid) ?? 0, hwmReset: resetPeakRss(this.pid) };
    this.#sampler = new PeakSampler(() => readRss(this.pid), 100);
  }

  /** CPU and peak RSS since markIdle(), or since the process started when it was never marked idle. */
  usage(): ResourceUsage {
    const sampled = this.#sampler?.stop() ?? 0;
    // Without a successful reset VmHWM may hold a start-up peak; then only our 100 ms samples count.
    const hwm = !this.#idle || this.#idle.hwmReset ? (readPeakRss(this.pid) ?? 0) : 0;
    return {
      cpuSeconds: (readCpu(this.pid)?.self ?? 0) - (this.#idle?.cpu ?? 0),
      peakMemBytes: Math.max(hwm, sampled),
      idleMemBytes: this.#idle?.rss,
    };
  }

  /** CPU seconds of the main thread, which runs the event loop; the other threads are libuv's and V8's. */
  eventLoopCpu(): number | undefined {
    return readCpu(this.pid, this.pid)?.self;
  }

  /** SIGTERM as an operator would; SIGKILL if it has not exited within the shutdown timeout plus a margin. */
  async stop(): Promise<void> {
    this.#sampler?.stop();
    if (!isRunning(this.pid)) return;
    this.child.kill('SIGTERM');
    const code = await waitForExit(this.child, 20_000, this.label);
    if (code !== 0) throw new Error(`${this.label} exited with ${code}\n${tail(this.logPath)}`);
  }

  diagnostics(): string {
    return tail(this.logPath);
  }
}

function tail(path: string, bytes = 2000): string {
  try {
    const text = readFileSync(path, 'utf8');
    return text.length > bytes ? `...${text.slice(-bytes)}` : text;
  } catch {
    return '';
  }
}
