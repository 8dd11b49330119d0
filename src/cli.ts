#!/usr/bin/env node
import { ConfigError } from './config/load.js';
import { checkConfig } from './cli/check-config.js';
import { configSchemaCommand } from './cli/config-schema.js';
import { logLevel, reload, sendTest, status } from './cli/daemon-commands.js';
import { queue } from './cli/queue.js';
import { UsageError, version, type Command } from './cli/command.js';
import { hashPassword } from './cli/hash-password.js';
import { limits } from './cli/limits.js';
import { route } from './cli/route.js';
import { start } from './cli/start.js';
import { suppress } from './cli/suppress.js';
import { testUpstreamCommand } from './cli/test-upstream.js';
import { SuppressionFileError } from './policy/suppression.js';

const COMMANDS: readonly Command[] = [start, checkConfig, hashPassword, route, suppress, limits, testUpstreamCommand, status, queue, sendTest, reload, logLevel, configSchemaCommand];

const USAGE = `Usage: smarthost [--config PATH] <command> [options]

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(15)}${c.summary}`).join('\n')}

Options:
  --config PATH  configuration file (YAML); else $SMARTHOST_CONFIG, else the embedded default
  --help         show this help; "smarthost <command> --help" shows a command's own
  --version      print the version
`;

/** Global options come before the command name; everything after it belongs to the command. */
async function main(argv: string[]): Promise<number> {
  const global: string[] = [];
  let i = 0;
  for (; i < argv.length && argv[i]!.startsWith('-'); i++) {
    const arg = argv[i]!;
    if (arg === '--version') return (console.log(version()), 0);
    if (arg === '--help' || arg === '-h') return (console.log(USAGE), 0);
    if (arg.startsWith('--config=')) global.push(arg);
    else if (arg === '--config' && i + 1 < argv.length) global.push(arg, argv[++i]!);
    else return usageError(arg === '--config' ? 'option --config needs a PATH' : `unknown option "${arg}"`);
  }
  const name = argv[i];
  if (name === undefined) return (console.error(USAGE), 2);
  if (name === 'help') {
    const topic = argv[i + 1] === undefined ? undefined : COMMANDS.find((c) => c.name === argv[i + 1]);
    if (argv[i + 1] !== undefined && !topic) return usageError(`unknown command "${argv[i + 1]}"`);
    return (console.log(topic ? topic.usage : USAGE), 0);
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) return usageError(`unknown command "${name}"`);
  try {
    return await command.run([...(command.takesConfig ? global : []), ...argv.slice(i + 1)]);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`smarthost ${command.name}: ${err.message}\n\n${command.usage}`);
      return 2;
    }
    throw err;
  }
}

function usageError(message: string): number {
  console.error(`smarthost: ${message}\n\n${USAGE}`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ConfigError || err instanceof SuppressionFileError) console.error(err.message);
    else console.error(`smarthost: ${(err as Error).message ?? String(err)}`);
    process.exitCode = 1;
  },
);
