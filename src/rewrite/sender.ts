import type { RewriteRule } from '../config/schema.js';
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
  forcedSender?: string;
}

/** The envelope sender after alias rules (the null sender of a bounce is never rewritten). */
export function rewriteEnvelopeSender(sender: string, o: SenderRewriteOptions): { address: string; rule?: number } {
  if (sender === '') return { address: sender };
  if (o.forcedSender) return { address: o.forcedSender };
  for (const [i, rule] of o.rules.entries()) {
    if (rule.apply === 'header') continue;
    const m = matchAddress(rule.match, sender);
    if (m.matched) return { address: expandTarget(rule.to, m.captures), rule: i };
  }
  return { address: sender };
}

/** The header From after alias rules: each mailbox is rewritten by the first header rule that matches it. */
export function rewriteFromMailboxes(
  from: readonly Mailbox[],
  o: SenderRewriteOptions,
): { from: Mailbox[]; changed: boolean; replyToOriginal: boolean } {
  let changed = false;
  let replyToOriginal = false;
  const out = from.map((mailbox) => {
    if (o.forcedSender) {
      changed ||= mailbox.address !== o.forcedSender;
      replyToOriginal = true;
      return { name: mailbox.name, address: o.forcedSender };
    }
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
  return { from: out, changed, replyToOriginal };
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
  const rewritten = rewriteFromMailboxes(original, edits.options);
  let replacement: Buffer[] = [];
  if (fromFields.length === 0 && edits.envelope.rewritten !== '' && edits.envelope.rewritten !== edits.envelope.original) {
    // A message without From gets the rewritten sender, so upstreams that insist on From accept it.
    replacement = [formatField('From', `<${edits.envelope.rewritten}>`)];
  } else if (rewritten.changed) {
    replacement = [formatField('From', rewritten.from.map(formatMailbox).join(', '))];
    added.push(...fromFields.map((f) => Buffer.concat([Buffer.from(`${ORIGINAL_FROM_HEADER}:`), f.raw.subarray(f.raw.indexOf(':') + 1)])));
    if (rewritten.replyToOriginal && !fields.some((f) => f.name === 'reply-to') && original.length > 0) {
      replacement.push(formatField('Reply-To', original.map(formatMailbox).join(', ')));
    }
  }
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
