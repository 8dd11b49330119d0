/**
 * The queue as an administrator sees and changes it (`smarthost queue ...` through the admin API): pure
 * views of records, and the record changes behind hold, release, retry and bounce. The scheduler applies the
 * changes (DeliveryScheduler.change), so none races a delivery attempt.
 */
import type { MessageRecord, RecipientState, Reply } from '../spool/record.js';
import { queueState, type QueueState } from './metrics.js';

export interface QueueEntry {
  id: string;
  size: number;
  /** ISO time of arrival. */
  arrival: string;
  sender: string;
  recipients: string[];
  state: QueueState;
  inFlight: boolean;
  /** The most recent reply of a recipient still pending, as "451 4.4.1 text". */
  lastError?: string;
}

export interface QueueDetail extends QueueEntry {
  messageId?: string;
  client: MessageRecord['client'];
  route?: string;
  headers: string;
  recipientStates: (Omit<RecipientState, 'nextAttemptAt' | 'lastReply'> & { nextAttemptAt?: string; lastReply?: string })[];
}

export function formatReply(r: Reply | undefined): string | undefined {
  return r ? `${r.code} ${r.enhanced} ${r.text}` : undefined;
}

export function queueEntry(record: MessageRecord, inFlight: boolean): QueueEntry {
  const pending = record.recipients.filter((r) => r.status === 'pending');
  const lastError = formatReply([...pending].reverse().find((r) => r.lastReply && r.lastReply.code >= 400)?.lastReply);
  return {
    id: record.id,
    size: record.size,
    arrival: new Date(record.receivedAt).toISOString(),
    sender: record.sender,
    recipients: record.recipients.map((r) => r.address),
    state: queueState(record),
    inFlight,
    ...(lastError ? { lastError } : {}),
  };
}

export function queueDetail(record: MessageRecord, inFlight: boolean, headers: Buffer): QueueDetail {
  return {
    ...queueEntry(record, inFlight),
    ...(record.messageId ? { messageId: record.messageId } : {}),
    client: record.client,
    ...(record.route ? { route: record.route } : {}),
    headers: headers.toString('utf8'),
    recipientStates: record.recipients.map(({ nextAttemptAt, lastReply, ...r }) => ({
      ...r,
      ...(r.status === 'pending' ? { nextAttemptAt: new Date(nextAttemptAt).toISOString() } : {}),
      ...(lastReply ? { lastReply: formatReply(lastReply)! } : {}),
    })),
  };
}

export function hold(record: MessageRecord): MessageRecord {
  return { ...record, held: true };
}

export function release(record: MessageRecord): MessageRecord {
  const { held: _held, ...rest } = record;
  return rest;
}

/** Every pending recipient due now (Postfix's postqueue -i); a held message stays held. */
export function retryNow(record: MessageRecord, now: number): MessageRecord {
  return { ...record, recipients: record.recipients.map((r) => (r.status === 'pending' ? { ...r, nextAttemptAt: now } : r)) };
}

export const ADMIN_BOUNCE: Reply = { code: 554, enhanced: '5.0.0', text: 'bounced by the administrator' };

/** Every pending recipient fails with 5.0.0; the scheduler then sends the DSN. Answers the recipients bounced. */
export function bounce(record: MessageRecord): { record: MessageRecord; bounced: RecipientState[] } {
  const bounced = record.recipients.filter((r) => r.status === 'pending');
  const recipients = record.recipients.map((r): RecipientState => (r.status === 'pending' ? { ...r, status: 'failed', lastReply: ADMIN_BOUNCE, notified: false } : r));
  return { record: { ...record, recipients }, bounced };
}
