/**
 * What Gmail's SMTP replies mean for smarthost, as data: a new Gmail error is one row. Sources:
 * - "Gmail SMTP errors and codes" (Google Workspace Admin Help)
 *   https://support.google.com/a/answer/3726730
 * - "Gmail sending limits in Google Workspace": after reaching a limit a user "can't send new messages for up
 *   to 24 hours"; limits per day apply over a rolling 24-hour period
 *   https://support.google.com/a/answer/166852
 * - "SMTP relay service error messages" (smtp-relay.gmail.com's daily limits, per user and per customer)
 *   https://support.google.com/a/answer/6140680
 */
import type { SmtpError } from '../../smtp-error.js';
import { classifyReply, type ClassifiedReply, type ReplyRow } from '../reply-table.js';

/** Gmail answers 550 for a limit that lifts by itself within a day: deferred, and alerted since mail waits for hours. */
export const GMAIL_REPLIES: readonly ReplyRow[] = [
  {
    // 550 5.4.5 Daily SMTP relay limit exceeded for user (and 5.7.1 ... for customer), smtp-relay.gmail.com.
    pattern: /^5\d\d 5\.\d+\.\d+\b.*Daily SMTP relay limit exceeded/i,
    action: 'alert',
    explanation:
      'Gmail refused the message: the daily SMTP relay limit is reached; it lifts within 24 hours (a rolling window), so the message stays queued and is retried, not bounced',
  },
  {
    // 550 5.4.5 Daily user sending limit exceeded (older wording: Daily sending quota exceeded), smtp.gmail.com.
    pattern: /^5\d\d 5\.4\.5\b/,
    action: 'alert',
    explanation:
      'Gmail refused the message: the mailbox reached its daily sending limit; it lifts within 24 hours (a rolling window), so the message stays queued and is retried, not bounced',
  },
];

export function classifyGmailReply(error: SmtpError): ClassifiedReply {
  return classifyReply(error, GMAIL_REPLIES, 'Gmail');
}
