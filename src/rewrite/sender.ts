import type { CentralSender, RewriteRule } from '../config/schema.js';
import { expandTarget, matchAddress } from '../routing/address-pattern.js';
import { fieldValue, formatField, formatMailbox, parseMailboxes, splitHeaderFields, type Mailbox } from './header-block.js';

/** Header naming the envelope sender as the client gave it, when smarthost rewrote it. */
export const ORIGINAL_SENDER_HEADER = 'X-Smarthost-Original-Sender';
/** Header keeping the From field as the client wrote it, when smarthost rewrote it. */
export const ORIGINAL_FROM_HEADER = 'X-Smarthost-Original-From';
/** Header listing the real recipients of a message redirected by test mode. */
export const ORIGINAL_RECIPIENTS_HEADER = 'X-Smarthost-Original-Recipients';

export interface SenderRewriteOptions {
  rules: readonly RewriteRule[];
  /** A central sender forced by the user or the route: replaces envelope and header sender alike. */
  forcedSender?: CentralSender;
}

/** The envelope sender after alias rules (the null sender of a bounce is never rewritten). */
export function rewriteEnvelopeSender(sender: string, o: SenderRewriteOptions): { address: string; rule?: number } {
  if (sender === '') return { address: sender };
  if (o.forcedSender) return { address: o.forcedSender.address };
  for (const [i, rule] of o.rules.entries()) {
    if (rule.apply === 'header') continue;
    const m = matchAddress(rule.match, sender);
    if (m.matched) return { address: expandTarget(rule.to, m.captures), rule: i };
  }
  return { address: sender };
}

export interface FromRewrite {
  from: Mailbox[];
  changed: boolean;
  /** The Reply-To a message without one gets: the original From, or the central sender's fixed reply address. */
  replyTo?: Mailbox[];
}

/** The header From after alias rules: each mailbox is rewritten by the first header rule that matches it. */
export function rewriteFromMailboxes(from: readonly Mailbox[], o: SenderRewriteOptions): FromRewrite {
  const forced = o.forcedSender;
  if (forced) {
    const out = from.map((mailbox) => ({ name: forced.name ?? mailbox.name, address: forced.address }));
    const changed = out.some((m, i) => m.address !== from[i]!.address || m.name !== from[i]!.name);
    // A fixed reply address is the route's or user's own choice, so it holds whether or not From changed.
    const replyTo = forced.replyTo ? [{ name: '', address: forced.replyTo }] : changed ? [...from] : undefined;
    return { from: out, changed, ...(replyTo ? { replyTo } : {}) };
  }
  let changed = false;
  let replyToOriginal = false;
  const out = from.map((mailbox) => {
    for (const rule of o.rules) {
      if (rule.apply === 'envelope') continue;
      const m = matchAddress(rule.match, mailbox.address);
      if (!m.matched) continue;
      changed = true;
      replyToOriginal ||= rule.replyToOriginal;
      return { name: displayName(rule, mailbox), address: expandTarget(rule.to, m.captures) };
    }
    return mailbox;
  });
  return { from: out, changed, ...(replyToOriginal ? { replyTo: [...from] } : {}) };
}

/**
 * The From (and Reply-To) a message that has no From gets, so upstreams that insist on From accept it: the
 * rewritten envelope sender, when rewriting changed it.
 */
export function fromForMissing(envelope: { original: string; rewritten: string }, o: SenderRewriteOptions): FromRewrite {
  if (envelope.rewritten === '' || envelope.rewritten === envelope.original) return { from: [], changed: false };
  const forced = o.forcedSender;
  return {
    from: [{ name: forced?.name ?? '', address: envelope.rewritten }],
    changed: true,
    ...(forced?.replyTo ? { replyTo: [{ name: '', address: forced.replyTo }] } : {}),
  };
}

function displayName(rule: RewriteRule, original: Mailbox): string {
  if (rule.displayName === 'keep') return original.name;
  if (rule.displayName === 'derive') return original.name || original.address;
  return rule.displayName.set;
}

export interface HeaderEdits {
  options: SenderRewriteOptions;
  /** Envelope sender before and after rewriting, for the trace header. */
  envelope: { original: string; rewritten: string };
  /** Test mode: the recipients the message was really addressed to. */
  originalRecipients?: readonly string[];
}

/**
 * Applies sender rewriting and test mode to a header block; every field it does not rewrite keeps its
 * exact bytes, and the body is never part of this. Pure: returns the new block.
 */
export function editHeaderBlock(block: Buffer, edits: HeaderEdits): Buffer {
  const fields = splitHeaderFields(block);
  const added: Buffer[] = [];
  if (edits.envelope.original !== edits.envelope.rewritten) added.push(formatField(ORIGINAL_SENDER_HEADER, `<${edits.envelope.original}>`));
  if (edits.originalRecipients) added.push(formatField(ORIGINAL_RECIPIENTS_HEADER, edits.originalRecipients.join(', ')));

  const fromFields = fields.filter((f) => f.name === 'from');
  const original = fromFields.flatMap((f) => parseMailboxes(fieldValue(f)));
  const rewritten = fromFields.length === 0 ? fromForMissing(edits.envelope, edits.options) : rewriteFromMailboxes(original, edits.options);
  const replacement: Buffer[] = [];
  if (rewritten.changed) {
    replacement.push(formatField('From', rewritten.from.map(formatMailbox).join(', ')));
    added.push(...fromFields.map((f) => Buffer.concat([Buffer.from(`${ORIGINAL_FROM_HEADER}:`), f.raw.subarray(f.raw.indexOf(':') + 1)])));
  }
  const addReplyTo = rewritten.replyTo && rewritten.replyTo.length > 0 && !fields.some((f) => f.name === 'reply-to');
  if (addReplyTo) (rewritten.changed ? replacement : added).push(formatField('Reply-To', rewritten.replyTo!.map(formatMailbox).join(', ')));
  if (added.length === 0 && replacement.length === 0) return block;

  const out: Buffer[] = [...added];
  let placed = false;
  for (const f of fields) {
    // From fields are dropped only when there is a replacement; otherwise (envelope-only or test-mode edits) they stay.
    if (f.name !== 'from' || replacement.length === 0) out.push(f.raw);
    else if (!placed) (out.push(...replacement), (placed = true));
  }
  if (!placed) out.push(...replacement);
  return Buffer.concat(out);
}
