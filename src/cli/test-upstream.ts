/**
 * `smarthost test-upstream NAME [--send-to ADDRESS]`: checks one upstream step by step (token, connect,
 * STARTTLS, AUTH), says in plain words what failed and the likely fix, and sends a short test message only
 * when asked to.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { configPath, loadConfig } from '../config/load.js';
import type { Config, UpstreamConfig } from '../config/schema.js';
import { toSmtpError } from '../smtp-error.js';
import type { DeliveryRequest, ProbeStep, RecipientOutcome } from '../upstreams/upstream.js';
import { CONFIG_OPTION, parseCommandLine, UsageError, type Command } from './command.js';

export interface TestUpstreamOptions {
  /** Send a test message to this address once every step passed. */
  sendTo?: string;
  /** The test message's sender (and the mailbox to test for mailbox: fromSender). */
  from?: string;
}

/** Runs the test, printing one line per step; resolves true when every step (and the send, if asked) passed. */
export async function testUpstream(config: Readonly<Config>, name: string, options: TestUpstreamOptions, print: (line: string) => void): Promise<boolean> {
  const upstreamConfig = config.upstreams[name];
  if (!Object.hasOwn(config.upstreams, name) || !upstreamConfig) {
    throw new UsageError(`"${name}" names no upstream; configured: ${Object.keys(config.upstreams).join(', ')}`);
  }
  // Loaded here so that the other commands do not pay for the upstreams' libraries (nodemailer, msal).
  const [{ openUpstream, remoteHost }, { MicrosoftApps }, { createLogger }] = await Promise.all([
    import('../upstreams/index.js'),
    import('../upstreams/oauth/msal.js'),
    import('../log.js'),
  ]);
  const host = remoteHost(upstreamConfig);
  print(`Testing upstream ${name} (${upstreamConfig.type}${host ? `, ${host}` : ''})`);
  // Failures are printed as steps; the token provider's own error log would only repeat them.
  const log = createLogger('silent');
  const upstream = await openUpstream(name, upstreamConfig, config.hostname, { log, microsoft: new MicrosoftApps(config.microsoft) });
  try {
    if (!upstream.probe) {
      print(`  upstream type ${upstreamConfig.type} has no connection to test`);
      return false;
    }
    const sender = options.from ?? defaultSender(upstreamConfig);
    const passed = await upstream.probe((step) => printStep(step, print), sender !== undefined ? { sender } : {});
    if (!passed) {
      print('Nothing was sent.');
      return false;
    }
    if (options.sendTo === undefined) {
      print('All steps passed. Nothing was sent (use --send-to ADDRESS to send a test message).');
      return true;
    }
    if (sender === undefined) {
      printStep({ step: 'send', ok: false, detail: 'no sender for the test message', fix: 'give one with --from ADDRESS' }, print);
      return false;
    }
    return await sendTest(upstream.deliver.bind(upstream), config.hostname, name, sender, options.sendTo, print);
  } finally {
    await upstream.close();
  }
}

async function sendTest(
  deliver: (r: DeliveryRequest) => Promise<RecipientOutcome[]>,
  hostname: string,
  name: string,
  sender: string,
  to: string,
  print: (line: string) => void,
): Promise<boolean> {
  const id = randomBytes(8).toString('hex');
  const raw = [
    `From: ${sender}`,
    `To: ${to}`,
    `Subject: smarthost test message through upstream ${name}`,
    `Date: ${new Date().toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: <test-upstream-${id}@${hostname}>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    '',
    `This message was sent by "smarthost test-upstream ${name} --send-to ${to}" on ${hostname}.`,
    'If you can read it, the upstream works.',
    '',
  ].join('\r\n');
  const request: DeliveryRequest = { queueId: `TEST${id.toUpperCase()}`, sender, recipients: [to], size: Buffer.byteLength(raw), openMessage: () => Readable.from([Buffer.from(raw)]) };
  try {
    const [outcome] = await deliver(request);
    if (outcome?.delivered) {
      printStep({ step: 'send', ok: true, detail: `test message from ${sender} to ${to} accepted: ${outcome.reply}` }, print);
      return true;
    }
    printStep({ step: 'send', ok: false, detail: outcome ? outcome.error.reply : 'no answer for the recipient' }, print);
  } catch (err) {
    printStep({ step: 'send', ok: false, detail: toSmtpError(err).reply }, print);
  }
  return false;
}

function defaultSender(config: UpstreamConfig): string | undefined {
  if (config.type === 'm365-smtp') return config.legacyBasicAuth?.user ?? (config.mailbox === 'fromSender' ? undefined : config.mailbox);
  if (config.type === 'graph' || config.type === 'google') return config.mailbox === 'fromSender' ? undefined : config.mailbox;
  return undefined;
}

function printStep(step: ProbeStep, print: (line: string) => void): void {
  print(`  ${step.ok ? 'ok    ' : 'FAILED'}  ${step.step}: ${step.detail}`);
  if (!step.ok && step.fix) print(`          fix: ${step.fix}`);
}

export const testUpstreamCommand: Command = {
  name: 'test-upstream',
  summary: 'check an upstream step by step (token, connect, STARTTLS, AUTH); sends only with --send-to',
  takesConfig: true,
  usage: `Usage: smarthost test-upstream NAME [--send-to ADDRESS] [--from ADDRESS] [--config PATH]

Checks the upstream NAME (types smtp, m365-smtp, m365-connector, graph, google, mailjet) one step at a time:
gets its access token, connects, reads the greeting and EHLO, upgrades with STARTTLS and logs in, printing each
step and, for a step that fails, the likely fix (a missing SMTP.SendAsApp consent, a service principal not
registered with New-ServicePrincipal, SMTP AUTH disabled for the mailbox ...). mailjet is checked with one
Send API call in SandboxMode from --from to itself. Nothing is sent unless --send-to is given.
Exits 0 when every step passed.

Options:
  --send-to ADDRESS  after the checks, send a short test message to ADDRESS
  --from ADDRESS     sender of the test message, and the mailbox to test when the upstream uses
                     mailbox: fromSender (default: the upstream's fixed mailbox); required for mailjet
${CONFIG_OPTION}
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, { config: { type: 'string' }, 'send-to': { type: 'string' }, from: { type: 'string' } });
    if (values.help) return (console.log(this.usage), 0);
    if (positionals.length !== 1) throw new UsageError(positionals.length === 0 ? 'the NAME of an upstream is required' : `unexpected argument "${positionals[1]}"`);
    const config = loadConfig(configPath(values.config));
    const passed = await testUpstream(
      config,
      positionals[0]!,
      { ...(values['send-to'] !== undefined ? { sendTo: values['send-to'] } : {}), ...(values.from !== undefined ? { from: values.from } : {}) },
      (line) => console.log(line),
    );
    return passed ? 0 : 1;
  },
};
