import { closeFd, fsyncFd, openFd } from './fd.js';

/**
 * fsyncs a directory so files created or renamed in it survive a crash. Callers that arrive while a sync is
 * running share the next one, so a burst of N messages costs about two directory syncs, not N (group commit).
 * The directory stays open between syncs: a sync is one trip through the threadpool, not three.
 */
export class DirSync {
  #running: Promise<void> | undefined;
  #next: Promise<void> | undefined;
  #fd: Promise<number> | undefined;

  constructor(private readonly dir: string) {}

  /** Resolves once a sync that started after this call has finished. */
  sync(): Promise<void> {
    if (!this.#running) {
      this.#running = this.#syncOnce().finally(() => (this.#running = undefined));
      return this.#running;
    }
    // A sync already in flight may have started before the caller's change: wait for the one after it.
    this.#next ??= this.#running.catch(() => {}).then(() => {
      this.#next = undefined;
      return this.sync();
    });
    return this.#next;
  }

  async close(): Promise<void> {
    await this.#running?.catch(() => {});
    const fd = this.#fd;
    this.#fd = undefined;
    if (fd) await closeFd(await fd).catch(() => {});
  }

  async #syncOnce(): Promise<void> {
    const opened = (this.#fd ??= openFd(this.dir, 'r'));
    try {
      await fsyncFd(await opened);
    } catch (err) {
      // Opened afresh next time: the directory may have been replaced, or the descriptor gone bad.
      if (this.#fd === opened) this.#fd = undefined;
      void opened.then((fd) => closeFd(fd)).catch(() => {});
      throw err;
    }
  }
}
