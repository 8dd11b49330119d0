/**
 * systemd/smarthost.service: what it promises (checked on the file), what systemd thinks of it
 * (`systemd-analyze verify`, and the `systemd-analyze security` exposure score, 2.0 or lower), and whether
 * smarthost runs under its main restrictions. No systemd runs as PID 1 here, so that last part emulates
 * them with unshare and setpriv (root only): an unprivileged user holding nothing but the ambient
 * CAP_NET_BIND_SERVICE, no-new-privileges, a read-only root with only the state directory writable, no
 * home directories, and a /proc that shows only the service's own processes. It must bind privileged
 * ports on loopback and relay a message. (The system call filter is not emulated.)
 */
import assert from 'node:assert/strict';
import { chmod, chown, mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { CLI, tempDir } from '../helpers/daemon.js';
import { PROJECT, proveItRelays, run } from '../helpers/packaging.js';

const UNIT_FILE = join(PROJECT, 'systemd', 'smarthost.service');
const unitText = await readFile(UNIT_FILE, 'utf8');

/** The unit as section -> key -> values (a key may repeat). */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = new Map();
      sections.set(section[1]!, current);
      continue;
    }
    const [, key, value] = /^([A-Za-z]+)=(.*)$/.exec(line) ?? [];
    assert.ok(current && key !== undefined, `cannot read unit line: ${line}`);
    current.set(key, [...(current.get(key) ?? []), value!]);
  }
  return sections;
}

const unit = parseUnit(unitText);
const service = unit.get('Service')!;
const one = (key: string) => {
  const values = service.get(key);
  assert.equal(values?.length, 1, `[Service] sets ${key} once`);
  return values![0]!;
};

function seconds(value: string): number {
  const m = /^(\d+)(ms|s|min|m)?$/.exec(value);
  assert.ok(m, `a systemd time span: ${value}`);
  return Number(m[1]) * ({ ms: 0.001, s: 1, min: 60, m: 60 } as Record<string, number>)[m[2] ?? 's']!;
}

test('the unit runs `smarthost start` with the config from its ConfigurationDirectory, as a non-root user with one capability', () => {
  assert.match(one('ExecStart'), /^(\/\S+\/)?smarthost start --config \/etc\/smarthost\/smarthost\.yaml$/);
  assert.equal(one('ExecReload'), 'kill -HUP $MAINPID', 'systemctl reload sends the SIGHUP the daemon reloads on');
  assert.equal(one('ConfigurationDirectory'), 'smarthost');
  assert.equal(one('StateDirectory'), 'smarthost');
  assert.equal(one('WorkingDirectory'), '/var/lib/smarthost');
  const user = service.get('User')?.[0];
  const dynamic = service.get('DynamicUser')?.[0];
  assert.ok(dynamic === 'yes' || (user !== undefined && !['root', '0'].includes(user)), 'an unprivileged user');
  assert.equal(one('AmbientCapabilities'), 'CAP_NET_BIND_SERVICE');
  assert.equal(one('CapabilityBoundingSet'), 'CAP_NET_BIND_SERVICE');
  assert.equal(one('NoNewPrivileges'), 'yes');
  assert.equal(service.get('PrivateUsers'), undefined, 'PrivateUsers would void CAP_NET_BIND_SERVICE on the host network');
  assert.equal(service.get('MemoryDenyWriteExecute'), undefined, "MemoryDenyWriteExecute breaks V8's JIT");
  assert.deepEqual(one('RestrictAddressFamilies').split(/\s+/).sort(), ['AF_INET', 'AF_INET6', 'AF_UNIX']);
});

test('the unit restarts on failure and waits longer on stop than smarthost gives deliveries in flight', () => {
  assert.equal(one('Restart'), 'on-failure');
  assert.equal(one('KillSignal'), 'SIGTERM');
  const minimal = parseConfig(
    'spool: { dir: ./s }\nlisteners: [{ name: r, role: relay, port: 2525 }]\nupstreams: { o: { type: outbox, dir: ./o } }\nrouting: { default: o }\n',
  );
  const shutdown = minimal.delivery.shutdownTimeout / 1000;
  const stop = seconds(one('TimeoutStopSec'));
  assert.ok(stop > shutdown && stop <= shutdown * 2, `TimeoutStopSec ${stop}s a bit above delivery.shutdownTimeout ${shutdown}s`);
});

/** systemd-analyze, or why it cannot be used here. */
async function systemdAnalyze(): Promise<{ version: number } | { skip: string }> {
  const result = await run('systemd-analyze', ['--version']).catch((err: Error) => ({ code: null, stdout: '', stderr: err.message }));
  if (result.code !== 0) return { skip: `systemd-analyze is not installed (Debian package "systemd"; .ci/run installs it): ${result.stderr.trim()}` };
  return { version: Number(/^systemd (\d+)/.exec(result.stdout)?.[1] ?? 0) };
}

/**
 * A copy of the unit that systemd-analyze can check on a machine where smarthost is not installed: verify
 * insists that ExecStart's program exists, so only that program is replaced by a stub; every other line
 * is the file as shipped.
 */
async function checkableCopy(dir: string): Promise<string> {
  const stub = join(dir, 'smarthost');
  await writeFile(stub, '#!/bin/sh\nexit 0\n');
  await chmod(stub, 0o755);
  const text = unitText.replace(/^ExecStart=\S*smarthost /m, `ExecStart=${stub} `);
  assert.notEqual(text, unitText, 'ExecStart was found and replaced');
  const path = join(dir, 'smarthost.service');
  await writeFile(path, text);
  return path;
}

