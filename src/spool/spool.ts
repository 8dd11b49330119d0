import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { SmtpError } from '../smtp-error.js';
import { DirSync } from './dir-sync.js';
import { QUEUE_ID } from './queue-id.js';
import { parseRecord, serializeRecord, type MessageRecord } from './record.js';

/** Envelope files read at once while the queue is loaded at start-up. */
const RECOVERY_READS = 32;

/** Body bytes gathered before one writev: a 4 KiB message is one write, a large one a write per 256 KiB. */
const WRITE_BATCH = 256 * 1024;

/**
 * The spool keeps each message as two files in queue/: <id>.eml, the body exactly as accepted and never
 * rewritten, and <id>.json, the envelope and delivery state, replaced atomically on every change. A message
 * exists once its .json is in queue/; both files are written and fsync'ed in incoming/ first, the body is
 * renamed before the envelope that points at it, and the directory is fsync'ed before the client hears 250.
 */
export class Spool {
  readonly incomingDir: string;
  readonly queueDir: string;
  readonly corruptDir: string;
  readonly #queueSync: DirSync;

  private constructor(readonly dir: string) {
    this.incomingDir = join(dir, 'incoming');
    this.queueDir = join(dir, 'queue');
    this.corruptDir = join(dir, 'corrupt');
    this.#queueSync = new DirSync(this.queueDir);
  }

  static async open(dir: string): Promise<Spool> {
    const spool = new Spool(dir);
    for (const d of [spool.incomingDir, spool.queueDir, spool.corruptDir]) await mkdir(d, { recursive: true });
    return spool;
  }

  bodyPath(id: string): string {
    return join(this.queueDir, `${id}.eml`);
  }

  openBody(id: string, range?: { start?: number; end?: number }): Readable {
    return createReadStream(this.bodyPath(id), range);
  }

