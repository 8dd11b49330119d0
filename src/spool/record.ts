import { createHash } from 'node:crypto';
import { z } from 'zod';

const reply = z.strictObject({ code: z.int(), enhanced: z.string(), text: z.string() });

const recipientState = z.strictObject({
  address: z.string(),
  /** dropped: on the suppression list (action drop), never sent and never reported. */
  status: z.enum(['pending', 'delivered', 'failed', 'dropped']),
  attempts: z.int().nonnegative(),
  /** Epoch milliseconds; meaningful while pending. */
  nextAttemptAt: z.number(),
  lastReply: reply.optional(),
  upstream: z.string().optional(),
  /** For a failed recipient: its DSN is safely queued (or none is due, for a bounce's own recipients). */
  notified: z.boolean().optional(),
});

const messageRecord = z.strictObject({
  version: z.literal(1),
  id: z.string(),
  /** Envelope sender; '' is the null sender. */
  sender: z.string(),
  recipients: z.array(recipientState).min(1),
  /** Epoch milliseconds. */
  receivedAt: z.number(),
  size: z.int().nonnegative(),
  messageId: z.string().optional(),
  /** Addresses in the header From, for routes that match on it. */
  headerFrom: z.array(z.string()).optional(),
  client: z.strictObject({
    address: z.string(),
    hostname: z.string().optional(),
    helo: z.string().optional(),
    user: z.string().optional(),
    listener: z.string(),
    tls: z.boolean(),
  }),
  /** Put on hold by an administrator (`smarthost queue hold`): never attempted until released. */
  held: z.boolean().optional(),
  /** A route forced by name (`smarthost send-test --route`), instead of the route rules. */
  route: z.string().optional(),
  /**
   * Some byte of the message is above 127: SMTP upstreams get BODY=8BITMIME where they offer it (RFC 6152).
   * Absent: 7-bit, or a record from before this was kept (sent without BODY=, as then).
   */
  eightBit: z.boolean().optional(),
  /**
   * The client sent it with SMTPUTF8 and its header fields carry UTF-8 (RFC 6531, 6532): an SMTP upstream that
   * does not offer SMTPUTF8 cannot take it. Absent on records from before this was kept.
   */
  utf8Headers: z.boolean().optional(),
  /**
   * The tag header's value (tags.header) as the client sent it, trimmed, runs of white space made one and cut
   * short (tagValue): delivery counts outcomes per tag without reading the message again, and makes the label with
   * the allow-list in force when it counts. Absent: no such header, tags not configured, or a record from before
   * this was kept (counted as "none").
   */
  tag: z.string().optional(),
});

export type Reply = z.output<typeof reply>;
export type RecipientState = z.output<typeof recipientState>;
export type MessageRecord = z.output<typeof messageRecord>;

/** The envelope file holds the record and a SHA-256 of it, so a torn or edited file is recognised. */
export function serializeRecord(record: MessageRecord): Buffer {
  const body = JSON.stringify(record);
  return Buffer.from(`{"sha256":"${sha256(body)}","record":${body}}\n`);
}

/** What serializeRecord writes around the record's JSON: `{"sha256":"<64 hex>","record":` ... `}\n`. */
const PREFIX = Buffer.from('{"sha256":"');
const INFIX = Buffer.from('","record":');
const BODY_START = PREFIX.length + 64 + INFIX.length;

export function parseRecord(data: Buffer): MessageRecord {
  // A file as serializeRecord wrote it: the checksum is over the record's bytes as they are, which saves
  // parsing the whole file and stringifying the record again (start-up reads every envelope in the queue).
  if (data.length > BODY_START + 2 && data.subarray(0, PREFIX.length).equals(PREFIX) && data.subarray(PREFIX.length + 64, BODY_START).equals(INFIX)) {
    const end = data[data.length - 1] === 0x0a ? data.length - 2 : data.length - 1;
    if (data[end] === 0x7d) {
      const body = data.toString('utf8', BODY_START, end);
      if (data.toString('latin1', PREFIX.length, PREFIX.length + 64) === sha256(body)) return messageRecord.parse(JSON.parse(body));
    }
  }
  // Anything else (whitespace added by hand, a torn file) is judged as before: parsed, stringified, compared.
  const outer = JSON.parse(data.toString('utf8')) as { sha256?: unknown; record?: unknown };
  const body = JSON.stringify(outer.record);
  if (typeof outer.sha256 !== 'string' || outer.sha256 !== sha256(body)) throw new Error('checksum mismatch');
  return messageRecord.parse(outer.record);
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export function pendingRecipients(record: MessageRecord): RecipientState[] {
  return record.recipients.filter((r) => r.status === 'pending');
}

/** When the message next needs attention: the earliest pending recipient, or now if a DSN is still owed. */
export function nextDueAt(record: MessageRecord): number | undefined {
  if (record.recipients.some((r) => r.status === 'failed' && !r.notified)) return 0;
  const pending = pendingRecipients(record);
  if (pending.length === 0) return undefined;
  return Math.min(...pending.map((r) => r.nextAttemptAt));
}

/** A new record: every recipient pending and due at once. */
export function createRecord(fields: Omit<MessageRecord, 'version' | 'recipients' | 'size'> & { recipients: readonly string[]; size?: number }): MessageRecord {
  const { recipients, size = 0, ...rest } = fields;
  return {
    version: 1,
    ...rest,
    size,
    recipients: recipients.map((address) => ({ address, status: 'pending', attempts: 0, nextAttemptAt: fields.receivedAt })),
  };
}
