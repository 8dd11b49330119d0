import { isIP } from 'node:net';
import { configPath, loadConfig } from '../config/load.js';
import type { Config, UpstreamConfig } from '../config/schema.js';
import { checkEnvelopeAddress } from '../policy/address-policy.js';
import { NetworkList, normalizeIp } from '../policy/networks.js';
import { checkSenderAllowed } from '../policy/sender-policy.js';
import { SuppressionList, type SuppressionEntry } from '../policy/suppression.js';
import { formatMailbox, parseMailboxes, type Mailbox } from '../rewrite/header-block.js';
import { fromForMissing, ORIGINAL_RECIPIENTS_HEADER, rewriteEnvelopeSender, rewriteFromMailboxes } from '../rewrite/sender.js';
import { chooseRoute, type RuleCheck } from '../routing/route.js';
import { CONFIG_OPTION, parseCommandLine, UsageError, type Command } from './command.js';

export const route: Command = {
  name: 'route',
  summary: 'explain which route, upstream and rewritten sender a message would get, without sending',
  takesConfig: true,
  usage: `Usage: smarthost route --from SENDER --to RECIPIENT [--to RECIPIENT ...] [options]

Explains, without sending anything, what smarthost would do with a message: whether MAIL FROM is accepted
(sender restrictions), and for each recipient the rule that matches (or the user's, the listener's or the
default upstream), the upstream, the envelope sender and header From after rewriting, test mode, the
suppression list, and why each rule before the match did not match. It calls the same functions as the
daemon, like "postmap -q" or "sendmail -bv".

Options:
  --from SENDER      envelope sender (MAIL FROM); "<>" or "" for the null sender of a bounce
  --to RECIPIENT     envelope recipient; repeat for several (one block each)
  --header-from H    the message's From header, e.g. '"Scanner" <scan@printer.local>'; "" for none
                     (default: the same address as --from)
  --user NAME        the client authenticated as this local user (default: not authenticated)
  --ip ADDRESS       the client's address (default 127.0.0.1)
  --listener NAME    the listener the message arrives on (default: the first one configured)
  --json             print JSON instead of text
${CONFIG_OPTION}
  --help             show this help
`,
  async run(args) {
    const { values, positionals } = parseCommandLine(args, {
      config: { type: 'string' },
      from: { type: 'string' },
      to: { type: 'string', multiple: true },
      'header-from': { type: 'string' },
      user: { type: 'string' },
      ip: { type: 'string' },
      listener: { type: 'string' },
      json: { type: 'boolean' },
    });
    if (values.help) return (console.log(this.usage), 0);
    if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    if (values.from === undefined) throw new UsageError('--from SENDER is required ("<>" for the null sender)');
    if (!values.to || values.to.length === 0) throw new UsageError('at least one --to RECIPIENT is required');
    const ip = values.ip ?? '127.0.0.1';
    if (isIP(ip) === 0) throw new UsageError(`--ip "${ip}" is not an IPv4 or IPv6 address`);

    const config = loadConfig(configPath(values.config));
    const listener = values.listener ?? config.listeners[0]!.name;
    if (!config.listeners.some((l) => l.name === listener)) {
      throw new UsageError(`--listener "${listener}" names no listener; configured: ${config.listeners.map((l) => l.name).join(', ')}`);
    }
    if (values.user !== undefined && !config.users.some((u) => u.name === values.user)) {
      const users = config.users.map((u) => u.name);
      throw new UsageError(`--user "${values.user}" names no local user; ${users.length ? `configured: ${users.join(', ')}` : 'none is configured'}`);
    }
    const list = await SuppressionList.open(config.state.dir);
    await list.close();
    const explanation = explainRoute(config, list, {
      sender: bareAddress(values.from),
      headerFrom: values['header-from'],
      recipients: values.to.map(bareAddress),
      ...(values.user !== undefined ? { user: values.user } : {}),
      clientAddress: normalizeIp(ip),
      listener,
    });
    console.log(values.json ? JSON.stringify(explanation, null, 2) : formatExplanation(explanation));
    return 0;
  },
};

