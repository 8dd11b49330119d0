import type { Config } from '../config/schema.js';
import { rewriteEnvelopeSender } from '../rewrite/sender.js';
import { expandTarget, matchAddress, matchesAny } from '../routing/address-pattern.js';
import { SmtpError } from '../smtp-error.js';
import { NetworkList } from './networks.js';

type PolicyConfig = Pick<Config, 'users' | 'senderRestrictions' | 'rewrite'>;

const networkLists = new WeakMap<readonly string[], NetworkList>();

/**
 * Whether a client may use this envelope sender: the user's allowedSenders and every senderRestrictions
 * entry whose network holds the client must allow it, and so must every address an alias rule would turn
 * it into, so rewriting can never become a way around a restriction. Pure; answers 553 5.7.1 naming the
 * policy that refused.
 */
export function checkSenderAllowed(config: PolicyConfig, input: { sender: string; user?: string; clientAddress: string }): SmtpError | undefined {
  const candidates = [input.sender, ...aliasTargets(config, input.sender)];
  const user = input.user === undefined ? undefined : config.users.findIndex((u) => u.name === input.user);
  // A user not in the config has no allowedSenders to check against: refused, never let through unchecked.
  if (user === -1) return new SmtpError(553, '5.7.1', `Sender <${input.sender}> is not allowed: user ${input.user} is not configured`);
  if (user !== undefined) {
    const allowed = config.users[user]!.allowedSenders;
    const refused = allowed ? candidates.find((c) => !matchesAny(allowed, c)) : undefined;
    if (refused !== undefined) return refuse(refused, input.sender, `user ${input.user} (users[${user}].allowedSenders)`);
  }
  for (const [i, restriction] of config.senderRestrictions.entries()) {
    let networks = networkLists.get(restriction.network);
    if (!networks) networkLists.set(restriction.network, (networks = new NetworkList(restriction.network)));
    if (!networks.contains(input.clientAddress)) continue;
    const refused = candidates.find((c) => !matchesAny(restriction.allowedSenders, c));
    if (refused !== undefined) return refuse(refused, input.sender, `clients in ${restriction.network.join(', ')} (senderRestrictions[${i}])`);
  }
  return undefined;
}

/**
 * The header From counterpart of checkSenderAllowed, for the end of DATA (the header is unknown at MAIL
 * FROM): every address a header alias rule would turn a From mailbox into must be allowed for the client,
 * else rewriting the From (apply: header or both) would still let it appear as a forbidden address.
 * Mailboxes no rule rewrites are not checked, as restrictions are about the envelope sender. 550 5.7.1.
 */
export function checkHeaderFromAllowed(
  config: PolicyConfig,
  input: { headerFrom: readonly string[]; user?: string; clientAddress: string },
): SmtpError | undefined {
  for (const from of input.headerFrom) {
    const rule = config.rewrite.find((r) => r.apply !== 'envelope' && matchAddress(r.match, from).matched);
    if (!rule) continue;
    const target = expandTarget(rule.to, matchAddress(rule.match, from).captures);
    const refused = checkSenderAllowed({ ...config, rewrite: [] }, { ...input, sender: target });
    if (refused) return new SmtpError(550, '5.7.1', `Header From <${from}> (rewritten to <${target}>) ${refused.message.replace(/^Sender <[^>]*> /, '')}`);
  }
  return undefined;
}

function aliasTargets(config: PolicyConfig, sender: string): string[] {
  if (sender === '') return [];
  const targets = new Set<string>();
  const envelope = rewriteEnvelopeSender(sender, { rules: config.rewrite }).address;
  if (envelope !== sender) targets.add(envelope);
  for (const rule of config.rewrite) {
    if (rule.apply === 'envelope') continue;
    const m = matchAddress(rule.match, sender);
    if (m.matched) {
      targets.add(expandTarget(rule.to, m.captures));
      break;
    }
  }
  return [...targets];
}

function refuse(address: string, sender: string, policy: string): SmtpError {
  const what = address === sender ? `Sender <${sender}>` : `Sender <${sender}> (rewritten to <${address}>)`;
  return new SmtpError(553, '5.7.1', `${what} is not allowed for ${policy}`);
}
