/**
 * Child processes and /proc readings for the benchmark: every child is tracked so that an error, a timeout
 * or Ctrl-C never leaves a daemon running, and resource figures come from the kernel's own accounting.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Clock ticks per second for /proc/<pid>/stat times; 100 on every Linux we run on (getconf CLK_TCK). */
const CLK_TCK = 100;

export class TimeoutError extends Error {
  override name = 'TimeoutError';
}

/** Epoch milliseconds with sub-millisecond resolution, comparable across our processes on one machine. */
export function now(): number {
  return performance.timeOrigin + performance.now();
}

// ---------------------------------------------------------------------------------------------------------
// Cleanup: children and synchronous exit hooks (process 'exit' handlers cannot await).

const children = new Set<ChildProcess>();
/** Children whose exit and closed stdio we have seen ('close'): their output is complete. */
const closed = new WeakSet<ChildProcess>();
const exitHooks: (() => void)[] = [];

export function spawnTracked(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, options);
  children.add(child);
  child.once('exit', () => children.delete(child));
  child.once('close', () => closed.add(child));
  child.once('error', () => children.delete(child));
  return child;
}

/** Runs at exit, even after an error: e.g. stopping a Postfix instance, which is no child of ours. */
export function onExit(hook: () => void): () => void {
  exitHooks.push(hook);
  return () => {
    const i = exitHooks.indexOf(hook);
    if (i >= 0) exitHooks.splice(i, 1);
  };
}

function cleanUp(): void {
  for (const child of children) child.kill('SIGKILL');
  children.clear();
  for (const hook of exitHooks.splice(0).reverse()) {
    try {
      hook();
    } catch {
      // Best effort: the remaining hooks must still run.
    }
  }
}

/** For the orchestrator only (the sink and load children import this module too): clean up on exit and signals. */
export function installCleanup(): void {
  process.once('exit', cleanUp);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      console.error(`\nbench: ${signal}, stopping children`);
      cleanUp();
      process.exit(130);
    });
  }
}

/**
 * Resolves with the exit code once the child has exited and its output pipes are drained; after
 * timeoutMs it is killed and this rejects. Only for children started with spawnTracked.
 */
export function waitForExit(child: ChildProcess, timeoutMs: number, what: string): Promise<number | null> {
  if (closed.has(child)) return Promise.resolve(child.exitCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new TimeoutError(`${what} did not exit within ${Math.round(timeoutMs / 1000)} s; killed`));
    }, timeoutMs);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/** Runs a command to completion with a time limit; throws with its output when it fails. */
