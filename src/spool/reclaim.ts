import { close, open, read } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * Bytes a large message streams between two young-generation collections.
 *
 * Why: every socket or file read allocates a fresh buffer (64 KiB), and smtp-server copies each inbound one
 * once more. Dead buffers are freed only when V8 scavenges the young generation, and V8 forces that for
 * buffer memory only once 32 MB of young buffers have piled up (twice its default maximum semi-space). So a
 * 100 MB message held about 32 MB of dead buffers at a time and grew RSS by 40-44 MB (bench (d)). A scavenge
 * after every 4 MiB (about 0.6 ms each, 50 for such a message in and out) keeps the growth at 16-18 MB, and
 * the CPU time does not rise; a message under 4 MiB never triggers one.
 */
const RECLAIM_EVERY = 4 * 1024 * 1024;

type MinorGc = (options: { type: 'minor' }) => void;

let minorGc: MinorGc | null | undefined;

/** V8's gc() from a throw-away context, so the flag is on only for that moment; null when unavailable. */
function loadMinorGc(): MinorGc | null {
  // Started with --expose-gc: use it, and leave the flag as it was.
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === 'function') return exposed as MinorGc;
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? (gc as MinorGc) : null;
  } catch {
    return null;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
}

/** Counts the bytes one stream carried; after every RECLAIM_EVERY of them, frees the dead buffers. */
export class BufferReclaimer {
  #since = 0;

  count(bytes: number): void {
    this.#since += bytes;
    if (this.#since < RECLAIM_EVERY) return;
    this.#since = 0;
    minorGc ??= loadMinorGc();
    minorGc?.({ type: 'minor' });
  }
}

type ReadCallback = (err: NodeJS.ErrnoException | null, bytesRead: number, buffer: Buffer) => void;

/** For createReadStream's `fs` option: the usual open, read and close, the reads counted by a BufferReclaimer. */
export function reclaimingReads() {
  const reclaimer = new BufferReclaimer();
  return {
    open,
    close,
    read(fd: number, buffer: Buffer, offset: number, length: number, position: number | null, callback: ReadCallback): void {
      read(fd, buffer, offset, length, position, (err, bytesRead, data) => {
        if (!err) reclaimer.count(bytesRead);
        callback(err, bytesRead, data);
      });
    },
  };
}
