/**
 * The layout of queue/<id>.msg, one file per message, as Postfix keeps one queue file per message:
 *
 *   <the message exactly as accepted> <envelope as serializeRecord writes it> "smarthost-envelope NNNNNNNNNN\n"
 *
 * The fixed-size footer gives the envelope's length, so the envelope is read from the end without scanning the
 * body, and the body is bytes [0, record.size). A file is complete once its mode is 0700 (set beside the last
 * write and made durable by the same fsync), Postfix's MAIL_QUEUE_STAT_READY for a finished queue file
 * (src/global/mail_queue.h): a file a crash cut short has no such mode, even where its last bytes, which the
 * client sent, look like an envelope. As Postfix's mail_stream.c says of its own fchmod, the mode may reach
 * the disk before the last write does if the crash comes before the fsync returns. Such a file ends in client
 * bytes, and an envelope in them cannot name the file's queue ID, whose random part the client first sees in
 * the 250: Spool.load moves it to corrupt/.
 */
import { closeFd, fstatFd, openFd, readFd } from './fd.js';
import { parseRecord, serializeRecord, type MessageRecord } from './record.js';

export const WRITING_MODE = 0o600;
export const COMPLETE_MODE = 0o700;

const FOOTER_TAG = 'smarthost-envelope ';
const FOOTER_LENGTH = FOOTER_TAG.length + 10 + 1;
/** Bytes read from a file's end at once: the footer and any envelope short of a few dozen recipients. */
const TAIL_READ = 8 * 1024;

/** The bytes appended after the body: envelope and footer. */
export function encodeTrailer(record: MessageRecord): Buffer {
  const envelope = serializeRecord(record);
  const footer = Buffer.from(`${FOOTER_TAG}${String(envelope.length).padStart(10, '0')}\n`);
  return Buffer.concat([envelope, footer]);
}

export type MessageFile = { complete: true; record: MessageRecord } | { complete: false };

/**
 * Reads the envelope at the end of a message file. `{ complete: false }` for a file never finished (never
 * acknowledged); throws for a finished one whose envelope is damaged.
 */
export async function readMessageFile(path: string): Promise<MessageFile> {
  const fd = await openFd(path, 'r');
  try {
    const stat = await fstatFd(fd);
    if ((stat.mode & 0o700) !== COMPLETE_MODE) return { complete: false };
    const tailLength = Math.min(stat.size, TAIL_READ);
    let tail = await readAt(fd, tailLength, stat.size - tailLength);
    const footer = tail.toString('latin1', tail.length - FOOTER_LENGTH);
    const match = /^smarthost-envelope (\d{10})\n$/.exec(footer);
    if (!match) throw new Error('the message file has no envelope at its end');
    const envelopeLength = Number(match[1]);
    const bodyLength = stat.size - FOOTER_LENGTH - envelopeLength;
    if (bodyLength < 0) throw new Error('the envelope is longer than the message file');
    if (envelopeLength + FOOTER_LENGTH > tail.length) tail = await readAt(fd, envelopeLength + FOOTER_LENGTH, bodyLength);
    const record = parseRecord(tail.subarray(tail.length - FOOTER_LENGTH - envelopeLength, tail.length - FOOTER_LENGTH));
    if (record.size !== bodyLength) throw new Error(`the envelope says ${record.size} bytes of message, the file holds ${bodyLength}`);
    return { complete: true, record };
  } finally {
    await closeFd(fd);
  }
}

async function readAt(fd: number, length: number, position: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  for (let offset = 0; offset < length; ) {
    const { bytesRead } = await readFd(fd, buffer, offset, length - offset, position + offset);
    if (bytesRead === 0) throw new Error('the message file ended early');
    offset += bytesRead;
  }
  return buffer;
}
