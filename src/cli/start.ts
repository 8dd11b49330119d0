import { configPath, loadConfig } from '../config/load.js';
import { createLogger } from '../log.js';
import { CONFIG_OPTION, parseCommandLine, UsageError, version, type Command } from './command.js';

export const start: Command = {
  name: 'start',
  summary: 'run the relay',
  takesConfig: true,
  usage: `Usage: smarthost start [--config PATH]

Runs the relay in the foreground; logs are JSON lines on standard output. SIGTERM or SIGINT stops it:
listeners close, deliveries in flight get delivery.shutdownTimeout to finish, the rest stays queued.
SIGHUP re-reads the configuration file (as "smarthost reload" does); an invalid one is refused and the
running configuration stays in force.

Options:
${CONFIG_OPTION}
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, { config: { type: 'string' } });
    if (values.help) return (console.log(this.usage), 0);
    if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    const path = configPath(values.config);
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
    const { Daemon } = await import('../daemon.js');
    let daemon: import('../daemon.js').Daemon | undefined;
    process.on('SIGHUP', () => {
      if (!daemon) return void log.warn({ event: 'signal', signal: 'SIGHUP' }, 'SIGHUP ignored: still starting');
      log.info({ event: 'signal', signal: 'SIGHUP' }, 'received SIGHUP; reloading the configuration');
      void daemon.reload();
    });
    daemon = await Daemon.start(config, log, undefined, { loadConfig: () => loadConfig(path) });
    await signalled;
    await daemon.stop();
    log.flush();
    return 0;
  },
};
