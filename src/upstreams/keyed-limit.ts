import { Semaphore } from '../delivery/semaphore.js';

/**
 * At most `limit` at once per key (e.g. per mailbox), like ZoneMTA's per-zone connection limits. A key's
 * semaphore exists only while something holds or waits for it, so a relay that sends as thousands of
 * senders over time keeps no state for idle ones.
 */
export class KeyedLimit {
  readonly #entries = new Map<string, { semaphore: Semaphore; users: number }>();

  constructor(readonly limit: number) {}

  /** Runs `task` once the key has a free slot. */
  async run<T>(key: string, task: () => Promise<T>): Promise<T> {
    let entry = this.#entries.get(key);
    if (!entry) {
      entry = { semaphore: new Semaphore(this.limit), users: 0 };
      this.#entries.set(key, entry);
    }
    entry.users++;
    const release = await entry.semaphore.acquire();
    try {
      return await task();
    } finally {
      release();
      if (--entry.users === 0) this.#entries.delete(key);
    }
  }

  /** How many are running or waiting for `key` (for tests and metrics). */
  inUse(key: string): number {
    return this.#entries.get(key)?.users ?? 0;
  }
}
