import { createReadStream, readFile as readFileCallback } from 'node:fs';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { SmtpError } from '../smtp-error.js';
import { DirSync } from './dir-sync.js';
import { closeFd, fchmodFd, fsyncFd, openFd, readFd, renameFile, unlinkFile, writeFd, writevFd } from './fd.js';
import { COMPLETE_MODE, encodeTrailer, readMessageFile, WRITING_MODE } from './message-file.js';
import { QUEUE_ID } from './queue-id.js';
import { BufferReclaimer, reclaimingReads } from './reclaim.js';
import { parseRecord, serializeRecord, type MessageRecord } from './record.js';
import { failingAsUnreadable } from './unreadable.js';

/** What {@link Spool.scan} found in queue/. */
export interface QueueListing {
  /** Files removed: leftovers in incoming/ and state files without their message. */
  removed: string[];
  /** Queue IDs with a message file, oldest first. */
  ids: string[];
  names: ReadonlySet<string>;
}

/** A damaged envelope found at start-up; movedTo is unset when it could not be moved aside. */
export interface CorruptRecord {
  id: string;
  reason: string;
  movedTo?: string;
}

/** A message whose files the system would not let load() read (EMFILE, EIO, EACCES...); left in queue/. */
export interface UnreadableRecord {
  id: string;
  reason: string;
}

/** Message files read at once while the queue is loaded at start-up. */
const RECOVERY_READS = 32;

/**
 * Reads of one message refused by the system before load() leaves it for the next start, and the pause before
 * the first retry (doubled before each next): long enough for a burst of connections to give back descriptors.
 */
const READ_ATTEMPTS = 3;
const READ_RETRY_PAUSE_MS = 100;

/**
 * Descriptors of just-stored messages kept open for their first delivery attempt, at most this many: a
 * message delivered at once then costs no open and close of its file for reading (2 of 9 threadpool trips).
 * Past it (a queue filling while its upstream is down), files are closed after storing, as before.
 */
const KEEP_OPEN = 64;

/** Body bytes gathered before one writev: a 4 KiB message is one write, a large one a write per 256 KiB. */
const WRITE_BATCH = 256 * 1024;

/** fs streams' own default; a message smaller than the chunk size is read in one chunk of its own size. */
const DEFAULT_READ_CHUNK = 64 * 1024;

/**
 * The spool keeps each message as one file, queue/<id>.msg: the message exactly as accepted, never rewritten,
 * followed by the envelope it arrived with (layout in message-file.ts). Delivery state that changes later (a
 * deferral, a hold) goes to queue/<id>.json, replaced atomically, which then wins over the envelope in the
 * message file; most messages are delivered at the first attempt and never get one.
 *
 * One file per message, not a body and an envelope: each new message costs one file creation, one fsync and one
 * unlink instead of two of each, and no rename. On this machine's ext4 without a journal every creation also
 * pays for the inodes deleted in the last minute (bench/README.md), so the second file cost more than its share.
 */
export class Spool {
  readonly incomingDir: string;
  readonly queueDir: string;
  readonly corruptDir: string;
  readonly #queueSync: DirSync;
  /** Messages with a state file in queue/, so that removing the others costs one unlink. */
  readonly #withState = new Set<string>();
  /** Message files still open from {@link store}, with the streams {@link openBody} made on them. */
  readonly #open = new Map<string, { fd: number; streams: Set<Readable> }>();

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