export interface ExplainInput {
  sender: string;
  /** The From header's value; undefined means "the same as the sender", '' means none. */
  headerFrom: string | undefined;
  recipients: readonly string[];
  user?: string;
  clientAddress: string;
  listener: string;
}

export interface RecipientExplanation {
  recipient: string;
  /** Set when the listener would refuse this RCPT TO (bad address, or suppressed with action refuse). */
  rcptRefused?: string;
  /** "routes[1] invoices", "user erp", "listener relay" or "default". */
  matched: string;
  upstream: { name: string; type: string; target: string };
  /** Tried in turn when the upstream is down, over a send limit or answers with a temporary failure. */
  fallbacks?: string[];
  /** The rules tried before the match, each with why it did not match; empty when the user's own upstream decided. */
  notMatched: { rule: string; reasons: string[] }[];
  routesConsulted: boolean;
  envelopeSender: { original: string; rewritten: string; by?: string };
  headerFrom: { original: string[]; rewritten: string[]; changed: boolean; note?: string; replyTo?: string[] };
  testMode?: { to: string; header: string };
  /** Who really gets the message: the recipient, or the test address. */
  deliveredTo: string;
  suppression: { listed: false } | ({ listed: true; action: 'refuse' | 'drop'; effect: string } & SuppressionEntry);
}

export interface RouteExplanation {
  sender: string;
  headerFrom: string[];
  headerFromAssumed: boolean;
  user?: string;
  clientAddress: string;
  listener: string;
  mailFrom: { accepted: true } | { accepted: false; reply: string; why?: string };
  recipients: RecipientExplanation[];
}

const SMTP_DEFAULT_PORT = { none: 25, starttls: 587, tls: 465 } as const;

/**
 * What the daemon would decide for a message with this envelope and client: the same chooseRoute,
 * checkSenderAllowed and rewrite functions the listener and the delivery planner call.
 */
export function explainRoute(config: Readonly<Config>, list: Pick<SuppressionList, 'get'>, input: ExplainInput): RouteExplanation {
  const headerFromAssumed = input.headerFrom === undefined;
  const from: Mailbox[] = headerFromAssumed ? (input.sender ? [{ name: '', address: input.sender }] : []) : parseMailboxes(input.headerFrom!);
  const user = input.user === undefined ? undefined : config.users.find((u) => u.name === input.user);
  return {
    sender: input.sender,
    headerFrom: from.map(formatMailbox),
    headerFromAssumed,
    ...(input.user !== undefined ? { user: input.user } : {}),
    clientAddress: input.clientAddress,
    listener: input.listener,
    mailFrom: mailFromVerdict(config, input),
    recipients: input.recipients.map((recipient) => {
      const { decision, checks } = chooseRoute(config, {
        sender: input.sender,
        headerFrom: from.map((m) => m.address),
        recipient,
        ...(input.user !== undefined ? { user: input.user } : {}),
        clientAddress: input.clientAddress,
        listener: input.listener,
      });
      const options = { rules: config.rewrite, ...(decision.forcedSender ? { forcedSender: decision.forcedSender } : {}) };
      const envelope = rewriteEnvelopeSender(input.sender, options);
      const forcedBy = user?.sender ? `the sender of user ${user.name}` : `the sender of ${decision.via}`;
      const by = decision.forcedSender ? forcedBy : envelope.rule !== undefined ? rewriteRuleName(config, envelope.rule) : undefined;
      const entry = list.get(recipient);
      const rcptRefused = checkEnvelopeAddress(recipient, 'recipient')?.reply ?? (entry && config.suppression.action === 'refuse' ? '550 5.7.1 Recipient is on the suppression list' : undefined);
      return {
        recipient,
        ...(rcptRefused ? { rcptRefused } : {}),
        matched: decision.via,
        upstream: describeUpstream(decision.upstream, config.upstreams[decision.upstream]),
        ...(decision.fallbacks ? { fallbacks: decision.fallbacks } : {}),
        notMatched: checks.filter((c: RuleCheck) => !c.matched).map((c) => ({ rule: c.rule, reasons: c.reasons })),
        routesConsulted: !decision.via.startsWith('user '),
        envelopeSender: { original: input.sender, rewritten: envelope.address, ...(by && envelope.address !== input.sender ? { by } : {}) },
        headerFrom: headerFromAfter(from, input.sender, envelope.address, options),
        ...(decision.testMode ? { testMode: { to: decision.testMode.to, header: ORIGINAL_RECIPIENTS_HEADER } } : {}),
        deliveredTo: decision.testMode?.to ?? recipient,
        suppression: entry
          ? {
              listed: true,
              action: config.suppression.action,
              effect:
                config.suppression.action === 'refuse'
                  ? 'refused at RCPT TO with 550 5.7.1 (and bounced if already queued)'
                  : 'accepted, then dropped at delivery without being sent',
              ...entry,
            }
          : { listed: false },
      };
    }),
  };
}

