import { readFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** One `smarthost <name>` command: its own options, its own --help, an exit code. */
export interface Command {
  name: string;
  /** One line for `smarthost --help`. */
  summary: string;
  /** The full text for `smarthost <name> --help`. */
  usage: string;
  /** Whether a global `--config PATH` given before the command name is passed on to it. */
  takesConfig: boolean;
  /** Answers the exit code: 0 success, 1 failure; throw UsageError for a wrong command line (exit 2). */
  run(args: string[]): Promise<number>;
}

/** A command line that cannot be understood; the dispatcher prints it with the command's usage and exits 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** parseArgs with its errors turned into UsageError; --help / -h is always accepted. */
export function parseCommandLine<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T) {
  try {
    return parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** The --config option every command that reads the configuration shares, for its usage text. */
export const CONFIG_OPTION = `  --config PATH      configuration file (YAML); else $SMARTHOST_CONFIG, else the embedded default`;