  /** Lets go of the queue directory, held open for its syncs. */
  async close(): Promise<void> {
    await Promise.all([...this.#open.keys()].map((id) => this.release(id)));
    await this.#queueSync.close();
  }

  messagePath(id: string): string {
    return join(this.queueDir, `${id}.msg`);
  }

  statePath(id: string): string {
    return join(this.queueDir, `${id}.json`);
  }

  /**
   * The message as accepted; `start` to `end` (inclusive) within it, read `chunkSize` bytes at a time (default
   * 64 KiB). A file that cannot be read, or ends early, fails the stream with MessageUnreadable.
   */
  openBody(record: Pick<MessageRecord, 'id' | 'size'>, options: { start?: number; end?: number; chunkSize?: number } = {}): Readable {
    const end = Math.min(options.end ?? Infinity, record.size - 1);
    const start = options.start ?? 0;
    if (end < start) return Readable.from([]);
    const highWaterMark = options.chunkSize ?? DEFAULT_READ_CHUNK;
    const open = this.#open.get(record.id);
    if (!open) return createReadStream(this.messagePath(record.id), { start, end, highWaterMark, fs: failingAsUnreadable(reclaimingReads()) });
    // Reads at explicit positions (pread), so streams on one descriptor never disturb each other. A stream
    // closes its descriptor when destroyed, even with autoClose off; here it must not: release() does.
    const stream = createReadStream('', { fd: open.fd, start, end, highWaterMark, autoClose: false, fs: failingAsUnreadable({ ...reclaimingReads(), close: keepOpen }) });
    open.streams.add(stream);
    return stream;
  }

  /**
   * Closes the file {@link store} left open, once the attempt that reads it is over: its streams are destroyed
   * first, and the descriptor is closed only after they say 'close' (a destroyed stream waits for a read in
   * progress), so no read can land on the number once another file reuses it.
   */
  async release(id: string): Promise<void> {
    const open = this.#open.get(id);
    if (!open) return;
    this.#open.delete(id);
    await Promise.all(
      [...open.streams].map(
        (stream) =>
          new Promise<void>((resolve) => {
            if (stream.closed) return resolve();
            stream.once('close', () => resolve());
            stream.destroy();
          }),
      ),
    );
    await closeFd(open.fd).catch(ignore);
  }

  /**
   * Streams a message into the spool and returns once it is durable. `finish` is called after the body is
   * received, to complete the record from what the stream learned (Message-ID, header From). Errors thrown by
   * the source (an SmtpError such as a loop or size refusal) pass through; storage failures become 451 4.3.0.
   * Either way nothing is left behind.
   *
   * The client waits for its 250 through every step after the final dot, and each step is a trip through
   * libuv's threadpool (4 threads, often all in fsync) and back through a busy event loop. After the dot: the
   * body's last bytes with the envelope, and the complete mark, then the fsync: 2 trips (3 before this layout,
   * 8 before that). The directory's fsync that makes the file's name durable (shared by concurrent messages)
   * starts when the file is created and has mostly finished by then.
   */
  async store(source: Readable, record: MessageRecord, finish?: (record: MessageRecord) => void): Promise<MessageRecord> {
    const path = this.messagePath(record.id);
    let fd: number | undefined;
    // The iterator below reports the source's first error; one emitted after it stopped reading (a stage that
    // fails again while being destroyed) is the same failure, not an uncaught exception.
    source.on('error', ignore);
    try {
      // Read-write: the first delivery reads the message through this descriptor (see KEEP_OPEN).
      fd = await openFd(path, 'wx+', WRITING_MODE);
      const file = fd;
      // The file's name is in the directory from here on, so the directory's sync can run while the body arrives.
      const named = this.#queueSync.sync();
      named.catch(ignore);
      const rest = await writeStream(source, file);
      finish?.(record);
      record.size = rest.written;
      const trailer = encodeTrailer(record);
      // allSettled, here and below: no call on the descriptor may still be running when a failure's cleanup closes
      // it (its number could be reused by another message's file at once) and removes the file.
      const durable = await Promise.allSettled([
        Promise.allSettled([writeAll(file, [...rest.chunks, trailer], rest.length + trailer.length), fchmodFd(file, COMPLETE_MODE)]).then((done) => {
          for (const d of done) if (d.status === 'rejected') throw d.reason;
          return fsyncFd(file);
        }),
        named,
      ]);
      for (const d of durable) if (d.status === 'rejected') throw d.reason;
      fd = undefined;
      if (this.#open.size < KEEP_OPEN) this.#open.set(record.id, { fd: file, streams: new Set() });
      // Not waited for: after the fsync a close can lose nothing.
      else closeFd(file).catch(ignore);
      return record;
    } catch (err) {
      source.destroy();
      if (fd !== undefined) await closeFd(fd).catch(() => {});
      await rm(path, { force: true }).catch(() => {});
      if (err instanceof SmtpError) throw err;
      throw new SmtpError(451, '4.3.0', 'Local error in processing: could not queue the message, try again later', { cause: err });
    }
  }

  /** Replaces the message's state file atomically; the message file is never touched. */
  async update(record: MessageRecord): Promise<void> {
    const tmp = join(this.incomingDir, `${record.id}.json.update`);
    await writeDurably(tmp, serializeRecord(record));
    await renameFile(tmp, this.statePath(record.id));
    this.#withState.add(record.id);
    await this.#queueSync.sync();
  }

  /** Removes a finished message: the message file first, so a crash in between leaves only a state file without a message. */
  async remove(id: string): Promise<void> {
    await this.release(id);
    await unlinkFile(this.messagePath(id)).catch(ignoreMissing);
    if (this.#withState.delete(id)) await unlinkFile(this.statePath(id)).catch(ignoreMissing);
  }

  /** The message's header block (up to the blank line), for bounces that quote it. */
  async readHeaderBlock(record: Pick<MessageRecord, 'id' | 'size'>, limit = 256 * 1024): Promise<Buffer> {
    const fd = await openFd(this.messagePath(record.id), 'r');
    try {
      const length = Math.min(limit, record.size);
      const { buffer, bytesRead } = await readFd(fd, Buffer.alloc(length), 0, length, 0);
      const data = buffer.subarray(0, bytesRead);
      const end = data.indexOf('\r\n\r\n');
      return end === -1 ? data : data.subarray(0, end);
    } finally {
      await closeFd(fd);
    }
  }

  /** The message's current record: its state file if it has one, else the envelope in its message file. */
  async readRecord(id: string): Promise<MessageRecord> {
    const record = await this.#readRecord(id, this.#withState.has(id));
    if (!record) throw new Error(`message ${id} was never completed`);
    return record;
  }

  /**
   * Start-up scan, all at once: {@link scan} then {@link load}. The daemon runs the two steps apart, so that
   * deliveries start while a large queue is still being read.
   */
  async recover(): Promise<{ records: MessageRecord[]; removed: string[]; corrupt: CorruptRecord[]; unreadable: UnreadableRecord[] }> {
    const listing = await this.scan();
    const records: MessageRecord[] = [];
    const { corrupt, unreadable, removed } = await this.load(listing, (r) => records.push(r));
    records.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return { records, removed: [...listing.removed, ...removed], corrupt, unreadable };
  }

  /**
   * Start-up scan, first step, before any listener is bound: files in incoming/ are state files never renamed
   * into place and are removed, a state file whose message file is gone (a removal cut short) likewise. Lists
   * queue/; messages accepted after this are not part of the listing, so none is loaded twice.
   *
   * A queue written by smarthost before the one-file layout (<id>.eml body, <id>.json envelope) is taken over
   * as it is: the body is renamed to <id>.msg and the .json stays its state file.
   */
  async scan(): Promise<QueueListing> {
    const removed: string[] = [];
    for (const name of await readdir(this.incomingDir)) {
      await rm(join(this.incomingDir, name), { force: true });
      removed.push(name);
    }
    const names = new Set(await readdir(this.queueDir));
    let renamed = false;
    for (const name of [...names]) {
      const [id, ext] = name.split('.', 2) as [string, string | undefined];
      if (!QUEUE_ID.test(id)) continue;
      if (ext === 'eml') {
        names.delete(name);
        if (names.has(`${id}.json`)) {
          await rename(join(this.queueDir, name), this.messagePath(id));
          names.add(`${id}.msg`);
          renamed = true;
        } else {
          await rm(join(this.queueDir, name), { force: true });
          removed.push(name);
        }
      }
    }
    for (const name of [...names]) {
      const id = name.slice(0, -5);
      if (name.endsWith('.json') && QUEUE_ID.test(id) && !names.has(`${id}.msg`)) {
        await rm(join(this.queueDir, name), { force: true });
        names.delete(name);
        removed.push(name);
      }
    }
    if (renamed) await this.#queueSync.sync();
    const ids = [...names].filter((n) => n.endsWith('.msg')).map((n) => n.slice(0, -4)).filter((id) => QUEUE_ID.test(id)).sort();
    return { removed, ids, names };
  }

  /**
   * Start-up scan, second step: reads the listed messages' records, oldest first with reads overlapping, and
   * hands each to `onRecord` as soon as it is read. A message file never completed (the client never heard 250)
   * is removed; a damaged record (and its message) moves to corrupt/ and is reported.
   *
   * A read the system refuses (an error with a syscall: EMFILE from a burst of connections, EIO, EACCES) says
   * nothing about the file, which is most likely intact: it is tried again after a pause, and if it still fails
   * the message stays in queue/, untouched, and is reported as unreadable; the next start loads it. Until then it
   * is not delivered, which the daemon logs as an error.
   *
   * None of these is fatal: only an error thrown by onRecord fails this step, so it may run after the listeners
   * are bound.
   */
  async load(
    listing: QueueListing,
    onRecord: (record: MessageRecord) => void,
  ): Promise<{ loaded: number; removed: string[]; corrupt: CorruptRecord[]; unreadable: UnreadableRecord[] }> {
    const { ids, names } = listing;
    const corrupt: CorruptRecord[] = [];
    const unreadable: UnreadableRecord[] = [];
    const removed: string[] = [];
    let loaded = 0;
    let next = 0;
    const worker = async () => {
      for (let i = next++; i < ids.length; i = next++) {
        const id = ids[i]!;
        const hasState = names.has(`${id}.json`);
        let record: MessageRecord | undefined;
        try {
          record = await this.#readRecordRetrying(id, hasState);
          if (record && record.id !== id) throw new Error(`record names another queue ID (${record.id})`);
        } catch (err) {
          if (isSystemError(err)) unreadable.push({ id, reason: err.message });
          else corrupt.push(await this.#quarantine(id, names, (err as Error).message));
          continue;
        }
        if (!record) {
          await rm(this.messagePath(id), { force: true });
          removed.push(`${id}.msg`);
          continue;
        }
        if (hasState) this.#withState.add(id);
        loaded++;
        onRecord(record);
      }
    };
    await Promise.all(Array.from({ length: Math.min(RECOVERY_READS, ids.length) }, worker));
    return { loaded, removed, corrupt, unreadable };
  }

  async #readRecordRetrying(id: string, hasState: boolean): Promise<MessageRecord | undefined> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#readRecord(id, hasState);
      } catch (err) {
        if (!isSystemError(err) || attempt === READ_ATTEMPTS) throw err;
        await sleep(READ_RETRY_PAUSE_MS * 2 ** (attempt - 1));
      }
    }
  }

  /** undefined: a message file never completed. */
  async #readRecord(id: string, hasState: boolean): Promise<MessageRecord | undefined> {
    if (hasState) return parseRecord(await readSmallFile(this.statePath(id)));
    const file = await readMessageFile(this.messagePath(id));
    return file.complete ? file.record : undefined;
  }

  async #quarantine(id: string, names: ReadonlySet<string>, reason: string): Promise<CorruptRecord> {
    try {
      for (const ext of ['json', 'msg']) {
        if (names.has(`${id}.${ext}`)) await rename(join(this.queueDir, `${id}.${ext}`), join(this.corruptDir, `${id}.${ext}`));
      }
      return { id, reason, movedTo: this.corruptDir };
    } catch (err) {
      // Left where it is (never loaded, never deleted); the next start tries again.
      return { id, reason: `${reason}; could not be moved aside: ${(err as Error).message}` };
    }
  }
}

