import { closeFd, fsyncFd, openFd } from './fd.js';

/**
 * fsyncs a directory so renames into it survive a crash. Callers that arrive while a sync is running
 * share the next one, so a burst of N messages costs about two directory syncs, not N (group commit).
 */
export class DirSync {
  #running: Promise<void> | undefined;
  #next: Promise<void> | undefined;

  constructor(private readonly dir: string) {}

  sync(): Promise<void> {
    if (!this.#running) {
      this.#running = this.#syncOnce().finally(() => (this.#running = undefined));
      return this.#running;
    }
    // A sync already in flight may have started before our rename: wait for the one after it.
    this.#next ??= this.#running.catch(() => {}).then(() => {
      this.#next = undefined;
      return this.sync();
    });
    return this.#next;
  }

  async #syncOnce(): Promise<void> {
    const fd = await openFd(this.dir, 'r');
    try {
      await fsyncFd(fd);
    } finally {
      await closeFd(fd);
    }
  }
}
