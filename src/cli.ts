#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { ConfigError, configPath, loadConfig } from './config/load.js';
import { hashPassword } from './inbound/passwords.js';
import { createLogger } from './log.js';

const USAGE = `Usage: smarthost <command> [options]

Commands:
  start [--config PATH]        run the relay (config: --config, else $SMARTHOST_CONFIG, else the embedded default)
  check-config [PATH]          validate a config file and exit (0 when valid)
  hash-password                read a password from standard input and print its hash for users[].passwordHash

Options:
  --config PATH                configuration file (YAML)
  --help                       show this help
  --version                    print the version
`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { config: { type: 'string' }, help: { type: 'boolean' }, version: { type: 'boolean' } },
    });
  } catch (err) {
    console.error(`smarthost: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.version) {
    console.log(version());
    return 0;
  }
  const [command, ...rest] = positionals;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!command) {
    console.error(USAGE);
    return 2;
  }
  switch (command) {
    case 'start':
      return start(configPath(values.config));
    case 'check-config': {
      const path = configPath(rest[0] ?? values.config);
      loadConfig(path);
      console.log(`${path}: configuration is valid`);
      return 0;
    }
    case 'hash-password':
      console.log(await hashPassword(await readPassword()));
      return 0;
    default:
      console.error(`smarthost: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

async function start(path: string): Promise<number> {
  const config = loadConfig(path);
  const log = createLogger(config.log.level);
  // Listening before the start: a signal during queue recovery stops the daemon once it is up, instead of killing it.
  const signalled = new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ event: 'signal', signal }, `received ${signal}`);
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  log.info({ event: 'starting', version: version(), config: path }, 'starting smarthost');
  // Loaded here so that the short commands do not pay for the SMTP stack.
  const { Daemon } = await import('./daemon.js');
  const daemon = await Daemon.start(config, log);
  await signalled;
  await daemon.stop();
  log.flush();
  return 0;
}

async function readPassword(): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: process.stdin.isTTY });
  if (process.stdin.isTTY) {
    process.stderr.write('Password: ');
    // Keep the typed password off the screen.
    (rl as unknown as { _writeToOutput: (s: string) => void })._writeToOutput = () => {};
  }
  const line = await new Promise<string>((resolve) => {
    rl.once('line', resolve);
    rl.once('close', () => resolve(''));
  });
  rl.close();
  if (process.stdin.isTTY) process.stderr.write('\n');
  if (line === '') throw new Error('no password given on standard input');
  return line;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ConfigError) console.error(err.message);
    else console.error(`smarthost: ${(err as Error).message ?? String(err)}`);
    process.exitCode = 1;
  },
);
