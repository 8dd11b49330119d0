/**
 * No Docker engine runs here, so the Dockerfile's build is replayed in scratch directories: each stage gets
 * its own directory standing in for its WORKDIR (/app), COPY takes files from the build context as
 * .dockerignore filters it (or from an earlier stage), and the RUN steps that build the application (npm ci,
 * npm run build) run as written, served from the local npm cache. Steps that change the image's system
 * (mkdir/chown of /var/lib/smarthost, npm cache clean) are not replayed and are listed in the diagnostics.
 * Then the runtime stage's ENTRYPOINT + CMD start with a loopback config given through SMARTHOST_CONFIG, as
 * in the image, and relay one message. Slow (two npm ci and a tsc build): about 30 s.
 */
import assert from 'node:assert/strict';
import { cp, mkdir, readFile, readdir, stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, posix, relative } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { DEFAULT_ADMIN_PORT } from '../../src/admin/config.js';
import { tempDir } from '../helpers/daemon.js';
import { dockerignore, parseDockerfile, parseEnv, parseHealthcheck, splitArgs, type Stage } from '../helpers/dockerfile.js';
import { npmFromCache, npmHadNoNetwork, PROJECT, proveItRelays, run } from '../helpers/packaging.js';

const dockerfile = await readFile(join(PROJECT, 'Dockerfile'), 'utf8');
const stages = parseDockerfile(dockerfile);
const pkg = JSON.parse(await readFile(join(PROJECT, 'package.json'), 'utf8')) as {
  version: string;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

function instructions(stage: Stage, keyword: string): string[] {
  return stage.instructions.filter((i) => i.keyword === keyword).map((i) => i.args);
}

const runtime = stages.at(-1)!;

test('the Dockerfile: two stages on one official Node LTS image, a non-root user, the ports, a volume, the config path', async () => {
  assert.equal(stages.length, 2, 'a build stage and a runtime stage');
  for (const stage of stages) {
    assert.match(stage.image, /^node:(\d*[02468])-bookworm-slim$/, 'an official node image with a pinned even (LTS) major');
  }
  assert.equal(stages[0]!.image, runtime.image, 'both stages on the same image');
  const user = instructions(runtime, 'USER').at(-1);
  assert.ok(user && !/^(root|0)(:|$)/.test(user), `runs as a non-root user, got USER ${user}`);
  assert.deepEqual(instructions(runtime, 'EXPOSE').flatMap((a) => a.split(/\s+/)).sort(), ['25', '587', String(DEFAULT_ADMIN_PORT)]);
  assert.ok(instructions(runtime, 'VOLUME').some((v) => splitArgs(v).words.includes('/var/lib/smarthost')), 'VOLUME /var/lib/smarthost');
  const env = Object.assign({}, ...instructions(runtime, 'ENV').map(parseEnv)) as Record<string, string>;
  assert.equal(env.SMARTHOST_CONFIG, '/etc/smarthost/smarthost.yaml');

  const compose = parse(await readFile(join(PROJECT, 'compose.yaml'), 'utf8')) as {
    services: Record<string, { volumes: string[]; sysctls: Record<string, unknown>; stop_grace_period: string; cap_drop: string[] }>;
  };
  const service = compose.services.smarthost!;
  assert.ok(service.volumes.some((v) => v.split(':')[1] === env.SMARTHOST_CONFIG), 'compose mounts the config where SMARTHOST_CONFIG points');
  assert.ok(service.volumes.some((v) => v.split(':')[1] === '/var/lib/smarthost'), 'compose keeps the volume');
  assert.equal(service.sysctls['net.ipv4.ip_unprivileged_port_start'], 0, 'the non-root user may bind 25 and 587');
  assert.deepEqual(service.cap_drop, ['ALL']);
  assert.ok(Number.parseInt(service.stop_grace_period, 10) > 30, 'the grace period exceeds the default delivery.shutdownTimeout of 30s');
});

test('the HEALTHCHECK command reports a healthy /healthz as 0 and anything else as 1, without curl', async () => {
  const healthcheck = instructions(runtime, 'HEALTHCHECK');
  assert.equal(healthcheck.length, 1);
  const { command } = parseHealthcheck(healthcheck[0]!);
  assert.equal(command[0], 'node', 'runs with the image\'s node');
  const script = command.join(' ');
  // The admin listener's defaults: loopback inside the container, port 9325.
  assert.ok(script.includes(`http://127.0.0.1:${DEFAULT_ADMIN_PORT}/healthz`), script);

  let status = 200;
  const paths: string[] = [];
  const server = createServer((req, res) => (paths.push(req.url ?? ''), res.writeHead(status).end()));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const check = () => run(process.execPath, command.slice(1).map((a) => a.replace(':9325/', `:${port}/`)), { timeoutMs: 10_000 });
  try {
    assert.equal((await check()).code, 0, 'healthy');
    status = 503;
    assert.equal((await check()).code, 1, 'unhealthy answer');
    assert.deepEqual(paths, ['/healthz', '/healthz']);
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
  assert.equal((await check()).code, 1, 'nothing listening');
});

test('replaying the Dockerfile builds an image whose CLI starts and relays a message', { timeout: 180_000 }, async (t) => {
  const scratch = await tempDir('smarthost-docker-');
  t.after(() => scratch.remove());
  const inContext = dockerignore(await readFile(join(PROJECT, '.dockerignore'), 'utf8'));
  const roots = new Map<string, { image: string; dir: string }>();
  const replayed: string[] = [];
  const skipped: string[] = [];

  for (const [index, stage] of stages.entries()) {
    const name = stage.name ?? String(index);
    const dir = join(scratch.path, name);
    await mkdir(dir);
    let root: string | undefined;
    let workdir: string | undefined;
    let env: Record<string, string> = {};
    /** An absolute path in this stage's image, as a path in its scratch directory. */
    const local = (path: string, base = workdir) => {
      const absolute = posix.resolve(base ?? '/', path);
      assert.ok(root && (absolute === root || absolute.startsWith(`${root}/`)), `${absolute} lies outside ${root}, which the replay cannot follow`);
      return join(dir, posix.relative(root, absolute));
    };
    for (const { keyword, args, line } of stage.instructions) {
      if (keyword === 'WORKDIR') {
        root ??= args;
        workdir = posix.resolve(workdir ?? '/', args);
        // A later WORKDIR outside the application (the data volume) only matters for RUN and COPY after it.
        if (workdir !== root && !workdir.startsWith(`${root}/`)) workdir = undefined;
      } else if (keyword === 'ENV') {
        env = { ...env, ...parseEnv(args) };
      } else if (keyword === 'COPY') {
        const { flags, words } = splitArgs(args);
        const dest = words.at(-1)!;
        for (const source of words.slice(0, -1)) {
          const target = dest.endsWith('/') || words.length > 2 ? join(local(dest), posix.basename(source)) : local(dest);
          if (flags.from) {
            const from = roots.get(flags.from);
            assert.ok(from, `line ${line}: COPY --from=${flags.from} names an earlier stage`);
            await cp(join(from.dir, posix.relative(from.image, source)), target, { recursive: true });
          } else {
            const path = join(PROJECT, source);
            assert.ok(inContext(source), `line ${line}: ${source} is excluded by .dockerignore`);
            await stat(path);
            await cp(path, target, { recursive: true, filter: (p) => inContext(relative(PROJECT, p)) || p === PROJECT });
          }
        }
      } else if (keyword === 'RUN') {
        for (const command of args.split(/\s*&&\s*/)) {
          if (!/^npm (ci|run build)\b/.test(command)) {
            skipped.push(`${name}: ${command}`);
            continue;
          }
          assert.ok(workdir, `line ${line}: RUN ${command} needs a WORKDIR inside the application`);
          const [, ...npmArgs] = command.split(/\s+/);
          const cwd = local('.');
          const options = { cwd, env: { ...process.env, ...env }, timeoutMs: 120_000 };
          const started = Date.now();
          const result = npmArgs[0] === 'ci' ? await npmFromCache(npmArgs, options) : { ...(await run('npm', npmArgs, options)), mode: 'local' };
          if (npmHadNoNetwork(result)) return t.skip(`npm could not install from the cache and no registry is reachable: ${result.stderr.trim().split('\n').at(-1)}`);
          assert.equal(result.code, 0, `line ${line}: ${command}\n${result.stdout}\n${result.stderr}`);
          replayed.push(`${name}: ${command} (${result.mode}, ${Date.now() - started} ms)`);
        }
      }
    }
    assert.ok(root, `stage ${name} sets a WORKDIR`);
    roots.set(name, { image: root, dir });
  }
  t.diagnostic(`replayed: ${replayed.join('; ')}`);
  t.diagnostic(`not replayed (they change the image's system): ${skipped.join('; ')}`);
  assert.ok(replayed.some((r) => /^build: npm ci\b/.test(r)) && replayed.some((r) => /^build: npm run build\b/.test(r)), 'the build stage installs and builds');
  assert.ok(replayed.some((r) => /^runtime: npm ci .*--omit=dev/.test(r)), 'the runtime stage installs production dependencies only');

  const app = roots.get(runtime.name ?? String(stages.length - 1))!;
  const installed = new Set(await readdir(join(app.dir, 'node_modules')));
  for (const dep of Object.keys(pkg.dependencies)) assert.ok(installed.has(dep.split('/')[0]!), `runtime has ${dep}`);
  for (const dep of Object.keys(pkg.devDependencies)) assert.ok(!installed.has(dep.split('/')[0]!) || dep.startsWith('@types/'), `runtime lacks the dev dependency ${dep}`);
  assert.ok(!installed.has('typescript'), 'no compiler in the runtime image');
  const top = await readdir(app.dir);
  assert.deepEqual(top.filter((f) => ['src', 'test', 'tsconfig.json', 'data'].includes(f)), [], 'no sources or tests in the runtime image');

  const entrypoint = splitArgs(instructions(runtime, 'ENTRYPOINT').at(-1)!).words;
  const cmd = splitArgs(instructions(runtime, 'CMD').at(-1)!).words;
  assert.equal(entrypoint[0], 'node');
  const cli = [process.execPath, ...entrypoint.slice(1).map((a) => (a.startsWith('/') ? join(app.dir, posix.relative(app.image, a)) : a))];
  const version = await run(cli[0]!, [...cli.slice(1), '--version']);
  assert.equal(version.code, 0, version.stderr);
  assert.equal(version.stdout.trim(), pkg.version);
  assert.deepEqual(cmd, ['start']);

  const data = join(scratch.path, 'var-lib-smarthost');
  await mkdir(data);
  const proof = await proveItRelays(cli, data, {
    configVia: 'env',
    cwd: data,
    // The image's HEALTHCHECK, as written, against the running daemon's admin listener.
    async whileRunning(config) {
      const { command } = parseHealthcheck(instructions(runtime, 'HEALTHCHECK')[0]!);
      const health = await run(process.execPath, command.slice(1).map((a) => a.replace(':9325/', `:${config.admin.port}/`)), { timeoutMs: 10_000 });
      assert.equal(health.code, 0, `HEALTHCHECK against the daemon: ${health.stderr}`);
    },
  });
  t.diagnostic(`the replayed image relayed ${proof.queueId} and passed its HEALTHCHECK`);
});
