import { isAscii } from 'node:buffer';
import { Readable } from 'node:stream';
import type { Logger } from '../log.js';
import { createRecord, type MessageRecord } from '../spool/record.js';
import { newQueueId } from '../spool/queue-id.js';
import type { Spool } from '../spool/spool.js';
import type { Clock } from './clock.js';
import { buildDsn } from './dsn.js';

/** The listener name recorded for messages smarthost writes itself. */
export const LOCAL_SOURCE = 'smarthost';

/**
 * Turns permanently failed recipients into one RFC 3464 bounce to the envelope sender, queued through
 * the relay's own spool and delivery path. A bounce's own failures are never bounced (that is how
 * loops start); they are logged and dropped.
 */
export class Bouncer {
  constructor(
    private readonly o: {
      spool: Spool;
      hostname: string;
      clock: Clock;
      log: Logger;
      enqueue: (record: MessageRecord) => void;
      /** The host behind an upstream name, for Remote-MTA; undefined when there is none (e.g. an outbox). */
      remoteMta?: (upstream: string) => string | undefined;
    },
  ) {}

  async notify(record: MessageRecord): Promise<MessageRecord> {
    const failed = record.recipients.filter((r) => r.status === 'failed' && !r.notified);
    if (failed.length === 0) return record;
    const notified = { ...record, recipients: record.recipients.map((r) => (failed.includes(r) ? { ...r, notified: true } : r)) };
    if (record.sender === '') {
      this.o.log.warn(
        { event: 'bounce.dropped', queueId: record.id, recipients: failed.map((r) => r.address), reply: failed[0]?.lastReply },
        'undeliverable bounce dropped',
      );
      return notified;
    }
    const now = this.o.clock.now();
    const dsn = buildDsn({
      reportingMta: this.o.hostname,
      queueId: record.id,
      arrivalDate: new Date(record.receivedAt),
      originalSender: record.sender,
      originalHeaders: await this.o.spool.readHeaderBlock(record),
      now: new Date(now),
      failed: failed.map((r) => ({
        recipient: r.address,
        status: r.lastReply?.enhanced ?? '5.0.0',
        diagnostic: r.lastReply ? `${r.lastReply.code} ${r.lastReply.enhanced} ${r.lastReply.text}` : 'unknown error',
        remoteMta: r.upstream === undefined ? undefined : this.o.remoteMta?.(r.upstream),
      })),
    });
    const bounce = createRecord({
      id: newQueueId(now),
      sender: '',
      recipients: [record.sender],
      receivedAt: now,
      size: dsn.length,
      client: { address: '127.0.0.1', listener: LOCAL_SOURCE, tls: false },
      // The original header fields it quotes may be 8-bit.
      ...(isAscii(dsn) ? {} : { eightBit: true }),
    });
    await this.o.spool.store(Readable.from([dsn]), bounce);
    this.o.enqueue(bounce);
    this.o.log.info(
      { event: 'bounce.queued', queueId: record.id, bounceId: bounce.id, sender: record.sender, recipients: failed.map((r) => r.address) },
      'delivery status notification queued',
    );
    return notified;
  }
}
