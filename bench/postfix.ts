/**
 * A private Postfix instance for the comparison: its own config directory, queue and data directories
 * under the bench work directory (the same filesystem as smarthost's spool), smtpd on a free loopback
 * port, everything relayed to the bench sink. It never touches the system instance or /etc/postfix.
 * Durability stays at Postfix's default: cleanup fsyncs each queue file before smtpd answers 250.
 */
import { chownSync, existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { childPids, findProgram, freePort, isRunning, onExit, PeakSampler, readCpu, readPss, runSync, waitForSmtp, type ResourceUsage } from './process.js';

/** Postfix is there, or installable (as root, through the package manager) when it is not. */
export function ensurePostfix(): { ok: true } | { ok: false; reason: string } {
  if (findProgram('postfix') && findProgram('postconf')) return { ok: true };
  if (process.getuid?.() !== 0) return { ok: false, reason: 'postfix is not installed and we are not root to install it' };
  try {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    console.error('bench: postfix not found; apt-get install -y postfix ...');
    // "No configuration": the package must not configure and start a system instance listening on port 25.
    runSync('debconf-set-selections', [], 30_000, env, 'postfix postfix/main_mailer_type select No configuration\n');
    runSync('apt-get', ['install', '-y', 'postfix'], 600_000, env);
  } catch (err) {
    return { ok: false, reason: `postfix is not installed and apt-get install failed: ${(err as Error).message.split('\n')[0]}` };
  }
  return findProgram('postfix') ? { ok: true } : { ok: false, reason: 'apt-get ran but postfix is still missing' };
}

export class PostfixInstance {
  #sampler: PeakSampler | undefined;
  #cpuAtIdle = 0;
  #idlePss = 0;

  private constructor(
    readonly dir: string,
    readonly port: number,
    readonly masterPid: number,
    private readonly removeExitHook: () => void,
  ) {}

  get configDir(): string {
    return join(this.dir, 'etc');
  }

  static async start(dir: string, sinkPort: number): Promise<PostfixInstance> {
    const port = await freePort();
    const etc = join(dir, 'etc');
    const data = join(dir, 'data');
    await mkdir(etc, { recursive: true });
    await mkdir(join(dir, 'queue'), { recursive: true });
    await mkdir(data, { recursive: true });
    // data_directory must belong to mail_owner; queue subdirectories are created by "postfix start" itself.
    const owner = postfixUser();
    chownSync(data, owner.uid, owner.gid);
    await writeFile(join(etc, 'main.cf'), mainCf(dir, sinkPort));
    await writeFile(join(etc, 'master.cf'), masterCf(port));
    // From here on an instance may be running; it must never outlive the bench, whatever happens next.
    const removeExitHook = onExit(() => abortSync(dir));
    try {
      const postfix = findProgram('postfix')!;
      runSync(postfix, ['-c', etc, 'check'], 60_000);
      runSync(postfix, ['-c', etc, 'start'], 60_000);
      const masterPid = readMasterPid(dir)!;
      await waitForSmtp(port, 30_000, 'postfix smtpd', () => isRunning(masterPid));
      return new PostfixInstance(dir, port, masterPid, removeExitHook);
    } catch (err) {
      abortSync(dir);
      removeExitHook();
      throw new Error(`${(err as Error).message}\n${maillogTail(dir)}`);
    }
  }

  /** All Postfix processes: the master and its daemons (smtpd, cleanup, qmgr, smtp, ...). */
  pids(): number[] {
    return [this.masterPid, ...childPids(this.masterPid)];
  }

  #cpuNow(): number {
    const master = readCpu(this.masterPid);
    const live = childPids(this.masterPid).reduce((sum, pid) => sum + (readCpu(pid)?.self ?? 0), 0);
    return (master?.self ?? 0) + (master?.children ?? 0) + live;
  }

  #pssNow(): number {
    return this.pids().reduce((sum, pid) => sum + (readPss(pid) ?? 0), 0);
  }

  markIdle(): void {
    this.#cpuAtIdle = this.#cpuNow();
    this.#idlePss = this.#pssNow();
    // PSS is costlier to read than RSS (the kernel walks page tables), so sample less often than smarthost.
    this.#sampler = new PeakSampler(() => this.#pssNow(), 500);
  }

  /**
   * CPU of the master and every daemon it ran (live ones read directly, exited ones through the master's
   * cutime), and the largest sampled sum of the processes' PSS: shared library pages count once overall,
   * not once per daemon as a sum of RSS would.
   */
  usage(): ResourceUsage {
    return { cpuSeconds: this.#cpuNow() - this.#cpuAtIdle, peakMemBytes: this.#sampler?.stop() ?? 0, idleMemBytes: this.#idlePss };
  }

  async stop(): Promise<void> {
    this.#sampler?.stop();
    this.removeExitHook();
    if (isRunning(this.masterPid)) runSync(findProgram('postfix')!, ['-c', this.configDir, 'stop'], 60_000);
    // "postfix stop" returns before the master is gone; its queue directory may be removed only after.
    const deadline = Date.now() + 20_000;
    while (isRunning(this.masterPid) && Date.now() < deadline) await sleep(100);
    if (isRunning(this.masterPid)) {
      process.kill(this.masterPid, 'SIGKILL');
      throw new Error('postfix master did not stop within 20 s; killed');
    }
  }

  diagnostics(): string {
    return maillogTail(this.dir);
  }
}

