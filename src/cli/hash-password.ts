import { createInterface } from 'node:readline';
import { hashPassword as hash } from '../inbound/passwords.js';
import { parseCommandLine, UsageError, type Command } from './command.js';

export const hashPassword: Command = {
  name: 'hash-password',
  summary: 'read a password from standard input and print its hash for users[].passwordHash',
  takesConfig: false,
  usage: `Usage: smarthost hash-password

Reads one line from standard input (without echo on a terminal) and prints its scrypt hash, to put into
users[].passwordHash. Only the hash goes to standard output:

  echo 'printer-pass' | smarthost hash-password

Options:
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, {});
    if (values.help) return (console.log(this.usage), 0);
    if (positionals.length > 0) throw new UsageError('takes no arguments; the password is read from standard input');
    console.log(await hash(await readPassword()));
    return 0;
  },
};

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
