import { createReadStream, readFile as readFileCallback } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { SmtpError } from '../smtp-error.js';
import { DirSync } from './dir-sync.js';
import { closeFd, fsyncFd, openFd, renameFile, unlinkFile, writeFd, writevFd } from './fd.js';
import { QUEUE_ID } from './queue-id.js';
import { BufferReclaimer, reclaimingReads } from './reclaim.js';
import { parseRecord, serializeRecord, type MessageRecord } from './record.js';

/** What {@link Spool.scan} found in queue/. */
export interface QueueListing {
  /** Files removed: leftovers in incoming/ and bodies without an envelope. */
  removed: string[];
  /** Queue IDs with an envelope, oldest first. */
  ids: string[];
  names: ReadonlySet<string>;
}

/** A damaged envelope found at start-up; movedTo is unset when it could not be moved aside. */
export interface CorruptRecord {
  id: string;
  reason: string;
  movedTo?: string;
}

/** Envelope files read at once while the queue is loaded at start-up. */
const RECOVERY_READS = 32;

/** Body bytes gathered before one writev: a 4 KiB message is one write, a large one a write per 256 KiB. */
const WRITE_BATCH = 256 * 1024;

/**
 * The spool keeps each message as two files in queue/: <id>.eml, the body exactly as accepted and never
 * rewritten, and <id>.json, the envelope and delivery state, replaced atomically on every change. A message
 * exists once its .json is in queue/: the body is written straight to queue/<id>.eml (a body without an
 * envelope is a leftover that start-up removes), the envelope to incoming/<id>.json; both are fsync'ed before
 * the envelope is renamed into queue/, and the directory is fsync'ed before the client hears 250.
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
    return createReadStream(this.bodyPath(id), { ...range, fs: reclaimingReads() });
  }

  /**
   * Streams a message into the spool and returns once it is durable. `finish` is called after the body is
   * received, to complete the record from what the stream learned (size, Message-ID). Errors thrown by the
   * source (an SmtpError such as a loop or size refusal) pass through; storage failures become 451 4.3.0.
   * Either way nothing is left behind.
   *
   * The client waits for its 250 through every step after the final dot, and each step is a trip through
   * libuv's threadpool (4 threads, often all in fsync) and back through a busy event loop. So both files are
   * opened while the body arrives, and after the dot the body's last bytes and the envelope are written and
   * fsync'ed side by side; one rename and the directory fsync follow, the closes run beside the latter: 3 trips
   * plus the shared directory sync, instead of 8. Bench (a), median of 3 alternated runs: accept latency p50
   * 32.5 -> 27.7 ms, p99 85 -> 69 ms, CPU 2.57 -> 2.33 ms per message.
   */
  async store(source: Readable, record: MessageRecord, finish?: (record: MessageRecord) => void): Promise<MessageRecord> {
    const body = this.bodyPath(record.id);
    const tmpMeta = join(this.incomingDir, `${record.id}.json`);
    let bodyFd: number | undefined;
    let metaFd: number | undefined;
    // The iterator below reports the source's first error; one emitted after it stopped reading (a stage that
    // fails again while being destroyed) is the same failure, not an uncaught exception.
    source.on('error', ignore);
    try {
      // allSettled, here and below: no call may still be running when a failure's cleanup removes the files.
      const opened = await Promise.allSettled([openFd(body, 'wx'), openFd(tmpMeta, 'wx')]);
      if (opened[0].status === 'fulfilled') bodyFd = opened[0].value;
      if (opened[1].status === 'fulfilled') metaFd = opened[1].value;
      for (const o of opened) if (o.status === 'rejected') throw o.reason;
      const [b, m] = [bodyFd!, metaFd!];
      const rest = await writeStream(source, b);
      finish?.(record);
      const meta = serializeRecord(record);
      const written = await Promise.allSettled([
        writeAll(b, rest.chunks, rest.length).then(() => fsyncFd(b)),
        writeAll(m, [meta], meta.length).then(() => fsyncFd(m)),
      ]);
      for (const w of written) if (w.status === 'rejected') throw w.reason;
      await renameFile(tmpMeta, this.#metaPath(record.id));
      bodyFd = metaFd = undefined;
      const synced = await Promise.allSettled([this.#queueSync.sync(), closeFd(b), closeFd(m)]);
      for (const s of synced) if (s.status === 'rejected') throw s.reason;
      return record;
    } catch (err) {
      source.destroy();
      await Promise.all([bodyFd, metaFd].map((fd) => (fd === undefined ? undefined : closeFd(fd).catch(() => {}))));
      await Promise.all([tmpMeta, body, this.#metaPath(record.id)].map((p) => rm(p, { force: true }).catch(() => {})));
      if (err instanceof SmtpError) throw err;
      throw new SmtpError(451, '4.3.0', 'Local error in processing: could not queue the message, try again later', { cause: err });
    }
  }

  /** Replaces the envelope file atomically; the body is never touched. */
  async update(record: MessageRecord): Promise<void> {
    const tmp = join(this.incomingDir, `${record.id}.json.update`);
    await writeDurably(tmp, serializeRecord(record));
    await renameFile(tmp, this.#metaPath(record.id));
    await this.#queueSync.sync();
  }

  /** Removes a finished message: envelope first, so a crash in between leaves only an orphan body. */
  async remove(id: string): Promise<void> {
    await unlinkFile(this.#metaPath(id)).catch(ignoreMissing);
    await unlinkFile(this.bodyPath(id)).catch(ignoreMissing);
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
   * Start-up scan, all at once: {@link scan} then {@link load}. The daemon runs the two steps apart, so that
   * deliveries start while a large queue is still being read.
   */
  async recover(): Promise<{ records: MessageRecord[]; removed: string[]; corrupt: CorruptRecord[] }> {
    const listing = await this.scan();
    const records: MessageRecord[] = [];
    const { corrupt } = await this.load(listing, (r) => records.push(r));
    records.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return { records, removed: listing.removed, corrupt };
  }

  /**
   * Start-up scan, first step, before any listener is bound: files in incoming/ belong to messages never
   * acknowledged and are removed, a body without an envelope likewise. Lists queue/; messages accepted after
   * this are not part of the listing, so none is loaded twice.
   */
  async scan(): Promise<QueueListing> {
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
    return { removed, ids, names };
  }

  /**
   * Start-up scan, second step: reads the listed envelopes, oldest first with reads overlapping, and hands
   * each to `onRecord` as soon as it is read. A damaged envelope (and its body) moves to corrupt/ and is
   * reported, never fatal: only an error thrown by onRecord fails this step, so it may run after the listeners
   * are bound.
   */
  async load(listing: QueueListing, onRecord: (record: MessageRecord) => void): Promise<{ loaded: number; corrupt: CorruptRecord[] }> {
    const { ids, names } = listing;
    const corrupt: CorruptRecord[] = [];
    let loaded = 0;
    let next = 0;
    const worker = async () => {
      for (let i = next++; i < ids.length; i = next++) {
        const id = ids[i]!;
        let record: MessageRecord;
        try {
          if (!names.has(`${id}.eml`)) throw new Error('message body file is missing');
          record = parseRecord(await readSmallFile(this.#metaPath(id)));
          if (record.id !== id) throw new Error(`record names another queue ID (${record.id})`);
        } catch (err) {
          corrupt.push(await this.#quarantine(id, names, (err as Error).message));
          continue;
        }
        loaded++;
        onRecord(record);
      }
    };
    await Promise.all(Array.from({ length: Math.min(RECOVERY_READS, ids.length) }, worker));
    return { loaded, corrupt };
  }

  async #quarantine(id: string, names: ReadonlySet<string>, reason: string): Promise<CorruptRecord> {
    try {
      for (const ext of ['json', 'eml']) {
        if (names.has(`${id}.${ext}`)) await rename(join(this.queueDir, `${id}.${ext}`), join(this.corruptDir, `${id}.${ext}`));
      }
      return { id, reason, movedTo: this.corruptDir };
    } catch (err) {
      // Left where it is (never loaded, never deleted); the next start tries again.
      return { id, reason: `${reason}; could not be moved aside: ${(err as Error).message}` };
    }
  }

  #metaPath(id: string): string {
    return join(this.queueDir, `${id}.json`);
  }
}

/**
 * Copies `source` into `fd`, gathering chunks into one writev per WRITE_BATCH bytes, and returns the last
 * batch unwritten, for the caller to write beside the envelope. The source's own error (or a premature
 * close) is thrown as is.
 */
async function writeStream(source: Readable, fd: number): Promise<{ chunks: Buffer[]; length: number }> {
  let batch: Buffer[] = [];
  let batched = 0;
  const reclaimer = new BufferReclaimer();
  for await (const chunk of source as AsyncIterable<Buffer | string>) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    reclaimer.count(buffer.length);
    batch.push(buffer);
    batched += buffer.length;
    if (batched >= WRITE_BATCH) {
      await writeAll(fd, batch, batched);
      batch = [];
      batched = 0;
    }
  }
  return { chunks: batch, length: batched };
}

async function writeAll(fd: number, chunks: Buffer[], length: number): Promise<void> {
  if (length === 0) return;
  const { bytesWritten } = await writevFd(fd, chunks);
  if (bytesWritten === length) return;
  // A short write (a full disk reports ENOSPC on the next one): the rest, from where it stopped.
  const rest = Buffer.concat(chunks).subarray(bytesWritten);
  for (let offset = 0; offset < rest.length; ) {
    const written = (await writeFd(fd, rest, offset)).bytesWritten;
    if (written === 0) throw new Error('the body file accepted no more bytes');
    offset += written;
  }
}

async function writeDurably(path: string, data: Buffer): Promise<void> {
  const fd = await openFd(path, 'w');
  try {
    await writeAll(fd, [data], data.length);
    await fsyncFd(fd);
  } finally {
    await closeFd(fd);
  }
}

/**
 * readFile through the callback API: the same open, fstat, read and close, without a FileHandle and a promise
 * for each step. Reading 10,000 envelopes took 0.7-1.1 s of CPU with fs/promises' readFile, 0.2-0.4 s this way.
 */
function readSmallFile(path: string): Promise<Buffer> {
  return new Promise((resolve, reject) => readFileCallback(path, (err, data) => (err ? reject(err) : resolve(data))));
}

function ignore(): void {}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== 'ENOENT') throw err;
}
