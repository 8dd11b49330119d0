import { configPath, loadConfig } from '../config/load.js';
import { CONFIG_OPTION, parseCommandLine, UsageError, type Command } from './command.js';

export const checkConfig: Command = {
  name: 'check-config',
  summary: 'validate a config file and exit (0 when valid)',
  takesConfig: true,
  usage: `Usage: smarthost check-config [PATH] [--config PATH]

Validates a configuration file without starting anything. Exits 0 when it is valid; otherwise prints every
problem with its key path on stderr and exits 1.

Options:
${CONFIG_OPTION}
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, { config: { type: 'string' } });
    if (values.help) return (console.log(this.usage), 0);
    if (positionals.length > 1) throw new UsageError(`expected at most one PATH, got ${positionals.length}`);
    const path = configPath(positionals[0] ?? values.config);
    loadConfig(path);
    console.log(`${path}: configuration is valid`);
    return 0;
  },
};
