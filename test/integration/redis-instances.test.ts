/**
 * Several instances sharing state through one real redis-server (started by the test on loopback): two built
 * daemons never pass a send limit together, a down mark one of them sets is seen by the other, `limits show`
 * reads the shared counters and `limits reset` clears them for both. And one daemon whose Redis is away keeps
 * accepting mail, holds limited deliveries back, and sends them once Redis is there.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import nodemailer from 'nodemailer';
import { stringify } from 'yaml';
import { httpGet, httpRequest, parseMetrics, series } from '../helpers/admin.js';
import { CLI, spawnDaemon, tempDir, testConfig, type ChildDaemon } from '../helpers/daemon.js';
import { freePort } from '../helpers/net.js';
import { run } from '../helpers/packaging.js';
import { REDIS_MISSING, startRedis } from '../helpers/redis.js';
import { startSink } from '../helpers/sink.js';

const skip = REDIS_MISSING;

interface Config {
  listeners: { port: number }[];
  admin: { port: number; [key: string]: unknown };
  [key: string]: unknown;
}

async function sendAll(port: number, count: number, to: (i: number) => string, tag: string): Promise<string[]> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, pool: true, maxConnections: 2 });
  try {
    return await Promise.all(
      Array.from({ length: count }, async (_, i) => {
        const info = await client.sendMail({ envelope: { from: 'erp@origin.test', to: [to(i)] }, raw: `From: erp@origin.test\r\nTo: ${to(i)}\r\nSubject: ${tag} ${i}\r\n\r\nbody\r\n` });
        return /queued as ([0-9A-Z]{22})$/.exec(info.response)![1]!;
      }),
    );
  } finally {
    client.close();
  }
}

/** Waits (polling) until check() is true; what it waits for is named in the failure. */
async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function events(daemon: ChildDaemon, event: string): Record<string, unknown>[] {
  return daemon
    .stdout()
    .split('\n')
    .filter((l) => l.includes(`"event":"${event}"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function api<T>(config: Config, method: string, path: string, body?: unknown): Promise<T> {
  const r = await httpRequest(config.admin.port, method, path, body);
  assert.equal(r.status, 200, r.body);
  return JSON.parse(r.body) as T;
}

function stop(daemon: ChildDaemon): Promise<unknown> {
  if (daemon.proc.exitCode === null && daemon.proc.signalCode === null) daemon.proc.kill('SIGTERM');
  return daemon.exited;
}

test('two instances on one Redis: 40 messages against 10 per hour give the sink exactly 10, the rest wait; down marks and resets are shared', { skip, timeout: 240_000 }, async (t) => {
  const redis = await startRedis();
  t.after(() => redis.stop());
  const sink = await startSink();
  t.after(() => sink.close());
  const deadPort = await freePort(); // nothing listens there: connections are refused
  const keyPrefix = `two-${process.pid}:`;
  const dirs = [await tempDir(), await tempDir()];
  t.after(() => Promise.all(dirs.map((d) => d.remove())));
  const configs: Config[] = [];
  for (const dir of dirs) {
    const config = (await testConfig({
      dir: dir.path,
      upstreams: {
        limited: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none', limits: { messagesPerHour: 10, perMailbox: true, mode: 'sliding' } },
        dead: { type: 'smtp', host: '127.0.0.1', port: deadPort, security: 'none', timeout: '5s' },
        spare: { type: 'outbox', dir: join(dir.path, 'outbox') },
      },
      defaultUpstream: 'limited',
    })) as Config;
    config.routing = { default: 'limited', routes: [{ name: 'probe', match: { recipient: '@dead.test' }, upstream: 'dead', fallbacks: ['spare'] }] };
    config.admin = { ...config.admin, upstreamDownAfter: 1 };
    config.state = { dir: join(dir.path, 'state'), redis: { url: redis.url, keyPrefix } };
    configs.push(config);
  }
  const [a, b] = await Promise.all(configs.map((c, i) => spawnDaemon(c, dirs[i]!.path)));
  t.after(() => Promise.all([stop(a!), stop(b!)]));
  const daemons = [a!, b!];
  await Promise.all(daemons.map((d) => d.waitForOutput(/"event":"admin.listening"/)));

  // 20 messages into each instance at once; every one is either sent or held back by the shared limit.
  const ids = (await Promise.all(configs.map((c, i) => sendAll(c.listeners[0]!.port, 20, (n) => `rcpt${i}-${n}@dest.test`, `instance ${i}`)))).flat();
  assert.equal(new Set(ids).size, 40);
  const deferred = () => new Set(daemons.flatMap((d) => events(d, 'limit.deferred').map((e) => e.queueId as string)));
  await until(() => sink.messages.length + deferred().size >= 40, 'a decision for each of the 40 messages');
  assert.equal(sink.messages.length, 10, 'exactly the shared budget reached the sink');
  assert.equal(deferred().size, 30);
  assert.ok(sink.messages.every((m) => m.sender === 'erp@origin.test'), 'no bounce among them');
  const queues = await Promise.all(configs.map((c) => api<{ messages: { id: string; state: string }[] }>(c, 'GET', '/api/queue')));
  const queued = queues.flatMap((q) => q.messages);
  assert.equal(queued.length, 30, 'the other 30 stay queued, in the instances that took them');
  assert.ok(queued.every((m) => m.state === 'queued'), 'waiting for the window: no failed attempt, nothing bounced');
  const detail = await api<{ recipientStates: { status: string; attempts: number; nextAttemptAt: string }[] }>(configs[0]!, 'GET', `/api/queue/${queues[0]!.messages[0]!.id}`);
  assert.equal(detail.recipientStates[0]!.status, 'pending');
  assert.ok(Date.parse(detail.recipientStates[0]!.nextAttemptAt) > Date.now() + 30 * 60_000, 'scheduled for when the hour window frees');
  const metrics = parseMetrics((await httpGet(configs[0]!.admin.port, '/metrics')).body);
  assert.equal(metrics.get(series('smarthost_state_backend_up')), 1);
  assert.ok(metrics.get(series('smarthost_send_limit_deferrals_total', { upstream: 'limited', reason: 'limit' }))! >= 1);

  // limits show reads the shared counter from Redis (the CLI gets instance a's config).
  const configFile = join(dirs[0]!.path, 'cli.yaml');
  await writeFile(configFile, stringify(configs[0]));
  const cli = (...args: string[]) => run(process.execPath, [CLI, '--config', configFile, ...args], { timeoutMs: 20_000 });
  let r = await cli('limits', 'show');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^redis:\/\/127\.0\.0\.1:\d+\/0 \(keys two-\d+:limit:\*\)$/m);
  assert.match(r.stdout, /^limited\/erp@origin\.test\s+messages\/hour\s+10\/10\s+\S+Z$/m);

  // A down mark set by instance a is seen by instance b.
  await sendAll(configs[0]!.listeners[0]!.port, 1, () => 'someone@dead.test', 'probe');
  await a!.waitForOutput(/"event":"upstream.down","upstream":"dead"/);
  await until(async () => {
    const status = await api<{ upstreams: { name: string; up: boolean }[] }>(configs[1]!, 'GET', '/api/status');
    return status.upstreams.find((u) => u.name === 'dead')?.up === false;
  }, 'instance b to see upstream dead down');
  assert.ok(events(b!, 'upstream.down').some((e) => e.upstream === 'dead' && e.shared === true), 'b took the mark over from Redis');
  assert.equal(events(b!, 'delivery').filter((e) => e.upstream === 'dead').length, 0, 'b never tried dead itself');

  // A reset through instance a clears the budget for both: b's queue gets exactly 10 more through.
  r = await cli('limits', 'reset', 'limited');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /send limits reset for limited \(1 counter cleared\)/);
  r = await cli('limits', 'show', '--json');
  assert.deepEqual((JSON.parse(r.stdout) as { limits: unknown[] }).limits, []);
  const waitingAtB = queues[1]!.messages.length;
  const deferredAtB = events(b!, 'limit.deferred').length;
  await api(configs[1]!, 'POST', '/api/queue/retry', { all: true });
  await until(() => sink.messages.length >= 20 && events(b!, 'limit.deferred').length - deferredAtB >= waitingAtB - 10, "b's retried messages each sent or held back again");
  assert.equal(sink.messages.length, 20, 'ten more, no more');
});

test('Redis away: mail is accepted, limited deliveries wait (not bounced), /readyz stays ready and says so; once Redis is there they go', { skip, timeout: 120_000 }, async (t) => {
  const redisPort = await freePort();
  const sink = await startSink();
  t.after(() => sink.close());
  const dir = await tempDir();
  t.after(() => dir.remove());
  const config = (await testConfig({
    dir: dir.path,
    upstreams: { limited: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none', limits: { messagesPerHour: 10 } } },
  })) as Config;
  config.state = { dir: join(dir.path, 'state'), redis: { url: `redis://127.0.0.1:${redisPort}/0`, keyPrefix: 'away:' } };
  const daemon = await spawnDaemon(config, dir.path);
  t.after(() => stop(daemon));
  await daemon.waitForOutput(/"event":"admin.listening"/);

  const [id] = await sendAll(config.listeners[0]!.port, 1, () => 'someone@dest.test', 'while away');
  await daemon.waitForOutput(new RegExp(`"event":"limit.unavailable"[^\\n]*"queueId":"${id}"`));
  assert.equal(sink.messages.length, 0, 'not sent without its limit checked');
  const queue = await api<{ messages: { id: string; state: string }[] }>(config, 'GET', '/api/queue');
  assert.deepEqual(queue.messages.map((m) => [m.id, m.state]), [[id, 'queued']], 'still queued, no attempt counted');
  const ready = await httpGet(config.admin.port, '/readyz');
  assert.equal(ready.status, 200, `keeps accepting mail: ${ready.body}`);
  assert.match(ready.body, /redis unreachable/);
  let metrics = parseMetrics((await httpGet(config.admin.port, '/metrics')).body);
  assert.equal(metrics.get(series('smarthost_state_backend_up')), 0);
  const configFile = join(dir.path, 'cli.yaml');
  await writeFile(configFile, stringify(config));
  const show = await run(process.execPath, [CLI, '--config', configFile, 'limits', 'show'], { timeoutMs: 20_000 });
  assert.equal(show.code, 1);
  assert.match(show.stderr, /cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+\/0/);
  assert.equal(metrics.get(series('smarthost_send_limit_deferrals_total', { upstream: 'limited', reason: 'state_unavailable' })), 1);

  const redis = await startRedis(redisPort);
  t.after(() => redis.stop());
  await daemon.waitForOutput(/"event":"state.connected"/);
  await api(config, 'POST', '/api/queue/retry', { all: true });
  await sink.waitForMessages(1);
  metrics = parseMetrics((await httpGet(config.admin.port, '/metrics')).body);
  assert.equal(metrics.get(series('smarthost_state_backend_up')), 1);
});