/** What the listener answers to MAIL FROM: authentication, address syntax, then the sender restrictions. */
function mailFromVerdict(config: Readonly<Config>, input: ExplainInput): RouteExplanation['mailFrom'] {
  const listener = config.listeners.find((l) => l.name === input.listener)!;
  const trusted = listener.role === 'relay' && new NetworkList(listener.networks).contains(input.clientAddress);
  if (input.user === undefined && !trusted) {
    const why =
      listener.role === 'submission'
        ? `listener ${listener.name} is a submission listener: every client must authenticate (give --user)`
        : `client ${input.clientAddress} is in none of listener ${listener.name}'s networks (${listener.networks.join(', ') || 'none'}) and is not authenticated (give --user)`;
    return { accepted: false, reply: '530 5.7.0 Authentication required', why };
  }
  const syntax = checkEnvelopeAddress(input.sender, 'sender');
  if (syntax) return { accepted: false, reply: syntax.reply, why: 'the address itself is refused' };
  const refused = checkSenderAllowed(config, {
    sender: input.sender,
    ...(input.user !== undefined ? { user: input.user } : {}),
    clientAddress: input.clientAddress,
  });
  return refused ? { accepted: false, reply: refused.reply } : { accepted: true };
}

/** The header From (and Reply-To) as the delivery planner would write it (see editHeaderBlock). */
function headerFromAfter(
  from: readonly Mailbox[],
  sender: string,
  rewrittenSender: string,
  options: Parameters<typeof rewriteFromMailboxes>[1],
): RecipientExplanation['headerFrom'] {
  const original = from.map(formatMailbox);
  if (sender === '') return { original, rewritten: original, changed: false, note: 'bounces (null sender) are delivered exactly as written' };
  const missing = from.length === 0;
  const r = missing ? fromForMissing({ original: sender, rewritten: rewrittenSender }, options) : rewriteFromMailboxes(from, options);
  return {
    original,
    rewritten: r.changed ? r.from.map(formatMailbox) : original,
    changed: r.changed,
    ...(missing ? { note: r.changed ? 'the message has no From; the rewritten sender is added' : 'the message has no From' } : {}),
    ...(r.replyTo && r.replyTo.length > 0 ? { replyTo: r.replyTo.map(formatMailbox) } : {}),
  };
}

function rewriteRuleName(config: Readonly<Config>, index: number): string {
  const rule = config.rewrite[index]!;
  return `rewrite[${index}] (${rule.match} -> ${rule.to})`;
}

