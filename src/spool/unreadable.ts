/**
 * A queued message the spool could not read for delivery: smarthost's own trouble (a failing disk, no
 * descriptors left, a file removed or replaced), never the upstream's. Its own class, so the delivery can tell
 * it from an error a reader destroys the stream with.
 */
export class MessageUnreadable extends Error {
  constructor(reason: string, options?: { cause?: unknown }) {
    super(`queued message could not be read: ${reason}`, options);
    this.name = 'MessageUnreadable';
  }
}

type OpenCallback = (err: NodeJS.ErrnoException | null, fd: number) => void;
type ReadCallback = (err: NodeJS.ErrnoException | null, bytesRead: number, buffer: Buffer) => void;

interface StreamFs {
  open(path: string, flags: string, mode: number, callback: OpenCallback): void;
  close(fd: number, callback: (err: NodeJS.ErrnoException | null) => void): void;
  read(fd: number, buffer: Buffer, offset: number, length: number, position: number | null, callback: ReadCallback): void;
}

/**
 * createReadStream's `fs` with every failed open or read reported as MessageUnreadable, and a file that ends
 * before the stream's `end` too: a stream asks for bytes only while it expects some, so a read that returns none
 * means the file was cut short, which would otherwise go out as a complete message.
 */
export function failingAsUnreadable<T extends StreamFs>(fs: T): T {
  return {
    ...fs,
    open(path: string, flags: string, mode: number, callback: OpenCallback): void {
      fs.open(path, flags, mode, (err, fd) => callback(err && unreadable(err), fd));
    },
    read(fd: number, buffer: Buffer, offset: number, length: number, position: number | null, callback: ReadCallback): void {
      fs.read(fd, buffer, offset, length, position, (err, bytesRead, data) => {
        if (err) return callback(unreadable(err), bytesRead, data);
        if (bytesRead === 0 && length > 0) return callback(new MessageUnreadable(`the message file ended at byte ${position ?? '?'}, before the size its envelope gives`), 0, data);
        callback(null, bytesRead, data);
      });
    },
  };
}

/** "EISDIR: illegal operation on a directory, read": the system's message, which names its code first. */
function unreadable(err: NodeJS.ErrnoException): MessageUnreadable {
  const reason = err.code && !err.message.startsWith(err.code) ? `${err.code}: ${err.message}` : err.message;
  return new MessageUnreadable(reason, { cause: err });
}
