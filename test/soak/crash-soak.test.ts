/**
 * Crash soak: several clients send without pause to the built daemon while it is SIGKILLed at random moments
 * and restarted on the same spool and port. At the end every message that got a 250 has reached the sink,
 * and every duplicate is one a crash explains.
 *
 *   SOAK_MESSAGES (150)  SOAK_KILLS (3)  SOAK_CLIENTS (4)  SOAK_SEED (random; printed, replays the kill plan)
 *   e.g. SOAK_KILLS=20 SOAK_MESSAGES=5000 node --test dist/test/soak/crash-soak.test.js   (or: npm run soak)
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import { test } from 'node:test';
import nodemailer from 'nodemailer';
import { spawnDaemon, tempDir, testConfig, type ChildDaemon } from '../helpers/daemon.js';
import { startSink, type Sink, type SinkMessage } from '../helpers/sink.js';

const MESSAGES = envInt('SOAK_MESSAGES', 150, 1, 1_000_000);
const KILLS = envInt('SOAK_KILLS', 3, 0, 1000);
const CLIENTS = envInt('SOAK_CLIENTS', 4, 1, 16);
const SEED = envInt('SOAK_SEED', randomInt(2 ** 31), 0, 2 ** 32 - 1);
/** Attempts per message before a client gives up on it (each kill costs a client at most one). */
const MAX_ATTEMPTS = KILLS + 20;
/** A kill waiting for its event fires anyway after this many more acknowledgements. */
const FALLBACK_ACKS = CLIENTS + 2;
const DRAIN_TIMEOUT_MS = 30_000 + MESSAGES * 20;

type KillOn = 'ack' | 'sink' | 'received';

