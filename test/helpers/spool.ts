import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { COMPLETE_MODE, encodeTrailer, WRITING_MODE } from '../../src/spool/message-file.js';
import type { MessageRecord } from '../../src/spool/record.js';

/**
 * Writes queue/<id>.msg as Spool.store leaves it, for tests that start a daemon on a queue they made;
 * `complete: false` leaves it as a crash during DATA would.
 */
export async function writeQueuedMessage(queueDir: string, record: MessageRecord, body: string | Buffer, options: { complete?: boolean } = {}): Promise<string> {
  const data = Buffer.from(body);
  const path = join(queueDir, `${record.id}.msg`);
  await writeFile(path, Buffer.concat([data, encodeTrailer({ ...record, size: data.length })]));
  await chmod(path, options.complete === false ? WRITING_MODE : COMPLETE_MODE);
  return path;
}