  /**
   * Streams a message into the spool and returns once it is durable. `finish` is called after the body is
   * written, to complete the record from what the stream learned (size, Message-ID). Errors thrown by the
   * source (an SmtpError such as a loop or size refusal) pass through; storage failures become 451 4.3.0.
   * Either way nothing is left behind.
   */
  async store(source: Readable, record: MessageRecord, finish?: (record: MessageRecord) => void): Promise<MessageRecord> {
    const tmpBody = join(this.incomingDir, `${record.id}.eml`);
    const tmpMeta = join(this.incomingDir, `${record.id}.json`);
    let body: FileHandle | undefined;
    // The iterator below reports the source's first error; one emitted after it stopped reading (a stage that
    // fails again while being destroyed) is the same failure, not an uncaught exception.
    source.on('error', ignore);
    try {
      body = await open(tmpBody, 'wx');
      await writeStream(source, body);
      finish?.(record);
      // Both files fsync'ed (concurrently) before either is renamed; the body goes into queue/ first.
      // allSettled: neither write may still be running when a failure's cleanup removes the files.
      const written = await Promise.allSettled([body.sync(), writeDurably(tmpMeta, serializeRecord(record))]);
      for (const w of written) if (w.status === 'rejected') throw w.reason;
      const closing = body;
      body = undefined;
      await closing.close();
      await rename(tmpBody, this.bodyPath(record.id));
      await rename(tmpMeta, this.#metaPath(record.id));
      await this.#queueSync.sync();
      return record;
    } catch (err) {
      source.destroy();
      await body?.close().catch(() => {});
      await Promise.all([tmpBody, tmpMeta, this.bodyPath(record.id), this.#metaPath(record.id)].map((p) => rm(p, { force: true }).catch(() => {})));
      if (err instanceof SmtpError) throw err;
      throw new SmtpError(451, '4.3.0', 'Local error in processing: could not queue the message, try again later', { cause: err });
    }
  }

  /** Replaces the envelope file atomically; the body is never touched. */
  async update(record: MessageRecord): Promise<void> {
    const tmp = join(this.incomingDir, `${record.id}.json.update`);
    await writeDurably(tmp, serializeRecord(record));
    await rename(tmp, this.#metaPath(record.id));
    await this.#queueSync.sync();
  }

  /** Removes a finished message: envelope first, so a crash in between leaves only an orphan body. */
  async remove(id: string): Promise<void> {
    await unlink(this.#metaPath(id)).catch(ignoreMissing);
    await unlink(this.bodyPath(id)).catch(ignoreMissing);
  }

  /** The message's header block (up to the blank line), for bounces that quote it. */
  async readHeaderBlock(id: string, limit = 256 * 1024): Promise<Buffer> {
    const handle = await open(this.bodyPath(id), 'r');
    try {
      const { buffer, bytesRead } = await handle.read({ buffer: Buffer.alloc(limit), position: 0 });
      const data = buffer.subarray(0, bytesRead);
      const end = data.indexOf('\r\n\r\n');
      return end === -1 ? data : data.subarray(0, end);
    } finally {
      await handle.close();
    }
  }

  async readRecord(id: string): Promise<MessageRecord> {
    return parseRecord(await readFile(this.#metaPath(id)));
  }

  /**
   * Start-up scan. Files in incoming/ belong to messages never acknowledged and are removed; a body without
   * an envelope likewise. A damaged envelope (and its body) moves to corrupt/ and is reported, never fatal.
   */
  async recover(): Promise<{ records: MessageRecord[]; removed: string[]; corrupt: { id: string; reason: string }[] }> {
    const removed: string[] = [];
    for (const name of await readdir(this.incomingDir)) {
      await rm(join(this.incomingDir, name), { force: true });
      removed.push(name);
    }
    const names = new Set(await readdir(this.queueDir));
    const ids = [...names].filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -5)).filter((id) => QUEUE_ID.test(id)).sort();
    for (const name of names) {
      const id = name.slice(0, -4);
      if (name.endsWith('.eml') && QUEUE_ID.test(id) && !names.has(`${id}.json`)) {
        await rm(join(this.queueDir, name), { force: true });
        removed.push(name);
      }
    }
    const loaded: (MessageRecord | undefined)[] = new Array(ids.length);
    const corrupt: { id: string; reason: string }[] = [];
    // Reads overlap (a large queue loads in a fraction of the time one by one takes); results keep ID order.
    let next = 0;
    const worker = async () => {
      for (let i = next++; i < ids.length; i = next++) {
        const id = ids[i]!;
        try {
          if (!names.has(`${id}.eml`)) throw new Error('message body file is missing');
          const record = parseRecord(await readFile(join(this.queueDir, `${id}.json`)));
          if (record.id !== id) throw new Error(`record names another queue ID (${record.id})`);
          loaded[i] = record;
        } catch (err) {
          corrupt.push({ id, reason: (err as Error).message });
          await this.#quarantine(id, names);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(RECOVERY_READS, ids.length) }, worker));
    return { records: loaded.filter((r): r is MessageRecord => r !== undefined), removed, corrupt };
  }

  async #quarantine(id: string, names: Set<string>): Promise<void> {
    for (const ext of ['json', 'eml']) {
      if (names.has(`${id}.${ext}`)) await rename(join(this.queueDir, `${id}.${ext}`), join(this.corruptDir, `${id}.${ext}`));
    }
  }

  #metaPath(id: string): string {
    return join(this.queueDir, `${id}.json`);
  }
}

/**
 * Copies `source` into `handle`, gathering chunks into one writev per WRITE_BATCH bytes. The source's own
 * error (or a premature close) is thrown as is.
 */
async function writeStream(source: Readable, handle: FileHandle): Promise<void> {
  let batch: Buffer[] = [];
  let batched = 0;
  for await (const chunk of source as AsyncIterable<Buffer | string>) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    batch.push(buffer);
    batched += buffer.length;
    if (batched >= WRITE_BATCH) {
      await writeAll(handle, batch, batched);
      batch = [];
      batched = 0;
    }
  }
  if (batched > 0) await writeAll(handle, batch, batched);
}

async function writeAll(handle: FileHandle, chunks: Buffer[], length: number): Promise<void> {
  const { bytesWritten } = await handle.writev(chunks);
  if (bytesWritten === length) return;
  // A short write (a full disk reports ENOSPC on the next one): the rest, from where it stopped.
  const rest = Buffer.concat(chunks).subarray(bytesWritten);
  for (let offset = 0; offset < rest.length; ) {
    const written = (await handle.write(rest, offset)).bytesWritten;
    if (written === 0) throw new Error('the body file accepted no more bytes');
    offset += written;
  }
}

async function writeDurably(path: string, data: Buffer): Promise<void> {
  const handle = await open(path, 'w');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function ignore(): void {}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== 'ENOENT') throw err;
}