/**
 * Copies `source` into `fd`, gathering chunks into one writev per WRITE_BATCH bytes, and returns the last
 * batch unwritten, for the caller to write with the envelope, and the body's length. The source's own error
 * (or a premature close) is thrown as is.
 */
async function writeStream(source: Readable, fd: number): Promise<{ chunks: Buffer[]; length: number; written: number }> {
  let batch: Buffer[] = [];
  let batched = 0;
  let total = 0;
  const reclaimer = new BufferReclaimer();
  for await (const chunk of source as AsyncIterable<Buffer | string>) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    reclaimer.count(buffer.length);
    batch.push(buffer);
    batched += buffer.length;
    total += buffer.length;
    if (batched >= WRITE_BATCH) {
      await writeAll(fd, batch, batched);
      batch = [];
      batched = 0;
    }
  }
  return { chunks: batch, length: batched, written: total };
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
  const fd = await openFd(path, 'w', WRITING_MODE);
  try {
    await writeAll(fd, [data], data.length);
    await fsyncFd(fd);
  } finally {
    await closeFd(fd);
  }
}

/**
 * readFile through the callback API: the same open, fstat, read and close, without a FileHandle and a promise
 * for each step. Reading 10,000 state files took 0.7-1.1 s of CPU with fs/promises' readFile, 0.2-0.4 s this way.
 */
function readSmallFile(path: string): Promise<Buffer> {
  return new Promise((resolve, reject) => readFileCallback(path, (err, data) => (err ? reject(err) : resolve(data))));
}

function ignore(): void {}

/** An error the system returned (it names the failed call), as opposed to one found in the file's content. */
function isSystemError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).syscall === 'string';
}

function keepOpen(_fd: number, callback: (err: NodeJS.ErrnoException | null) => void): void {
  callback(null);
}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== 'ENOENT') throw err;
}
