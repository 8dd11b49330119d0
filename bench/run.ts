/**
 * `npm run bench`: smarthost against Postfix on this machine, same sink, same load, loopback only.
 *
 *   npm run bench -- [--scenario a|b|c|d|e]... [--all] [--scale F] [--sink smtp-sink|node]
 *                    [--generator node|smtp-source] [--no-postfix] [--floor] [--cpu-prof] [--keep]
 *
 * Every load runs on a freshly started server with an empty queue (smarthost and Postfix alike). Before the
 * measured load, each server relays a warm-up load that is not measured, so both are compared in the steady
 * state a relay spends its life in: Node's JIT has compiled the hot paths (cold, it spends about 40 % more
 * CPU per message in (a)), Postfix has its smtpd and smtp processes running. One sink serves the whole run;
 * each load waits for its own messages at the sink.
 */
import { chmodSync, rmSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { LoadResult } from './load.js';
import { ensurePostfix, PostfixInstance } from './postfix.js';
import { findProgram, freePort, installCleanup, machineShares, now, onExit, readMachineCpu, runSync, spawnTracked, waitForExit, type ResourceUsage } from './process.js';
import { formatProfile, summarizeProfile } from './profile.js';
import { formatTable, mb, num, ratio, type Row } from './report.js';
import { Sink, type SinkKind } from './sink.js';
import { SmarthostProcess } from './smarthost.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const LOAD = fileURLToPath(new URL('./load.js', import.meta.url));
const KiB = 1024;
const MiB = 1024 * KiB;

type Generator = 'node' | 'smtp-source';
/** floor: bench/floor-relay.ts, smarthost's libraries and durable writes without its features (--floor). */
type System = 'smarthost' | 'postfix' | 'floor';

interface LoadSpec {
  sessions: number;
  messages: number;
  size: number;
  /** Messages relayed (same size and sessions, Node generator) before the measured load; none for (d). */
  warmup: number;
}

interface LoadScenario {
  kind: 'load';
  title: string;
  spec: LoadSpec;
  /** Fewest messages after scaling: (b) keeps one message per session so 200 sessions stay concurrent. */
  minMessages: number;
  /** (d): --scale shrinks the message rather than the count. */
  scaleSize?: boolean;
  compare: boolean;
  generators: Generator[];
}

interface RestartScenario {
  kind: 'restart';
  title: string;
  queued: number;
}

const SCENARIOS: Record<string, LoadScenario | RestartScenario> = {
  a: { kind: 'load', title: 'small messages', spec: { sessions: 20, messages: 5000, size: 4 * KiB, warmup: 2500 }, minMessages: 20, compare: true, generators: ['node', 'smtp-source'] },
  b: { kind: 'load', title: 'many concurrent sessions', spec: { sessions: 200, messages: 2000, size: 4 * KiB, warmup: 2000 }, minMessages: 200, compare: true, generators: ['node', 'smtp-source'] },
  c: { kind: 'load', title: 'large messages', spec: { sessions: 10, messages: 200, size: MiB, warmup: 50 }, minMessages: 10, compare: true, generators: ['node', 'smtp-source'] },
  d: { kind: 'load', title: 'one very large message', spec: { sessions: 1, messages: 1, size: 100 * MiB, warmup: 0 }, minMessages: 1, scaleSize: true, compare: false, generators: ['node'] },
  e: { kind: 'restart', title: 'restart with a full queue', queued: 10_000 },
};

/**
 * Pause between the warm-up and the measured load. ext4 does not reuse an inode deleted in the last 60 s and
 * scans past such inodes on every file creation (bench/README.md), so after a short pause the measured load
 * would pay for the warm-up's deleted queue files: with 1 s, Postfix spent 2.5-2.8 ms of CPU per message in (a)
 * instead of 2.1-2.2 (cold, or after 70 s). Past the minute, the measured load starts as a cold one would, only
 * warm. Scaled with --scale, so that a quick run stays quick (its warm-up deletes few files).
 */
const WARMUP_PAUSE_MS = 65_000;

/** Retry delay of the instance that fills the queue for (e); the restart waits it out so every message is due. */
const FILL_RETRY_SECONDS = 20;

interface Context {
  runDir: string;
  sink: Sink;
  scale: number;
  postfix: { ok: true } | { ok: false; reason: string };
  smtpSource: string | undefined;
  profileDir: string | undefined;
  keep: boolean;
  /** --generator: only these load generators (default: both). */
  generators: Generator[] | undefined;
  /** --floor: the load scenarios also run the floor relay. */
  floor: boolean;
}

interface Measurement {
  system: System;
  generator: Generator;
  spec: LoadSpec;
  acknowledged: number;
  /** Messages per second from the first connection to the last message counted at the sink. */
  endToEnd?: number;
  /** Messages per second from the first connection to the last 250 the client saw. */
  accept?: number;
  latency?: LoadResult['latencyMs'];
  cpuSeconds?: number;
  peakMemBytes?: number;
  idleMemBytes?: number;
  /** The whole machine during the load (first connection to last message at the sink). */
  machine?: { busy: number; steal: number };
  /** smarthost's main thread (its event loop) over the same span: its CPU time ÷ the wall time. */
  eventLoopBusy?: number;
  notes: string[];
}

/** What run.ts needs from smarthost and Postfix alike. */
interface ServerUnderTest {
  port: number;
  markIdle(): void;
  usage(): ResourceUsage;
  stop(): Promise<void>;
  /** The end of its log, for error reports. */
  diagnostics(): string;
  /** CPU seconds of the thread running its event loop (smarthost only). */
  eventLoopCpu?(): number | undefined;
}

// ---------------------------------------------------------------------------------------------------------
// Load generators.

interface Drive {
  startedAt: number;
  finishedAt: number;
  acknowledged: number;
  latency?: LoadResult['latencyMs'];
  errors: string[];
}

/** Bounds every wait on a load: a generous floor plus time per message and per byte. */
function loadTimeoutMs(spec: LoadSpec): number {
  return 120_000 + spec.messages * 50 + (spec.messages * spec.size) / (2 * MiB) * 1000;
}

async function drive(generator: Generator, port: number, spec: LoadSpec, ctx: Context): Promise<Drive> {
  const timeout = loadTimeoutMs(spec);
  if (generator === 'node') {
    const args = ['--port', String(port), '--sessions', String(spec.sessions), '--messages', String(spec.messages), '--size', String(spec.size)];
    const child = spawnTracked(process.execPath, [LOAD, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    const code = await waitForExit(child, timeout, 'node load generator');
    if (code !== 0) throw new Error(`node load generator exited with ${code}`);
    const r = JSON.parse(out) as LoadResult;
    const errors = [...r.errors];
    if (r.failedSessions > 0) errors.unshift(`${r.failedSessions} session(s) failed`);
    if (r.rejected > 0) errors.unshift(`${r.rejected} message(s) refused`);
    return { startedAt: r.startedAt, finishedAt: r.finishedAt, acknowledged: r.acknowledged, latency: r.latencyMs, errors };
  }
  // smtp-source: -d keeps each session open for several messages, like our generator; -l is the body size.
  const args = ['-d', '-s', String(spec.sessions), '-m', String(spec.messages), '-l', String(spec.size)];
  args.push('-f', 'from@bench.test', '-t', 'to@bench.test', '-M', 'bench-client.test', `127.0.0.1:${port}`);
  const startedAt = now();
  const child = spawnTracked(ctx.smtpSource!, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const code = await waitForExit(child, timeout, 'smtp-source');
  const finishedAt = now();
  // smtp-source stops at the first refusal, so exit status 0 means every message got its 250.
  if (code !== 0) throw new Error(`smtp-source exited with ${code}: ${err.trim().split('\n').slice(-3).join(' / ')}`);
  return { startedAt, finishedAt, acknowledged: spec.messages, errors: [] };
}

// ---------------------------------------------------------------------------------------------------------
// Systems under test.

async function startServer(system: System, dir: string, ctx: Context, profileName: string): Promise<ServerUnderTest> {
  if (system === 'postfix') return PostfixInstance.start(dir, ctx.sink.port);
  const cpuProfile = ctx.profileDir ? { dir: ctx.profileDir, name: profileName } : undefined;
  return SmarthostProcess.start({ dir, upstreamPort: ctx.sink.port, ...(system === 'floor' ? { floor: true } : {}), ...(cpuProfile ? { cpuProfile } : {}) });
}

/**
 * The warm-up load: same size and sessions, always the Node generator, every message counted at the sink; then
 * a pause of WARMUP_PAUSE_MS before the idle reading.
 */
async function warmUp(port: number, spec: LoadSpec, ctx: Context): Promise<void> {
  const warm = { ...spec, messages: spec.warmup, sessions: Math.min(spec.sessions, spec.warmup) };
  const base = ctx.sink.count;
  const d = await drive('node', port, warm, ctx);
  if (d.errors.length > 0 || d.acknowledged !== warm.messages) throw new Error(`warm-up: ${d.acknowledged}/${warm.messages} acknowledged; ${d.errors.join('; ')}`);
  await ctx.sink.waitForCount(base + d.acknowledged, loadTimeoutMs(warm));
  await sleep(WARMUP_PAUSE_MS * Math.min(1, ctx.scale));
}

/** One load against one freshly started system: start, warm up, drive, wait for the sink, read usage, stop. */
async function measure(id: string, system: System, generator: Generator, spec: LoadSpec, ctx: Context): Promise<Measurement> {
  const name = `${id}-${generator}-${system}`;
  const dir = join(ctx.runDir, name);
  const m: Measurement = { system, generator, spec, acknowledged: 0, notes: [] };
  /** The sink's count once every message of this load has arrived there. */
  let expected: number | undefined;
  let server: ServerUnderTest;
  try {
    server = await startServer(system, dir, ctx, name);
  } catch (err) {
    m.notes.push(`could not start: ${(err as Error).message}`);
    return m;
  }
  try {
    // Let start-up work (module loading, first timers, Postfix's first daemons) finish before the warm-up.
    await sleep(500);
    if (spec.warmup > 0) await warmUp(server.port, spec, ctx);
    server.markIdle();
    const base = ctx.sink.count;
    const machineBefore = readMachineCpu();
    const loopBefore = { cpu: server.eventLoopCpu?.(), at: now() };
    const d = await drive(generator, server.port, spec, ctx);
    expected = base + d.acknowledged;
    m.acknowledged = d.acknowledged;
    m.notes.push(...d.errors);
    if (d.acknowledged > 0) {
      const lastAt = await ctx.sink.waitForCount(base + d.acknowledged, loadTimeoutMs(spec));
      // The sink counts messages, not which ones: a message from an earlier load arriving late would be
      // counted as this load's, and could even end it before it began.
      if (ctx.sink.arrivals[base]! < d.startedAt) m.notes.push('the sink counted a message before this load began: a straggler from an earlier load; end-to-end not given');
      else m.endToEnd = d.acknowledged / ((lastAt - d.startedAt) / 1000);
      m.accept = d.acknowledged / ((d.finishedAt - d.startedAt) / 1000);
      m.machine = machineShares(machineBefore, readMachineCpu());
      const loopAfter = server.eventLoopCpu?.();
      if (loopBefore.cpu !== undefined && loopAfter !== undefined) m.eventLoopBusy = (loopAfter - loopBefore.cpu) / ((now() - loopBefore.at) / 1000);
    }
    if (d.latency) m.latency = d.latency;
    const usage = server.usage();
    m.cpuSeconds = usage.cpuSeconds;
    m.peakMemBytes = usage.peakMemBytes;
    if (usage.idleMemBytes !== undefined) m.idleMemBytes = usage.idleMemBytes;
  } catch (err) {
    m.notes.push(`${(err as Error).message}\n${server.diagnostics()}`);
  } finally {
    await server.stop().catch((err: Error) => m.notes.push(`stop: ${err.message}`));
    // Counted once the server is gone, so a message delivered twice cannot arrive after the look.
    if (expected !== undefined && ctx.sink.count > expected) m.notes.push(`sink received ${ctx.sink.count - expected} message(s) more than were acknowledged`);
    if (!ctx.keep) await rm(dir, { recursive: true, force: true });
  }
  return m;
}

// ---------------------------------------------------------------------------------------------------------
// Scenarios.

function scaled(s: LoadScenario, scale: number): LoadSpec {
  if (s.scaleSize) return { ...s.spec, size: Math.max(64 * KiB, Math.round(s.spec.size * Math.min(1, scale))) };
  const messages = Math.max(s.minMessages, Math.round(s.spec.messages * scale));
  const warmup = s.spec.warmup && Math.max(s.minMessages, Math.round(s.spec.warmup * scale));
  return { ...s.spec, messages, warmup, sessions: Math.min(s.spec.sessions, messages) };
}

function describe(spec: LoadSpec): string {
  const size = spec.size >= MiB ? `${num(spec.size / MiB, spec.size % MiB ? 1 : 0)} MiB` : `${num(spec.size / KiB, 0)} KiB`;
  return `${spec.messages} message(s) of ${size}, ${spec.sessions} session(s)${spec.warmup ? ` after ${spec.warmup} warm-up message(s)` : ''}`;
}

async function runLoadScenario(id: string, s: LoadScenario, ctx: Context): Promise<string> {
  const spec = scaled(s, ctx.scale);
  const compare = s.compare && ctx.postfix.ok;
  const generators = s.generators.filter((g) => (g === 'node' || ctx.smtpSource) && (!ctx.generators || ctx.generators.includes(g)));
  const notes: string[] = [];
  if (!s.compare) notes.push('smarthost only: no Postfix comparison for this scenario');
  else if (!ctx.postfix.ok) notes.push(`Postfix comparison skipped: ${ctx.postfix.reason}`);
  if (!ctx.smtpSource && s.generators.includes('smtp-source')) notes.push('smtp-source not found: Node generator only');
  const results: Measurement[] = [];
  // A B B A: each load slows the next one's file creations on some file systems (bench/README.md), so neither
  // system always runs second.
  const systems: System[] = ['smarthost', ...(compare ? (['postfix'] as const) : []), ...(ctx.floor ? (['floor'] as const) : [])];
  const order = (i: number) => (i % 2 === 0 ? systems : [...systems].reverse());
  if (systems.length > 1 && generators.length > 1) notes.push(`order of the loads: ${systems.join(', ')}, then ${[...systems].reverse().join(', ')}`);
  if (ctx.floor) notes.push('floor: bench/floor-relay.ts, the same libraries and durable writes as smarthost without its features');
  for (const [i, generator] of generators.entries()) {
    for (const system of order(i)) {
      console.error(`bench: (${id}) ${generator} load on ${system} ...`);
      const m = await measure(id, system, generator, spec, ctx);
      results.push(m);
      for (const n of m.notes) notes.push(`${generator} on ${system}: ${n}`);
    }
  }
  // Each system against Postfix; without Postfix, smarthost against the floor.
  const ratioColumns: [System, System][] = compare ? systems.filter((x) => x !== 'postfix').map((x) => [x, 'postfix']) : ctx.floor ? [['smarthost', 'floor']] : [];
  const rows: Row[] = [];
  for (const generator of generators) {
    const measured = systems.map((system) => results.find((r) => r.generator === generator && r.system === system));
    const row = (metric: string, pick: (m: Measurement) => number | undefined, fmt: (v: number | undefined) => string) => {
      const values = measured.map((m) => m && pick(m));
      const ratios = ratioColumns.map(([a, b]) => ratio(values[systems.indexOf(a)], values[systems.indexOf(b)]));
      rows.push({ group: generator === 'node' ? 'node load' : generator, metric, cells: [...values.map(fmt), ...ratios] });
    };
    if (spec.messages === 1) {
      // One message: rates per second would read oddly; show its times and the byte rate instead.
      row('end-to-end s', (m) => m.endToEnd && 1 / m.endToEnd, (v) => num(v, 2));
      row('end-to-end MB/s', (m) => m.endToEnd && (m.endToEnd * spec.size) / MiB, (v) => num(v));
      row('accept latency ms (after final dot)', (m) => m.latency?.p50, (v) => num(v));
    } else {
      row('end-to-end msg/s', (m) => m.endToEnd, (v) => num(v));
      row('accept msg/s (client side)', (m) => m.accept, (v) => num(v));
      if (generator === 'node') {
        row('accept latency p50 ms', (m) => m.latency?.p50, (v) => num(v));
        row('accept latency p99 ms', (m) => m.latency?.p99, (v) => num(v));
      }
    }
    const memory = compare ? 'memory MB (see *)' : 'RSS MB';
    row(`idle ${memory}`, (m) => m.idleMemBytes, mb);
    row(`peak ${memory}`, (m) => m.peakMemBytes, mb);
    row(`peak - idle ${memory}`, (m) => m.peakMemBytes && m.idleMemBytes && m.peakMemBytes - m.idleMemBytes, mb);
    row('CPU s', (m) => m.cpuSeconds, (v) => num(v, 2));
    row('CPU ms per message', (m) => m.cpuSeconds && (1000 * m.cpuSeconds) / spec.messages, (v) => num(v, 2));
    row('event loop busy % (main thread)', (m) => m.eventLoopBusy && 100 * m.eventLoopBusy, (v) => num(v, 0));
    row('machine CPU busy % (all CPUs)', (m) => m.machine && 100 * m.machine.busy, (v) => num(v, 0));
    row('CPU stolen by the hypervisor %', (m) => m.machine && 100 * m.machine.steal, (v) => num(v, 1));
  }
  if (compare) {
    notes.unshift(
      'peak memory: smarthost (and the floor) = peak RSS of its one process (VmHWM); Postfix = largest sampled sum of PSS over master and daemons',
      'CPU: smarthost (and the floor) = utime+stime of its process; Postfix = master + all its daemons, exited ones included (cutime)',
    );
  }
  const columns = [...systems, ...ratioColumns.map(([a, b]) => `${a}/${b}`)];
  return formatTable(`(${id}) ${s.title}: ${describe(spec)}`, columns, rows, notes);
}

/**
 * (e): fill a queue while the upstream is down (a closed port), stop with SIGTERM, then start again pointed
 * at the sink and time the recovery. The filling instance retries every FILL_RETRY_SECONDS; the restart
 * waits that long after the stop so every queued message is due, and the clock measures smarthost's own
 * start-up and drain rather than a backoff timer.
 */
async function runRestartScenario(id: string, s: RestartScenario, ctx: Context): Promise<string> {
  const queued = Math.max(1, Math.round(s.queued * ctx.scale));
  const spec = { sessions: 20, messages: queued, size: 4 * KiB, warmup: 0 };
  const dir = join(ctx.runDir, `${id}-smarthost`);
  const notes = ['smarthost only: no Postfix comparison for this scenario', `filled with ${describe(spec)} (node load) while the upstream refused connections`];
  const rows: Row[] = [];
  const row = (metric: string, value: string) => rows.push({ group: '', metric, cells: [value] });
  try {
    console.error(`bench: (${id}) filling the queue with ${queued} messages, upstream down ...`);
    const fill = await SmarthostProcess.start({
      dir,
      upstreamPort: await freePort(),
      retry: { initialDelay: `${FILL_RETRY_SECONDS}s`, maxDelay: `${FILL_RETRY_SECONDS}s` },
    });
    let filled: Drive;
    try {
      filled = await drive('node', fill.port, spec, ctx);
    } finally {
      await fill.stop();
    }
    const stoppedAt = now();
    notes.push(...filled.errors);
    const onDisk = (await readdir(join(dir, 'spool', 'queue'))).filter((f) => f.endsWith('.msg')).length;
    if (onDisk !== filled.acknowledged) notes.push(`${filled.acknowledged} acknowledged but ${onDisk} in the queue after SIGTERM`);
    const waitMs = stoppedAt + FILL_RETRY_SECONDS * 1000 + 500 - now();
    console.error(`bench: (${id}) ${onDisk} queued; waiting ${Math.ceil(waitMs / 1000)} s until all are due, then restarting ...`);
    await sleep(Math.max(0, waitMs));

    const base = ctx.sink.count;
    const timeout = loadTimeoutMs(spec);
    const cpuProfile = ctx.profileDir ? { dir: ctx.profileDir, name: `${id}-restart-smarthost` } : undefined;
    const restarted = await SmarthostProcess.start({ dir, upstreamPort: ctx.sink.port, ...(cpuProfile ? { cpuProfile } : {}) });
    try {
      const firstAt = await ctx.sink.waitForCount(base + 1, timeout);
      const drainedAt = await ctx.sink.waitForCount(base + onDisk, timeout);
      const usage = restarted.usage();
      const t0 = restarted.spawnedAt;
      row('queued at restart', String(onDisk));
      row('fill: accepted msg/s (upstream down)', num(filled.acknowledged / ((filled.finishedAt - filled.startedAt) / 1000)));
      row('start → first SMTP greeting s', num((restarted.listeningAt - t0) / 1000, 2));
      row('start → first delivery at sink s', num((firstAt - t0) / 1000, 2));
      row('start → queue drained at sink s', num((drainedAt - t0) / 1000, 2));
      row('drain msg/s (first → last delivery)', num(onDisk > 1 ? (onDisk - 1) / ((drainedAt - firstAt) / 1000) : undefined));
      row('peak RSS MB (since start)', mb(usage.peakMemBytes));
      row('CPU s (since start)', num(usage.cpuSeconds, 2));
    } finally {
      await restarted.stop();
    }
    // After the stop, so deliveries whose files were being removed as the sink counted them have finished.
    const left = (await readdir(join(dir, 'spool', 'queue'))).filter((f) => f.endsWith('.msg')).length;
    if (left > 0) notes.push(`${left} message(s) still queued after the drain and stop`);
  } catch (err) {
    notes.push((err as Error).message);
  } finally {
    if (!ctx.keep) await rm(dir, { recursive: true, force: true });
  }
  return formatTable(`(${id}) ${s.title}: ${queued} messages of 4 KiB queued, then restart`, ['smarthost'], rows, notes);
}

// ---------------------------------------------------------------------------------------------------------

function options() {
  const { values } = parseArgs({
    options: {
      scenario: { type: 'string', multiple: true, short: 's' },
      all: { type: 'boolean', default: false },
      scale: { type: 'string', default: '1' },
      sink: { type: 'string', default: 'smtp-sink' },
      'no-postfix': { type: 'boolean', default: false },
      'cpu-prof': { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      floor: { type: 'boolean', default: false },
      generator: { type: 'string', multiple: true, short: 'g' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(
      'usage: npm run bench -- [--scenario a|b|c|d|e]... [--all] [--scale F] [--sink smtp-sink|node] [--generator node|smtp-source] [--no-postfix] [--floor] [--cpu-prof] [--keep]\n' +
        Object.entries(SCENARIOS)
          .map(([id, s]) => `  ${id}  ${s.title}`)
          .join('\n'),
    );
    process.exit(0);
  }
  const ids = values.all ? Object.keys(SCENARIOS) : (values.scenario ?? ['a']).flatMap((s) => s.split(','));
  for (const id of ids) if (!(id in SCENARIOS)) throw new Error(`unknown scenario "${id}"; choose from ${Object.keys(SCENARIOS).join(', ')}`);
  const scale = Number(values.scale);
  if (!(scale > 0 && scale <= 10)) throw new Error('--scale must be a number in (0, 10]');
  if (values.sink !== 'smtp-sink' && values.sink !== 'node') throw new Error('--sink must be smtp-sink or node');
  const generators = values.generator?.flatMap((g) => g.split(','));
  for (const g of generators ?? []) if (g !== 'node' && g !== 'smtp-source') throw new Error(`unknown generator "${g}"; choose node or smtp-source`);
  return { ids, scale, sink: values.sink as SinkKind, postfix: !values['no-postfix'], cpuProf: values['cpu-prof'], keep: values.keep, floor: values.floor, generators: generators as Generator[] | undefined };
}

async function main(): Promise<void> {
  const o = options();
  installCleanup();
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  // Under the repository (gitignored .bench/), on the same filesystem for smarthost's spool and Postfix's queue.
  const runDir = join(ROOT, '.bench', `run-${stamp}`);
  await mkdir(runDir, { recursive: true });
  chmodSync(runDir, 0o755); // Postfix's daemons run as user postfix and must reach their queue below here.
  // Registered first, so it runs last: after any Postfix instance is stopped, even on Ctrl-C.
  if (!o.keep) onExit(() => rmSync(runDir, { recursive: true, force: true }));
  const profileDir = o.cpuProf ? join(ROOT, '.bench', `profiles-${stamp}`) : undefined;
  if (profileDir) await mkdir(profileDir, { recursive: true });
  const sink = await Sink.start(o.sink);
  const ctx: Context = {
    runDir,
    sink,
    scale: o.scale,
    postfix: o.postfix ? ensurePostfix() : { ok: false, reason: 'disabled with --no-postfix' },
    smtpSource: findProgram('smtp-source'),
    profileDir,
    keep: o.keep,
    generators: o.generators,
    floor: o.floor,
  };
  const postfixVersion = ctx.postfix.ok ? runSync(findProgram('postconf')!, ['-dh', 'mail_version'], 10_000).trim() : 'n/a';
  console.log(
    `smarthost bench ${new Date().toISOString()}: node ${process.version}, postfix ${postfixVersion}, ${cpus().length} CPU(s) ${cpus()[0]?.model ?? ''}\n` +
      `sink: ${sink.kind} on 127.0.0.1:${sink.port}; scale ${o.scale}; load average at start ${loadavg().map((l) => l.toFixed(2)).join(' ')}\n` +
      `work directory: ${runDir}${o.keep ? ' (kept)' : ''}\n`,
  );
  try {
    for (const id of o.ids) {
      const s = SCENARIOS[id]!;
      const table = s.kind === 'load' ? await runLoadScenario(id, s, ctx) : await runRestartScenario(id, s, ctx);
      console.log(`${table}\n`);
    }
  } finally {
    await sink.stop();
    if (!o.keep) await rm(runDir, { recursive: true, force: true });
  }
  console.log(`load average at end: ${loadavg().map((l) => l.toFixed(2)).join(' ')} (1, 5, 15 min; a busy machine lowers every figure)`);
  if (profileDir) {
    for (const file of (await readdir(profileDir)).filter((f) => f.endsWith('.cpuprofile')).sort()) {
      const path = join(profileDir, file);
      console.log(`\n${formatProfile(path, summarizeProfile(path))}`);
    }
  }
}

main().catch((err: unknown) => {
  console.error(`bench: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
});
