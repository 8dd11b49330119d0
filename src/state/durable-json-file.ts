import { open, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Adapter } from 'lowdb';

/**
 * A lowdb adapter for JSON state that must survive a power cut: lowdb's own JSONFile renames a temporary file
 * into place but never fsyncs, so after a crash the file may be empty or the old one. Here the temporary file is
 * fsync'ed before the rename and the directory after it, as the spool does for messages. Callers write one at a
 * time (the suppression list under its lock file, the limit counters from one timer).
 */
export class DurableJsonFile<T> implements Adapter<T> {
  readonly #file: string;
  readonly #temp: string;

  constructor(file: string) {
    this.#file = file;
    this.#temp = join(dirname(file), `.${basename(file)}.${process.pid}.tmp`);
  }

  async read(): Promise<T | null> {
    let text: string;
    try {
      text = await readFile(this.#file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    return JSON.parse(text) as T;
  }

  async write(data: T): Promise<void> {
    try {
      const handle = await open(this.#temp, 'w');
      try {
        await handle.writeFile(JSON.stringify(data, null, 2));
        await handle.sync();
      } finally {
        await handle.close();
      }
    } catch (err) {
      await rm(this.#temp, { force: true });
      throw err;
    }
    await rename(this.#temp, this.#file);
    const dir = await open(dirname(this.#file), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}