function describeUpstream(name: string, upstream: UpstreamConfig | undefined): RecipientExplanation['upstream'] {
  if (!upstream) return { name, type: 'unknown', target: 'not configured' };
  switch (upstream.type) {
    case 'outbox':
      return { name, type: upstream.type, target: `files in ${upstream.dir}` };
    case 'smtp':
      return { name, type: upstream.type, target: `${upstream.host} port ${upstream.port ?? SMTP_DEFAULT_PORT[upstream.security]}, ${upstream.security}` };
    default: {
      // API upstreams (Graph, Mailjet, ...): their type says where the mail goes; a host, if they have one.
      const host = 'host' in upstream && typeof upstream.host === 'string' ? upstream.host : undefined;
      return { name, type: upstream.type, target: host ?? `${upstream.type} API` };
    }
  }
}

function bareAddress(text: string): string {
  return text.trim().replace(/^<(.*)>$/, '$1').trim();
}

/** Plain text, one block per recipient, aligned like `postconf`. */
export function formatExplanation(e: RouteExplanation): string {
  const line = (label: string, value: string, indent = '') => `${indent}${label.padEnd(20 - indent.length)}${value}`;
  const out = [
    line('sender', e.sender === '' ? '<> (null sender)' : e.sender),
    line('header From', `${e.headerFrom.join(', ') || '(none)'}${e.headerFromAssumed ? '  (assumed: same as --from; set it with --header-from)' : ''}`),
    line('client', `${e.clientAddress} on listener ${e.listener}, ${e.user === undefined ? 'not authenticated' : `authenticated as ${e.user}`}`),
    line('MAIL FROM', e.mailFrom.accepted ? 'accepted' : `refused: ${e.mailFrom.reply}${e.mailFrom.why ? `  (${e.mailFrom.why})` : ''}`),
  ];
  for (const r of e.recipients) {
    const i = '  ';
    out.push('', `recipient ${r.recipient}`);
    if (r.rcptRefused) out.push(line('RCPT TO', `refused: ${r.rcptRefused}`, i));
    out.push(line('route', r.matched, i));
    out.push(line('upstream', `${r.upstream.name} (${r.upstream.type}, ${r.upstream.target})`, i));
    if (r.fallbacks) out.push(line('fallbacks', `${r.fallbacks.join(', ')} (on a temporary failure, a send limit or a down upstream)`, i));
    const env = r.envelopeSender;
    out.push(line('envelope sender', env.rewritten === env.original ? `${env.original || '<>'} (unchanged)` : `${env.rewritten} (was ${env.original}; by ${env.by})`, i));
    const hf = r.headerFrom;
    const hfText = hf.changed ? `${hf.rewritten.join(', ')} (was ${hf.original.join(', ') || 'none'})` : `${hf.original.join(', ') || '(none)'} (unchanged)`;
    out.push(line('header From', `${hfText}${hf.note ? `; ${hf.note}` : ''}`, i));
    if (hf.replyTo) out.push(line('Reply-To', `${hf.replyTo.join(', ')} (added when the message has none)`, i));
    out.push(line('test mode', r.testMode ? `ON: delivered to ${r.testMode.to} instead; the recipient is listed in ${r.testMode.header}` : 'off', i));
    const s = r.suppression;
    out.push(line('suppression', s.listed ? `LISTED since ${s.addedAt} (${s.reason}): ${s.effect}` : 'not listed', i));
    if (!r.routesConsulted) out.push(line('rules', `not consulted: ${r.matched}'s own upstream beats the route rules`, i));
    else if (r.notMatched.length === 0) out.push(line('rules', r.matched.startsWith('routes[0]') ? 'the first rule matched' : 'none configured', i));
    else {
      out.push(`${i}${r.matched.startsWith('routes[') ? 'rules before the match that did not match:' : 'no rule matched:'}`);
      for (const c of r.notMatched) out.push(`${i}  ${c.rule}: ${c.reasons.join('; ')}`);
    }
  }
  return out.join('\n');
}