function readMasterPid(dir: string): number | undefined {
  try {
    return Number(readFileSync(join(dir, 'queue', 'pid', 'master.pid'), 'latin1').trim()) || undefined;
  } catch {
    return undefined;
  }
}

/** Synchronous stop for exit paths: "postfix abort" (the master terminates its daemons), else SIGKILL. */
function abortSync(dir: string): void {
  const pid = readMasterPid(dir);
  if (pid === undefined || !isRunning(pid)) return;
  try {
    runSync(findProgram('postfix')!, ['-c', join(dir, 'etc'), 'abort'], 20_000);
  } catch {
    process.kill(pid, 'SIGKILL');
  }
}

function postfixUser(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postfix:'));
  const [, , uid, gid] = line?.split(':') ?? [];
  if (uid === undefined || gid === undefined) throw new Error('no "postfix" user in /etc/passwd');
  return { uid: Number(uid), gid: Number(gid) };
}

function maillogTail(dir: string): string {
  const path = join(dir, 'maillog');
  if (!existsSync(path)) return '';
  return readFileSync(path, 'utf8').split('\n').slice(-15).join('\n');
}

/**
 * Everything not set here keeps Postfix's default; the lines that are set exist to keep the instance
 * private (own directories, loopback only, no local delivery, no DNS) or to match smarthost's bench config.
 */
function mainCf(dir: string, sinkPort: number): string {
  return `# Private benchmark instance written by bench/postfix.ts; removed after the run.
compatibility_level = 3.6
queue_directory = ${join(dir, 'queue')}
data_directory = ${join(dir, 'data')}
# Program and metadata locations stay the installed ones (read-only use).
daemon_directory = ${postconfDefault('daemon_directory')}
command_directory = ${postconfDefault('command_directory')}
meta_directory = ${postconfDefault('meta_directory')}
shlib_directory = ${postconfDefault('shlib_directory')}
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
# Log to a file in our directory (there may be no syslog daemon); Postfix logs about 5 lines per message.
maillog_file = ${join(dir, 'maillog')}
maillog_file_prefixes = ${dir}
myhostname = postfix.bench.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
# Relay everything to the sink: no local domains, no local delivery, no aliases, no DNS.
mydestination =
relay_domains =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relayhost = [127.0.0.1]:${sinkPort}
smtp_host_lookup = native
smtp_tls_security_level = none
smtpd_tls_security_level = none
# Same limits as smarthost's bench config: 200 MB messages, 20 connections to the upstream.
message_size_limit = 200000000
default_destination_concurrency_limit = 20
# Enough smtpd (and cleanup) processes for 200 concurrent sessions; the default of 100 would queue half of them.
default_process_limit = 250
biff = no
`;
}

/** Only the services a relay needs; no chroot, so the instance needs no copies of /etc files. */
function masterCf(port: number): string {
  return `# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:${port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;
}

const defaults = new Map<string, string>();
function postconfDefault(name: string): string {
  if (!defaults.has(name)) defaults.set(name, runSync(findProgram('postconf')!, ['-dh', name], 10_000).trim());
  return defaults.get(name)!;
}
