import { configPath, loadConfig } from '../config/load.js';
import { isPlausibleAddress, SuppressionList, type SuppressionEntry } from '../policy/suppression.js';
import { CONFIG_OPTION, parseCommandLine, UsageError, type Command } from './command.js';

export const suppress: Command = {
  name: 'suppress',
  summary: 'add, remove or list recipients that must never receive mail (suppress --help)',
  takesConfig: true,
  usage: `Usage: smarthost suppress add ADDRESS [--reason TEXT]
       smarthost suppress remove ADDRESS
       smarthost suppress list [--json]

Manages the suppression list in <state.dir>/suppression.json: recipients this relay never delivers to
(suppression.action refuse: 550 5.7.1 at RCPT TO; drop: accepted and silently not delivered). Addresses
compare case-insensitively. Works whether or not the daemon runs; a running daemon picks changes up
within a second, without a restart.

Exit status: 0 done (also when an added address was already listed), 1 remove of an address that is not
listed or any other failure, 2 a wrong command line.

Options:
${CONFIG_OPTION}
                     (its state.dir says where the list is)
  --reason TEXT      why the address is suppressed (add; default "added from the command line")
  --json             list: print JSON instead of a table
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, {
      config: { type: 'string' },
      reason: { type: 'string' },
      json: { type: 'boolean' },
    });
    if (values.help) return (console.log(this.usage), 0);
    const [action, ...operands] = positionals;
    if (action === undefined) throw new UsageError('expected add, remove or list');
    if (!['add', 'remove', 'list'].includes(action)) throw new UsageError(`unknown action "${action}"; expected add, remove or list`);
    if (values.reason !== undefined && action !== 'add') throw new UsageError('--reason is only for "suppress add"');
    if (values.json && action !== 'list') throw new UsageError('--json is only for "suppress list"');
    if (action === 'list') {
      if (operands.length > 0) throw new UsageError(`"suppress list" takes no address, got "${operands[0]}"`);
    } else {
      if (operands.length !== 1) throw new UsageError(`"suppress ${action}" takes exactly one ADDRESS, got ${operands.length}`);
      const address = operands[0]!.trim().replace(/^<(.*)>$/, '$1');
      if (!isPlausibleAddress(address)) throw new UsageError(`"${operands[0]}" is not an e-mail address (expected local@domain)`);
      operands[0] = address;
    }
    if (values.reason !== undefined && values.reason.trim() === '') throw new UsageError('--reason must not be empty');

    const config = loadConfig(configPath(values.config));
    const list = await SuppressionList.open(config.state.dir);
    try {
      switch (action) {
        case 'add': {
          const { added, entry } = await list.add(operands[0]!, values.reason?.trim() ?? 'added from the command line');
          if (added) console.log(`added ${entry.address} to the suppression list (${list.file})`);
          else console.log(`${entry.address} is already on the suppression list since ${entry.addedAt} (reason: ${entry.reason})`);
          return 0;
        }
        case 'remove': {
          const removed = await list.remove(operands[0]!);
          if (!removed) {
            console.error(`smarthost suppress: ${operands[0]} is not on the suppression list (${list.file})`);
            return 1;
          }
          console.log(`removed ${removed.address} from the suppression list (${list.file})`);
          return 0;
        }
        default: {
          const entries = list.entries();
          if (values.json) console.log(JSON.stringify({ file: list.file, action: config.suppression.action, suppressed: entries }, null, 2));
          else console.log(formatTable(entries, list.file, config.suppression.action));
          return 0;
        }
      }
    } finally {
      await list.close();
    }
  },
};

function formatTable(entries: readonly SuppressionEntry[], file: string, action: string): string {
  if (entries.length === 0) return `no address is on the suppression list (${file})`;
  const rows = [['ADDRESS', 'ADDED', 'REASON'], ...entries.map((e) => [e.address, e.addedAt, e.reason])];
  const width = [0, 1].map((i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => `${r[0]!.padEnd(width[0]!)}  ${r[1]!.padEnd(width[1]!)}  ${r[2]}`);
  const count = `${entries.length} address${entries.length === 1 ? '' : 'es'}`;
  return `${lines.join('\n')}\n\n${count} on the suppression list (${file}); action: ${action}`;
}
