/** Commands that ask the running daemon something through its admin API: status, reload, log-level, send-test. */
import { LOG_LEVELS } from '../admin/config.js';
import type { ReloadResult } from '../daemon.js';
import { AdminApiError, adminClientFor } from './admin-client.js';
import { CONFIG_OPTION, parseCommandLine, UsageError, type Command } from './command.js';

const REACH = `Acts on the running daemon through its admin API (admin.host, admin.port and admin.token of the same
config file).`;

async function talk(name: string, work: () => Promise<number>): Promise<number> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof AdminApiError) return (console.error(`smarthost ${name}: ${err.message}`), 1);
    throw err;
  }
}

interface Status {
  version: string;
  hostname: string;
  listeners: { name: string; role: string; host: string; port: number; listening: boolean }[];
  upstreams: { name: string; type?: string; up: boolean; consecutiveFailures: number; downSince?: string; lastError?: string }[];
  queue: { messages: number; queued: number; deferred: number; held: number; inFlight: number; recipientsPending: number; oldestAgeSeconds: number };
  ready: { ready: boolean; checks: { name: string; ok: boolean; detail: string }[] };
}

export const status: Command = {
  name: 'status',
  summary: 'listeners, upstreams and the queue of the running daemon',
  takesConfig: true,
  usage: `Usage: smarthost status [--json]

Shows the running daemon's listeners, upstreams (up, or down after consecutive connection failures),
a queue summary and its readiness. ${REACH}

Exit status: 0 the daemon answered and is ready, 1 not ready or unreachable, 2 a wrong command line.

Options:
${CONFIG_OPTION}
  --json             print JSON
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, { config: { type: 'string' }, json: { type: 'boolean' } });
    if (values.help) return (console.log(this.usage), 0);
    if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    return talk('status', async () => {
      const s = await adminClientFor(values.config).get<Status>('/api/status');
      if (values.json) console.log(JSON.stringify(s, null, 2));
      else {
        const q = s.queue;
        console.log(
          [
            `smarthost ${s.version} on ${s.hostname}: ${s.ready.ready ? 'ready' : 'NOT READY'}`,
            ...s.ready.checks.filter((c) => !c.ok).map((c) => `  ${c.name}: ${c.detail}`),
            '',
            'Listeners:',
            ...s.listeners.map((l) => `  ${l.name.padEnd(16)} ${l.role.padEnd(10)} ${l.host}:${l.port}  ${l.listening ? 'listening' : 'NOT listening'}`),
            '',
            'Upstreams:',
            ...s.upstreams.map(
              (u) =>
                `  ${u.name.padEnd(16)} ${(u.type ?? '').padEnd(14)} ${u.up ? 'up' : `DOWN since ${u.downSince}`}${u.consecutiveFailures > 0 ? ` (${u.consecutiveFailures} connection failures in a row${u.lastError ? `: ${u.lastError}` : ''})` : ''}`,
            ),
            '',
            `Queue: ${q.messages} message${q.messages === 1 ? '' : 's'} (${q.queued} queued, ${q.deferred} deferred, ${q.held} held, ${q.inFlight} being delivered), ${q.recipientsPending} recipients pending, oldest ${q.oldestAgeSeconds}s`,
          ].join('\n'),
        );
      }
      return s.ready.ready ? 0 : 1;
    });
  },
};

export const reload: Command = {
  name: 'reload',
  summary: 're-read the configuration file in the running daemon (as SIGHUP does)',
  takesConfig: true,
  usage: `Usage: smarthost reload

Makes the running daemon re-read its configuration file. Users, routes, rewrite rules, sender
restrictions, suppression settings, retry timings, the log level and TLS certificates take effect at
once, without dropping connections or queued mail; changed listener addresses, upstreams or the admin
listener need a restart (the reply says which). An invalid file is refused and the old configuration
stays in force. ${REACH}

Exit status: 0 reloaded, 1 refused or daemon unreachable, 2 a wrong command line.

Options:
${CONFIG_OPTION}
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, { config: { type: 'string' } });
    if (values.help) return (console.log(this.usage), 0);
    if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    return talk('reload', async () => {
      const r = await adminClientFor(values.config).post<ReloadResult>('/api/reload');
      console.log(r.changed && r.changed.length > 0 ? `configuration reloaded; now in force: ${r.changed.join(', ')}` : 'configuration reloaded; nothing changed');
      if (r.restartRequired && r.restartRequired.length > 0) console.log(`restart smarthost for these changes to take effect: ${r.restartRequired.join(', ')}`);
      return 0;
    });
  },
};

export const logLevel: Command = {
  name: 'log-level',
  summary: 'show or change the running daemon\'s log level',
  takesConfig: true,
  usage: `Usage: smarthost log-level [LEVEL]

Without LEVEL prints the running daemon's log level; with one (${LOG_LEVELS.join(', ')}) switches to it
until the next restart or reload. ${REACH}

Options:
${CONFIG_OPTION}
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, { config: { type: 'string' } });
    if (values.help) return (console.log(this.usage), 0);
    if (positionals.length > 1) throw new UsageError(`expected at most one LEVEL, got ${positionals.length}`);
    const level = positionals[0];
    if (level !== undefined && !(LOG_LEVELS as readonly string[]).includes(level)) throw new UsageError(`unknown level "${level}"; expected one of ${LOG_LEVELS.join(', ')}`);
    return talk('log-level', async () => {
      const api = adminClientFor(values.config);
      if (level === undefined) console.log((await api.get<{ level: string }>('/api/log-level')).level);
      else {
        const r = await api.post<{ level: string; previous: string }>('/api/log-level', { level });
        console.log(`log level changed from ${r.previous} to ${r.level}`);
      }
      return 0;
    });
  },
};

export const sendTest: Command = {
  name: 'send-test',
  summary: 'queue a test message through the running daemon',
  takesConfig: true,
  usage: `Usage: smarthost send-test --to ADDRESS [--route NAME]

Queues a small test message in the running daemon, accepted through the spool like any message, so it
takes the real path: routes, rewriting, the upstream, retries and a DSN if it fails. The sender is
admin.testSender, else postmaster@<hostname>. Follow it with "smarthost queue show ID" or the logs.
${REACH}

Options:
${CONFIG_OPTION}
  --to ADDRESS       the recipient (required)
  --route NAME       send through this route (routing.routes[].name) instead of the route rules
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, { config: { type: 'string' }, to: { type: 'string' }, route: { type: 'string' } });
    if (values.help) return (console.log(this.usage), 0);
    if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    if (!values.to) throw new UsageError('--to ADDRESS is required');
    return talk('send-test', async () => {
      const r = await adminClientFor(values.config).post<{ queueId: string; sender: string; to: string; route?: string }>('/api/send-test', {
        to: values.to,
        ...(values.route !== undefined ? { route: values.route } : {}),
      });
      console.log(`test message queued as ${r.queueId}: from ${r.sender} to ${r.to}${r.route ? ` through route ${r.route}` : ''}`);
      return 0;
    });
  },
};