export function runSync(command: string, args: string[], timeoutMs: number, env?: NodeJS.ProcessEnv, input?: string): string {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: timeoutMs, env: env ?? process.env, ...(input !== undefined ? { input } : {}) });
  if (r.error) throw new Error(`${command} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${r.status ?? r.signal}: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

/** The absolute path of a program in PATH or the sbin directories (root's PATH may lack /usr/sbin). */
export function findProgram(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin', '/sbin'];
  return dirs
    .filter((dir) => dir.startsWith('/'))
    .map((dir) => `${dir}/${name}`)
    .find((path) => existsSync(path));
}

// ---------------------------------------------------------------------------------------------------------
// Network waits.

/** A currently free TCP port on 127.0.0.1 (bind port 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** One polite SMTP probe: read the 220 greeting, say QUIT. True when the server greeted us. */
function probeSmtp(port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let greeted = false;
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('error', () => done(false));
    socket.on('data', (data) => {
      if (!greeted && data.toString('latin1').startsWith('220')) {
        greeted = true;
        socket.end('QUIT\r\n');
      }
    });
    socket.once('close', () => done(greeted));
  });
}

/** Waits until an SMTP server greets on the port; fails early if `alive` says its process is gone. */
export async function waitForSmtp(port: number, timeoutMs: number, what: string, alive: () => boolean = () => true): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!alive()) throw new Error(`${what} exited before it listened on 127.0.0.1:${port}`);
    if (await probeSmtp(port)) return;
    await sleep(20);
  }
  throw new TimeoutError(`${what} did not greet on 127.0.0.1:${port} within ${Math.round(timeoutMs / 1000)} s`);
}

// ---------------------------------------------------------------------------------------------------------
// /proc readings.

export interface CpuTimes {
  /** utime + stime, seconds: of the process itself (all its threads), or of the one thread read. */
  self: number;
  /** cutime + cstime: children it has waited for (Postfix's master reaps its exited daemons), seconds. */
  children: number;
  ppid: number;
  /** State letter; 'Z' means exited but not yet reaped. */
  state: string;
}

/** The process's CPU times; with `tid`, one of its threads' (the main thread's id is the process id). */
export function readCpu(pid: number, tid?: number): CpuTimes | undefined {
  let stat: string;
  try {
    stat = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // Fields after "(comm)", which may itself hold spaces: state ppid ... utime(14) stime(15) cutime(16) cstime(17).
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const field = (n: number) => Number(f[n - 3]);
  return {
    state: f[0] ?? '?',
    ppid: field(4),
    self: (field(14) + field(15)) / CLK_TCK,
    children: (field(16) + field(17)) / CLK_TCK,
  };
}

/** The machine's CPU time so far, all CPUs together (/proc/stat), in clock ticks. */
export interface MachineCpu {
  total: number;
  /** idle + iowait */
  idle: number;
  /** Time the hypervisor gave this VM's virtual CPUs to someone else. */
  steal: number;
}

export function readMachineCpu(): MachineCpu | undefined {
  let line: string | undefined;
  try {
    line = readFileSync('/proc/stat', 'latin1').split('\n').find((l) => l.startsWith('cpu '));
  } catch {
    return undefined;
  }
  if (!line) return undefined;
  // cpu user nice system idle iowait irq softirq steal guest guest_nice (guest time is already in user and nice).
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line.trim().split(/\s+/).slice(1, 9).map(Number) as number[];
  return { total: user! + nice! + system! + idle! + iowait! + irq! + softirq! + (steal ?? 0), idle: idle! + iowait!, steal: steal ?? 0 };
}

/** Shares of the machine's CPU time between two readings: busy (neither idle nor stolen) and stolen. */
export function machineShares(from: MachineCpu | undefined, to: MachineCpu | undefined): { busy: number; steal: number } | undefined {
  if (!from || !to || to.total <= from.total) return undefined;
  const total = to.total - from.total;
  const steal = (to.steal - from.steal) / total;
  return { busy: 1 - (to.idle - from.idle) / total - steal, steal };
}

export function isRunning(pid: number): boolean {
  const cpu = readCpu(pid);
  return cpu !== undefined && cpu.state !== 'Z';
}

/** A /proc/<pid>/status or smaps_rollup field in bytes ("VmRSS:  1234 kB"), undefined when unreadable. */
function kbField(file: string, name: string): number | undefined {
  try {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(readFileSync(file, 'latin1'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

export const readRss = (pid: number) => kbField(`/proc/${pid}/status`, 'VmRSS');
/** Peak resident set size since start or since the last resetPeakRss. */
export const readPeakRss = (pid: number) => kbField(`/proc/${pid}/status`, 'VmHWM');
/** Proportional set size: shared pages divided among their users, so a sum over processes is fair. */
export const readPss = (pid: number) => kbField(`/proc/${pid}/smaps_rollup`, 'Pss');

/** Resets VmHWM to the current RSS (Linux 4.0+, needs privileges), so a peak can be measured from idle. */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** Direct children of a process, from a scan of /proc (the per-task children file is not always built in). */
export function childPids(parent: number): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (readCpu(pid)?.ppid === parent) pids.push(pid);
  }
  return pids;
}

/** What a system under test used during a load. */
export interface ResourceUsage {
  cpuSeconds: number;
  /** Peak memory during the load: RSS for smarthost's one process, summed PSS for Postfix's many. */
  peakMemBytes: number;
  /** The same measure when the load began, if it was taken. */
  idleMemBytes: number | undefined;
}

/** Calls `sample` every intervalMs and keeps the largest value until stopped. */
export class PeakSampler {
  #max = 0;
  readonly #timer: NodeJS.Timeout;

  constructor(
    private readonly sample: () => number | undefined,
    intervalMs: number,
  ) {
    this.#tick();
    this.#timer = setInterval(() => this.#tick(), intervalMs);
  }

  #tick(): void {
    const v = this.sample();
    if (v !== undefined && v > this.#max) this.#max = v;
  }

  /** Takes a last sample and returns the peak. */
  stop(): number {
    clearInterval(this.#timer);
    this.#tick();
    return this.#max;
  }
}
