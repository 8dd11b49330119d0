/**
 * The small-message path: the spooled message with its recipient headers made exact (recipients.ts),
 * base64-encoded as the body of POST /users/{mailbox}/sendMail with Content-Type text/plain
 * ("provide the MIME content as a base64-encoded string in the request body",
 * https://learn.microsoft.com/graph/api/user-sendmail). The body bytes are sent as spooled.
 */
import type { Readable } from 'node:stream';
import { MAX_MIME_MESSAGE, transportFor } from './limits.js';
import { exactRecipientHeaders, splitMessage } from './recipients.js';

/** Room for the header rewrite to grow a message (a Bcc field for many recipients). */
const HEADER_GROWTH = 64 * 1024;

/**
 * The message as it would go to Graph in MIME format, or undefined when it is too big for one request.
 * A message whose spooled size already rules MIME out is not read at all; otherwise at most
 * MAX_MIME_MESSAGE + 64 KiB are read.
 */
export async function mimeForGraph(size: number, open: () => Readable, recipients: readonly string[]): Promise<Buffer | undefined> {
  if (size > MAX_MIME_MESSAGE + HEADER_GROWTH) return undefined;
  const raw = await readAtMost(open(), MAX_MIME_MESSAGE + HEADER_GROWTH);
  if (!raw) return undefined;
  const { header, body } = splitMessage(raw);
  const exact = exactRecipientHeaders(header, recipients);
  const mime = Buffer.concat([exact.block, Buffer.from('\r\n'), body]);
  return transportFor(mime.length) === 'mime' ? mime : undefined;
}

/** The whole stream, or undefined (and the stream destroyed) once it passes `max` bytes. */
export async function readAtMost(stream: Readable, max: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of stream) {
      const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
      total += buf.length;
      if (total > max) return undefined;
      chunks.push(buf);
    }
  } finally {
    stream.destroy();
  }
  return Buffer.concat(chunks, total);
}
