import type { QueueDetail, QueueEntry } from '../delivery/queue-admin.js';
import { AdminApiError, adminClientFor } from './admin-client.js';
import { CONFIG_OPTION, parseCommandLine, UsageError, type Command } from './command.js';

const ACTIONS = ['list', 'show', 'retry', 'hold', 'release', 'delete', 'bounce'] as const;
type Action = (typeof ACTIONS)[number];
const TAKES_ALL: readonly Action[] = ['retry', 'delete', 'release'];

export const queue: Command = {
  name: 'queue',
  summary: 'list, inspect, retry, hold, release, delete or bounce queued mail (queue --help)',
  takesConfig: true,
  usage: `Usage: smarthost queue list [--json]
       smarthost queue show ID [--json]
       smarthost queue retry ID|--all      deliver now (like postqueue -f / -i)
       smarthost queue hold ID             never attempt until released
       smarthost queue release ID|--all
       smarthost queue delete ID|--all     remove from the queue without a bounce (like postsuper -d)
       smarthost queue bounce ID           fail the pending recipients (5.0.0) and send the sender a DSN

Acts on the running daemon through its admin API (admin.host, admin.port and admin.token of the same
config file). A message being delivered right now is changed once that attempt ends.

Exit status: 0 done, 1 failure (daemon unreachable, unknown queue ID, ...), 2 a wrong command line.

Options:
${CONFIG_OPTION}
  --all              retry, release or delete every queued message
  --json             list, show: print JSON
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, { config: { type: 'string' }, all: { type: 'boolean' }, json: { type: 'boolean' } });
    if (values.help) return (console.log(this.usage), 0);
    const [action, ...operands] = positionals as [Action | undefined, ...string[]];
    if (action === undefined) throw new UsageError(`expected one of ${ACTIONS.join(', ')}`);
    if (!ACTIONS.includes(action)) throw new UsageError(`unknown action "${action}"; expected one of ${ACTIONS.join(', ')}`);
    if (values.json && action !== 'list' && action !== 'show') throw new UsageError('--json is only for "queue list" and "queue show"');
    if (values.all && !TAKES_ALL.includes(action)) throw new UsageError(`--all is only for ${TAKES_ALL.map((a) => `"queue ${a}"`).join(', ')}`);
    if (action === 'list') {
      if (operands.length > 0) throw new UsageError(`"queue list" takes no argument, got "${operands[0]}"`);
    } else if (values.all) {
      if (operands.length > 0) throw new UsageError(`give either --all or a queue ID, not both`);
    } else if (operands.length !== 1) {
      throw new UsageError(`"queue ${action}" takes exactly one queue ID${TAKES_ALL.includes(action) ? ' (or --all)' : ''}, got ${operands.length}`);
    }
    try {
      const api = adminClientFor(values.config);
      if (action === 'list') {
        const { messages } = await api.get<{ messages: QueueEntry[] }>('/api/queue');
        console.log(values.json ? JSON.stringify(messages, null, 2) : formatList(messages));
        return 0;
      }
      if (action === 'show') {
        const detail = await api.get<QueueDetail>(`/api/queue/${encodeURIComponent(operands[0]!)}`);
        console.log(values.json ? JSON.stringify(detail, null, 2) : formatDetail(detail));
        return 0;
      }
      const result = await api.post<{ done: string[]; failed: { id: string; error: string }[] }>(`/api/queue/${action}`, values.all ? { all: true } : { id: operands[0] });
      const verb = { retry: 'scheduled for delivery now', hold: 'put on hold', release: 'released', delete: 'deleted', bounce: 'bounced; the sender gets a DSN' }[action];
      if (values.all) console.log(`${result.done.length} message${result.done.length === 1 ? '' : 's'} ${verb}`);
      else console.log(`${operands[0]}: ${verb}`);
      for (const f of result.failed) console.error(`smarthost queue: ${f.id}: ${f.error}`);
      return result.failed.length > 0 ? 1 : 0;
    } catch (err) {
      if (err instanceof AdminApiError) return (console.error(`smarthost queue ${action}: ${err.message}`), 1);
      throw err;
    }
  },
};

/** mailq style: one block per message. */
export function formatList(messages: readonly QueueEntry[]): string {
  if (messages.length === 0) return 'the queue is empty';
  const head = `${'QUEUE ID'.padEnd(22)}  ${'SIZE'.padStart(9)}  ${'ARRIVAL'.padEnd(24)}  ${'STATE'.padEnd(8)}  SENDER`;
  const blocks = messages.map((m) => {
    const state = `${m.state}${m.inFlight ? '*' : ''}`;
    const lines = [`${m.id.padEnd(22)}  ${String(m.size).padStart(9)}  ${m.arrival.padEnd(24)}  ${state.padEnd(8)}  ${m.sender || '<>'}`];
    if (m.lastError) lines.push(`    (${m.lastError})`);
    for (const r of m.recipients) lines.push(`    ${r}`);
    return lines.join('\n');
  });
  const size = messages.reduce((n, m) => n + m.size, 0);
  return `${head}\n${blocks.join('\n\n')}\n\n-- ${size} bytes in ${messages.length} message${messages.length === 1 ? '' : 's'} (* = being delivered now)`;
}

function formatDetail(d: QueueDetail): string {
  const c = d.client;
  const lines = [
    `Queue ID:    ${d.id}`,
    `State:       ${d.state}${d.inFlight ? ' (being delivered now)' : ''}`,
    `Arrival:     ${d.arrival}`,
    `Size:        ${d.size} bytes`,
    `Sender:      ${d.sender || '<> (bounce)'}`,
    ...(d.messageId ? [`Message-ID:  ${d.messageId}`] : []),
    `Client:      ${c.address}${c.helo ? ` (HELO ${c.helo})` : ''} on listener ${c.listener}${c.user ? `, user ${c.user}` : ''}${c.tls ? ', TLS' : ''}`,
    ...(d.route ? [`Route:       ${d.route} (forced)`] : []),
    '',
    'Recipients:',
    ...d.recipientStates.map((r) =>
      [
        `  ${r.address}: ${r.status}, ${r.attempts} attempt${r.attempts === 1 ? '' : 's'}${r.upstream ? ` via ${r.upstream}` : ''}${r.nextAttemptAt ? `, next ${r.nextAttemptAt}` : ''}`,
        ...(r.lastReply ? [`    last reply: ${r.lastReply}`] : []),
      ].join('\n'),
    ),
    '',
    'Headers:',
    d.headers.replace(/\r\n/g, '\n'),
  ];
  return lines.join('\n');
}