function envInt(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be an integer ${min}-${max}, got ${raw}`);
  return n;
}

/** mulberry32: small, seedable, good enough to place kills. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Kill {
  /** Armed once this many messages are acknowledged. */
  afterAcks: number;
  /** Then fires at the next event of this kind: a client's 250, a message arriving at the sink, a "received" log line. */
  on: KillOn;
}

/** Kills spread over the run, one per segment of the message count, each at a random point and on a random event. */
function killPlan(random: () => number): Kill[] {
  const segment = MESSAGES / (KILLS + 1);
  const kinds: KillOn[] = ['ack', 'sink', 'received'];
  const plan: Kill[] = [];
  let previous = 0;
  for (let i = 0; i < KILLS; i++) {
    const at = Math.floor(segment * (i + 1) + (random() - 0.5) * segment * 0.8);
    previous = Math.min(Math.max(at, previous + 1, 1), Math.max(MESSAGES - 1, 1));
    plan.push({ afterAcks: previous, on: kinds[Math.floor(random() * kinds.length)]! });
  }
  return plan;
}

/**
 * A free port below the kernel's ephemeral range. The daemon binds the same port after every kill; a port
 * from the ephemeral range could meanwhile become the local port of some other test's outgoing connection.
 */
async function portOutsideEphemeralRange(random: () => number): Promise<number> {
  const range = await readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').catch(() => '32768 60999');
  const low = Number(range.trim().split(/\s+/)[0]) || 32768;
  const [from, to] = low > 20_000 ? [10_000, low - 1] : [61_000, 65_000];
  for (let tries = 0; tries < 50; tries++) {
    const port = from + Math.floor(random() * (to - from));
    const free = await new Promise<boolean>((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error(`no free port in ${from}-${to}`);
}

/** One life of the daemon, from spawn to SIGKILL (or the final SIGTERM). */
interface Run {
  child: ChildDaemon;
  /** Taken before the spawn: nothing this run sends can arrive earlier. */
  spawnedAt: number;
  killedAt?: number;
  /** Queue IDs this run logged queue.removed for. */
  removed: Set<string>;
  /** Queue IDs this run logged "received" for (it sent their 250). */
  received: Set<string>;
}

function rawMessage(messageId: string, client: number, size: number): string {
  const line = 'The quick brown fox jumps over the lazy dog. 0123456789\r\n';
  return `From: app${client}@origin.test\r\nTo: user${client}@dest.test\r\nSubject: soak ${messageId}\r\nMessage-ID: ${messageId}\r\n\r\n${line.repeat(Math.ceil(size / line.length))}`;
}

/** The queue ID in our own Received field: the first one, on top. */
function queueIdOf(m: SinkMessage): string | undefined {
  const text = m.raw.toString('latin1');
  const head = text.slice(0, text.indexOf('\r\n\r\n')).replace(/\r\n[ \t]+/g, ' ');
  return /^Received: .*? by smarthost\.test \(smarthost\) with \S+ id ([0-9A-Z]{22})\b/m.exec(head)?.[1];
}

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

test(`crash soak: ${CLIENTS} clients, ${MESSAGES} messages, ${KILLS} SIGKILLs; every acknowledged message arrives, duplicates only where a crash explains them`, { timeout: 120_000 + MESSAGES * 100 }, async (t) => {
  const started = Date.now();
  const random = prng(SEED);
  const plan = killPlan(random);
  t.diagnostic(`seed ${SEED} (replay the kill plan and message sizes: SOAK_SEED=${SEED} SOAK_MESSAGES=${MESSAGES} SOAK_KILLS=${KILLS} SOAK_CLIENTS=${CLIENTS})`);

  const dir = await tempDir('smarthost-soak-');
  t.after(() => dir.remove());
  const sink: Sink = await startSink();
  t.after(() => sink.close());
  const port = await portOutsideEphemeralRange(Math.random);
  const config = await testConfig({
    dir: dir.path,
    listeners: [{ name: 'relay', role: 'relay', host: '127.0.0.1', port, networks: ['127.0.0.1/32'] }],
    upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none', timeout: '10s' } },
    retry: { initialDelay: '200ms', maxDelay: '1s' },
  });

  const runs: Run[] = [];
  const acked = new Map<string, string>(); // Message-ID -> queue ID from its 250
  const failedAttempts = new Map<string, number>(); // Message-ID -> attempts that got no 250
  const gaveUp: string[] = [];
  const killLog: string[] = [];
  let nextKill = 0;
  let crashing: Promise<void> | undefined;
  let up = deferred();
  up.resolve();
  let onRemoved: (() => void) | undefined;

  async function start(): Promise<Run> {
    const spawnedAt = Date.now();
    const child = await spawnDaemon(config, dir.path);
    const run: Run = { child, spawnedAt, removed: new Set(), received: new Set() };
    runs.push(run);
    let buffer = '';
    const feed = (text: string) => {
      buffer += text;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) !== -1) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (!line.startsWith('{')) continue;
        const l = JSON.parse(line) as Record<string, unknown>;
        if (l.event === 'queue.removed') run.removed.add(String(l.queueId)), onRemoved?.();
        if (l.event === 'received') run.received.add(String(l.queueId)), maybeKill('received');
      }
    };
    // Everything logged so far, then every later chunk: no event-loop turn in between, so nothing is missed.
    feed(child.stdout());
    child.proc.stdout!.on('data', (c: Buffer) => feed(c.toString('utf8')));
    return run;
  }

  /** SIGKILLs the current daemon right now (synchronously) and restarts it on the same config and spool. */
  function crash(reason: string): Promise<void> {
    const run = runs[runs.length - 1]!;
    up = deferred();
    run.killedAt = Date.now();
    run.child.proc.kill('SIGKILL');
    killLog.push(reason);
    crashing = (async () => {
      const exit = await run.child.exited;
      assert.equal(exit.signal, 'SIGKILL', `run ${runs.length} ended by itself: ${run.child.stderr()}`);
      await finished(run.child.proc.stdout!).catch(() => undefined);
      await start();
      crashing = undefined;
      up.resolve();
    })();
    crashing.catch((err: unknown) => up.reject(err));
    return crashing;
  }

  function maybeKill(event: KillOn): void {
    const kill = plan[nextKill];
    if (crashing || !kill || acked.size < kill.afterAcks) return;
    if (event !== kill.on && acked.size < kill.afterAcks + FALLBACK_ACKS) return;
    nextKill += 1;
    void crash(`${kill.on === event ? event : `${event} (fallback for ${kill.on})`} after ${acked.size} acks`);
  }

  await start();
  t.after(async () => {
    await crashing?.catch(() => undefined); // a restart under way would otherwise leave its daemon behind
    const last = runs[runs.length - 1];
    if (last && last.child.proc.exitCode === null && last.child.proc.signalCode === null) last.child.proc.kill('SIGKILL');
    await last?.child.exited;
  });

  // Arrivals at the sink can trigger a kill: the upstream has the message, the daemon may not have its 250 yet.
  let sending = true;
  const watchSink = (async () => {
    let seen = 0;
    const deadline = Date.now() + DRAIN_TIMEOUT_MS + MESSAGES * 100;
    while (sending && Date.now() < deadline) {
      await sink.waitForMessages(seen + 1, 1000).catch(() => undefined);
      if (sink.messages.length > seen) (seen = sink.messages.length), maybeKill('sink');
    }
  })();

  const sizes = Array.from({ length: MESSAGES }, () => 200 + Math.floor(random() * 8000));
  const attempted = new Set<string>();
  async function client(c: number): Promise<void> {
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port,
      secure: false,
      ignoreTLS: true,
      connectionTimeout: 10_000,
      greetingTimeout: 10_000,
      socketTimeout: 30_000,
    });
    try {
      for (let n = c; n < MESSAGES; n += CLIENTS) {
        const id = `<soak-${SEED}-${n}@origin.test>`;
        const raw = rawMessage(id, c, sizes[n]!);
        let done = false;
        for (let attempt = 1; !done && attempt <= MAX_ATTEMPTS; attempt++) {
          await up.promise; // while the daemon is down, wait for its restart
          attempted.add(id);
          try {
            const info = await transport.sendMail({ envelope: { from: `app${c}@origin.test`, to: [`user${c}@dest.test`] }, raw });
            const queueId = /^250 .*queued as ([0-9A-Z]{22})$/.exec(info.response)?.[1];
            if (queueId) {
              acked.set(id, queueId);
              done = true;
              maybeKill('ack');
              continue;
            }
          } catch {
            // connection refused or cut by a kill: retry the same message once the daemon is back
          }
          failedAttempts.set(id, (failedAttempts.get(id) ?? 0) + 1);
        }
        if (!done) gaveUp.push(id);
      }
    } finally {
      transport.close();
    }
  }
  await Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(c)));
  sending = false;
  await watchSink;

  // Kills whose moment never came (the clients were done first) happen now, while the queue drains.
  while (nextKill < plan.length) {
    await crashing;
    nextKill += 1;
    await crash(`drain, after all ${acked.size} acks`);
  }
  await crashing;
  // The final restart: killed while deliveries are likely still in flight.
  await crash('final');
  const final = runs[runs.length - 1]!;

  // Drain: every acknowledged queue ID arrives, then the queue empties.
  const drainDeadline = Date.now() + DRAIN_TIMEOUT_MS;
  const arrivedQueueIds = new Set<string>();
  let scanned = 0;
  const missing = () => {
    for (; scanned < sink.messages.length; scanned++) {
      const q = queueIdOf(sink.messages[scanned]!);
      if (q) arrivedQueueIds.add(q);
    }
    return [...acked].filter(([, q]) => !arrivedQueueIds.has(q));
  };
  while (missing().length > 0 && Date.now() < drainDeadline) {
    await sink.waitForMessages(sink.messages.length + 1, drainDeadline - Date.now()).catch(() => undefined);
  }
  const queueDir = join(dir.path, 'spool', 'queue');
  // Re-read the queue after each queue.removed line; the waiter is set before the read, so none is missed.
  let queued: string[] = [];
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const removed = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, Math.max(0, drainDeadline - Date.now()));
      onRemoved = resolve;
    });
    queued = await readdir(queueDir);
    if (queued.length > 0 && Date.now() < drainDeadline) await removed;
    clearTimeout(timer);
    onRemoved = undefined;
    if (queued.length === 0 || Date.now() >= drainDeadline) break;
  }
  final.child.proc.kill('SIGTERM');
  const exit = await final.child.exited;

  // Analysis.
  const copies = new Map<string, { queueId: string | undefined; at: number }[]>();
  for (const m of sink.messages) {
    const id = m.messageId ?? '(none)';
    copies.set(id, [...(copies.get(id) ?? []), { queueId: queueIdOf(m), at: m.receivedAt }]);
  }
  const lost = [...acked].filter(([, q]) => !arrivedQueueIds.has(q)).map(([id, q]) => `${id} (${q})`);
  const strangers = [...copies.keys()].filter((id) => !attempted.has(id));
  const noQueueId = sink.messages.filter((m) => !queueIdOf(m)).length;
  const killed = runs.filter((r) => r.killedAt !== undefined);
  const restarts = runs.slice(1).map((next, i) => ({ at: next.spawnedAt, killed: runs[i]! }));
  const inFlight: string[] = [];
  const lostReply: string[] = [];
  const unexplained: string[] = [];
  for (const [id, list] of copies) {
    if (list.length < 2) continue;
    const byQueueId = new Map<string, number[]>();
    for (const c of list) byQueueId.set(c.queueId ?? '?', [...(byQueueId.get(c.queueId ?? '?') ?? []), c.at]);
    // Same queue ID twice: only across a crash, and only if no run that ended before the second copy had
    // logged queue.removed for it (a finished message must never come back). "Across a crash" means a restart
    // lies between the copies: bytes a run wrote before its SIGKILL still reach the sink after the kill, but
    // between a kill and the next spawn no daemon runs, so a copy that arrived before a restart came from a
    // run killed before it, and a copy after it from a later run.
    for (const [queueId, times] of byQueueId) {
      for (let i = 1; i < times.length; i++) {
        const [a, b] = [times[i - 1]!, times[i]!];
        const restartBetween = restarts.some((r) => a <= r.at && r.at <= b);
        const removedBefore = restarts.some((r) => r.at <= b && r.killed.removed.has(queueId));
        if (restartBetween && !removedBefore) inFlight.push(`${id} (${queueId})`);
        else unexplained.push(`${id}: queue ID ${queueId} delivered again ${restartBetween ? 'after a run had logged queue.removed for it' : 'with no restart in between'}`);
      }
    }
    // Different queue IDs: the client sent it again because a kill took its 250. Only the acknowledged one
    // may have been answered to the client, every other one was accepted by a run that was then killed,
    // and there are no more of them than the client's failed attempts.
    const extra = [...byQueueId.keys()].filter((q) => q !== acked.get(id));
    const fromKilledRuns = extra.every((q) => runs.every((r) => !r.received.has(q) || r.killedAt !== undefined));
    if (extra.length > 0) {
      if (fromKilledRuns && extra.length <= (failedAttempts.get(id) ?? 0)) lostReply.push(`${id} (${extra.join(', ')})`);
      else unexplained.push(`${id}: queue IDs ${[...byQueueId.keys()].join(', ')}, acknowledged ${acked.get(id) ?? 'none'}, failed attempts ${failedAttempts.get(id) ?? 0}`);
    }
  }
  const duplicates = sink.messages.length - copies.size;
  const corrupt = await readdir(join(dir.path, 'spool', 'corrupt'));
  const retried = [...failedAttempts.values()].reduce((a, b) => a + b, 0);

  t.diagnostic(`kills survived ${killed.length} (${KILLS} planned + 1 final): ${killLog.join('; ')}`);
  t.diagnostic(
    `acknowledged ${acked.size} of ${MESSAGES}, delivered ${copies.size} distinct (${sink.messages.length} copies), lost ${lost.length}, ` +
      `duplicates ${duplicates} (in flight at a kill ${inFlight.length}, client resent after a lost 250 ${lostReply.length}, unexplained ${unexplained.length}), ` +
      `failed client attempts ${retried}, gave up ${gaveUp.length}, duration ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  if (inFlight.length) t.diagnostic(`duplicates in flight at a kill: ${inFlight.join(', ')}`);
  if (lostReply.length) t.diagnostic(`duplicates resent after a lost 250: ${lostReply.join(', ')}`);
  if (unexplained.length) t.diagnostic(`duplicates no crash explains: ${unexplained.join('; ')}`);

  assert.deepEqual(lost, [], 'acknowledged messages that never arrived');
  assert.deepEqual(unexplained, [], 'duplicates no crash explains');
  assert.deepEqual(strangers, [], 'messages that arrived but were never sent');
  assert.equal(noQueueId, 0, 'every delivered copy carries our Received field with its queue ID');
  assert.deepEqual(gaveUp, [], 'messages a client could not get acknowledged');
  assert.equal(acked.size, MESSAGES);
  assert.deepEqual(queued, [], 'the queue drained');
  assert.deepEqual(corrupt, [], 'no queue record was damaged by a crash');
  assert.deepEqual(exit, { code: 0, signal: null }, `final stop; stderr: ${final.child.stderr()}`);
  assert.equal(killed.length, KILLS + 1);
});