test('systemd-analyze verify accepts the unit', async (t) => {
  const analyze = await systemdAnalyze();
  if ('skip' in analyze) return t.skip(analyze.skip);
  const dir = await tempDir('smarthost-unit-');
  t.after(() => dir.remove());
  // A trivially valid unit first: if even that fails, verify cannot work in this container.
  const control = join(dir.path, 'control.service');
  await writeFile(control, '[Service]\nType=oneshot\nExecStart=/bin/true\n');
  const controlResult = await run('systemd-analyze', ['verify', control]);
  if (controlResult.code !== 0) return t.skip(`systemd-analyze verify does not work here: ${controlResult.stderr.trim()}`);

  const result = await run('systemd-analyze', ['verify', await checkableCopy(dir.path)]);
  const ours = result.stderr.split('\n').filter((l) => l.includes('smarthost'));
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(ours, [], 'no warning about the unit');
});

test('systemd-analyze security rates the unit 2.0 or lower', async (t) => {
  const analyze = await systemdAnalyze();
  if ('skip' in analyze) return t.skip(analyze.skip);
  if (analyze.version < 252) return t.skip(`systemd-analyze ${analyze.version} has no --offline mode (needs 252 or newer)`);
  const dir = await tempDir('smarthost-unit-');
  t.after(() => dir.remove());
  const result = await run('systemd-analyze', ['security', '--offline=true', '--no-pager', await checkableCopy(dir.path)]);
  assert.equal(result.code, 0, result.stderr);
  const score = /Overall exposure level for smarthost\.service: (\d+\.\d+) (\S+)/.exec(result.stdout);
  assert.ok(score, `a score in:\n${result.stdout}`);
  t.diagnostic(`systemd-analyze security --offline=true (systemd ${analyze.version}): ${score[1]} ${score[2]}`);
  const open = result.stdout.split('\n').filter((l) => l.startsWith('✗')).map((l) => l.replace(/\s{2,}/g, ' | ').trim());
  t.diagnostic(`remaining exposure: ${open.join('; ')}`);
  assert.ok(Number(score[1]) <= 2.0, `exposure ${score[1]} is above 2.0`);
});

/** A free TCP port below 1024 on 127.0.0.1 (this process is root, so it may try). */
async function freePrivilegedPort(taken: number[]): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 600 + Math.floor(Math.random() * 400);
    if (taken.includes(port)) continue;
    const free = await new Promise<boolean>((resolve) => {
      const server = createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port below 1024 on 127.0.0.1');
}

test("smarthost binds privileged ports and relays inside an emulation of the unit's sandbox", async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root to build the sandbox (unshare, mount, setpriv)');
  const probe = await run('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', 'mount -t proc -o subset=pid,hidepid=invisible proc /proc && command -v setpriv'])
    .catch((err: Error) => ({ code: null, stdout: '', stderr: err.message }));
  if (probe.code !== 0) return t.skip(`cannot build mount namespaces with a restricted /proc here: ${probe.stderr.trim()}`);
  assert.equal(one('ProtectSystem'), 'strict');
  assert.equal(one('ProtectHome'), 'yes');
  assert.equal(one('ProtectProc'), 'invisible');
  assert.equal(one('ProcSubset'), 'pid');

  const scratch = await tempDir('smarthost-sandbox-');
  t.after(() => scratch.remove());
  await chmod(scratch.path, 0o755);
  // The state directory as systemd makes it: owned by the service user, mounted at /var/lib/smarthost.
  const state = join(scratch.path, 'state');
  await mkdir(state, { mode: 0o700 });
  const nobody = 65534;
  await chown(state, nobody, nobody);
  const capabilities = one('AmbientCapabilities').split(/\s+/).map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`).join(',');
  const script = `set -e
    mount -t tmpfs -o mode=0755 tmpfs /var/lib
    mkdir /var/lib/smarthost
    mount --bind "$STATE" /var/lib/smarthost                    # StateDirectory=smarthost
    mount -o remount,bind,ro /                                  # ProtectSystem=strict (after the bind, which would inherit ro)
    for d in /home /root /run/user; do [ ! -d "$d" ] || mount -t tmpfs -o mode=0755 tmpfs "$d"; done   # ProtectHome=yes
    mount -t proc -o subset=pid,hidepid=invisible proc /proc     # ProcSubset=pid, ProtectProc=invisible
    cd /var/lib/smarthost                                       # WorkingDirectory
    exec setpriv --reuid=${nobody} --regid=${nobody} --clear-groups \\
      --inh-caps=-all,${capabilities} --ambient-caps=-all,${capabilities} --bounding-set=-all,${capabilities} \\
      --no-new-privs "${process.execPath}" "${CLI}" "$@"`;
  const relayPort = await freePrivilegedPort([]);
  const submissionPort = await freePrivilegedPort([relayPort]);
  // The config is read from the scratch directory (readable by all); everything written goes to the state directory.
  const proof = await proveItRelays(['unshare', '--mount', '--propagation', 'private', 'env', `STATE=${state}`, 'sh', '-c', script, 'sh'], scratch.path, {
    configVia: 'option',
    outbox: join(state, 'outbox'),
    configure(config) {
      config.spool = { dir: '/var/lib/smarthost/spool' };
      config.state = { dir: '/var/lib/smarthost/state' };
      config.upstreams = { outbox: { type: 'outbox', dir: '/var/lib/smarthost/outbox' } };
      config.listeners[0].port = relayPort;
      config.listeners[1].port = submissionPort;
    },
  });
  const listening = proof.logs.filter((l) => l.event === 'listening').map((l) => l.port);
  assert.deepEqual(listening.sort(), [relayPort, submissionPort].sort());
  t.diagnostic(`relayed ${proof.queueId} as uid ${nobody} with only ${one('AmbientCapabilities')}, listening on ${listening.join(', ')}`);
});
