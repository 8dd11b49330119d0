import { mkdir, open, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Low } from 'lowdb';
import { z } from 'zod';
import { DurableJsonFile } from '../state/durable-json-file.js';

/**
 * Recipients that must never receive mail from this relay, kept with lowdb in <state.dir>/suppression.json:
 *   { "suppressed": [ { "address": "x@y", "reason": "...", "addedAt": "2025-01-01T00:00:00.000Z" } ] }
 * The daemon and `smarthost suppress` share the file: each change re-reads it under a lock file and is
 * written atomically and durably (a temporary file, fsync'ed, renamed; src/state/durable-json-file.ts); the daemon notices changes by polling
 * the file's status, so a lookup per RCPT is a Map lookup and never touches the disk. Addresses compare
 * case-insensitively.
 */
export const SUPPRESSION_FILE = 'suppression.json';

const entrySchema = z.object({ address: z.string().min(1), reason: z.string(), addedAt: z.string() });
const fileSchema = z.object({ suppressed: z.array(entrySchema) });

export type SuppressionEntry = z.output<typeof entrySchema>;
type SuppressionData = z.output<typeof fileSchema>;

/** What delivery and the listeners need from the list (tests pass a fake). */
export interface SuppressionLookup {
  has(address: string): boolean;
  add(address: string, reason: string, now?: Date): Promise<unknown>;
}

/** The config's suppression settings together with the list they apply to. */
export interface SuppressionSettings {
  list: SuppressionLookup;
  /** refuse: 550 5.7.1 at RCPT TO (and a bounce for mail queued before); drop: accepted, never delivered. */
  action: 'refuse' | 'drop';
  addHardBounces: boolean;
}

/** The file exists but is not a suppression list; the daemon refuses to start on it, and keeps its last good copy on reload. */
export class SuppressionFileError extends Error {
  constructor(
    readonly file: string,
    detail: string,
  ) {
    super(`cannot use the suppression list ${file}: ${detail}`);
    this.name = 'SuppressionFileError';
  }
}

/**
 * Lowercased, trimmed, without one pair of angle brackets, and with a quoted local part that needs no quotes
 * unquoted: the key addresses are compared by. "victim"@x.test is the same mailbox as victim@x.test
 * (RFC 5321 4.1.2), so it must not get past an entry for it.
 */
export function suppressionKey(address: string): string {
  const bare = address.trim().replace(/^<(.*)>$/, '$1').trim().toLowerCase();
  const quoted = /^"((?:[^"\\]|\\.)*)"(@[^@]*)$/.exec(bare);
  if (!quoted) return bare;
  const local = quoted[1]!.replace(/\\(.)/g, '$1');
  return DOT_ATOM.test(local) ? local + quoted[2] : bare;
}

/** RFC 5322 dot-atom-text: the local parts that need no quotes. */
const DOT_ATOM = /^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;

/** The same shape config validation accepts for addresses: local@domain, no spaces or angle brackets. */
export function isPlausibleAddress(address: string): boolean {
  return /^[^@\s<>]+@[^@\s<>]+$/.test(address);
}

export function suppressionFile(stateDir: string): string {
  return join(resolve(stateDir), SUPPRESSION_FILE);
}

const LOCK_WAIT_MS = 5000;
/** A lock older than this was left by a process that died while holding it (a change takes milliseconds). */
const STALE_LOCK_MS = 30_000;

export class SuppressionList implements SuppressionLookup {
  readonly file: string;
  readonly #db: Low<SuppressionData>;
  #byAddress = new Map<string, SuppressionEntry>();
  /** Status of the file as it was just before the copy in memory was read ('missing' when there was none). */
  #version: string | undefined;
  /** A version that failed to parse: reported once, not on every poll. */
  #badVersion: string | undefined;
  /** Reloads and changes in this process run one at a time. */
  #chain: Promise<unknown> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  /** Bumped by watch() and close(), so a poll still running from an earlier watch() stops. */
  #generation = 0;
  #watching = false;

  private constructor(file: string) {
    this.file = file;
    // An adapter, not JSONFilePreset: the preset silently keeps data in memory when NODE_ENV=test, and then the
    // daemon and the CLI would each see their own list.
    this.#db = new Low(new DurableJsonFile<SuppressionData>(file), { suppressed: [] });
  }

  /** Reads the list in stateDir; a missing file is an empty list. Throws SuppressionFileError for a damaged one. */
  static async open(stateDir: string): Promise<SuppressionList> {
    const list = new SuppressionList(suppressionFile(stateDir));
    await list.#exclusive(() => list.#read());
    return list;
  }

  get size(): number {
    return this.#byAddress.size;
  }

  has(address: string): boolean {
    return this.#byAddress.has(suppressionKey(address));
  }

  get(address: string): SuppressionEntry | undefined {
    return this.#byAddress.get(suppressionKey(address));
  }

  /** Entries in the order they were added. */
  entries(): SuppressionEntry[] {
    return [...this.#byAddress.values()];
  }

  /** Adds an address; one already on the list keeps its entry (added: false). */
  add(address: string, reason: string, now = new Date()): Promise<{ added: boolean; entry: SuppressionEntry }> {
    const key = suppressionKey(address);
    return this.#change<{ added: boolean; entry: SuppressionEntry }>((data) => {
      const existing = data.suppressed.find((e) => suppressionKey(e.address) === key);
      if (existing) return { changed: false, result: { added: false, entry: existing } };
      const entry = { address: address.trim().replace(/^<(.*)>$/, '$1').trim(), reason, addedAt: now.toISOString() };
      data.suppressed.push(entry);
      return { changed: true, result: { added: true, entry } };
    });
  }

  /** Removes an address (every spelling of it); answers the removed entry, or undefined when it was not listed. */
  remove(address: string): Promise<SuppressionEntry | undefined> {
    const key = suppressionKey(address);
    return this.#change((data) => {
      const removed = data.suppressed.find((e) => suppressionKey(e.address) === key);
      if (!removed) return { changed: false, result: undefined };
      data.suppressed = data.suppressed.filter((e) => suppressionKey(e.address) !== key);
      return { changed: true, result: removed };
    });
  }

  /**
   * Re-reads the file when its status (inode, size, modification and change time) differs from the copy in
   * memory. Answers true when the list was re-read. A damaged file throws once and leaves the list as it was.
   */
  reload(): Promise<boolean> {
    return this.#exclusive(async () => {
      const version = await this.#statVersion();
      if (version === this.#version || version === this.#badVersion) return false;
      await this.#read(version);
      return true;
    });
  }

  /**
   * Polls the file every intervalMs and reloads it when it changed, e.g. after `smarthost suppress add`.
   * A change made since open() is caught by the first poll. Keeps the process alive until close().
   */
  watch(o: { intervalMs: number; onReload?: (size: number) => void; onError?: (err: Error) => void }): void {
    if (this.#watching) return;
    this.#watching = true;
    const generation = ++this.#generation;
    const tick = async () => {
      try {
        const reloaded = await this.reload();
        if (reloaded && generation === this.#generation) o.onReload?.(this.size);
      } catch (err) {
        if (generation === this.#generation) o.onError?.(err as Error);
      }
      if (generation === this.#generation) this.#timer = setTimeout(tick, o.intervalMs);
    };
    this.#timer = setTimeout(tick, o.intervalMs);
  }

  /** Stops watching; waits for a reload or change in progress. */
  async close(): Promise<void> {
    this.#watching = false;
    this.#generation++;
    clearTimeout(this.#timer);
    await this.#chain.catch(() => {});
  }

  async #read(knownVersion?: string): Promise<void> {
    // The status is taken before reading: a change that lands after it shows up as a new version next time.
    const version = knownVersion ?? (await this.#statVersion());
    this.#db.data = { suppressed: [] };
    try {
      await this.#db.read();
    } catch (err) {
      this.#badVersion = version;
      throw new SuppressionFileError(this.file, (err as Error).message);
    }
    const parsed = fileSchema.safeParse(this.#db.data);
    if (!parsed.success) {
      this.#badVersion = version;
      const issue = parsed.error.issues[0]!;
      throw new SuppressionFileError(this.file, `expected { "suppressed": [ { "address", "reason", "addedAt" } ] }; ${issue.path.join('.') || 'top level'}: ${issue.message}`);
    }
    this.#db.data = parsed.data;
    this.#byAddress = new Map(parsed.data.suppressed.map((e) => [suppressionKey(e.address), e]));
    this.#version = version;
    this.#badVersion = undefined;
  }

  /** Read, change, write under the lock file, so the daemon and the CLI never overwrite each other's changes. */
  #change<T>(fn: (data: SuppressionData) => { changed: boolean; result: T }): Promise<T> {
    return this.#exclusive(async () => {
      await mkdir(resolve(this.file, '..'), { recursive: true });
      const unlock = await lockFile(`${this.file}.lock`);
      try {
        // Our own write changes the file's status, so the watcher re-reads it once more; that is harmless,
        // and recording the new status here could hide a change another process made right after ours.
        await this.#read();
        const { changed, result } = fn(this.#db.data);
        if (changed) {
          await this.#db.write();
          this.#byAddress = new Map(this.#db.data.suppressed.map((e) => [suppressionKey(e.address), e]));
        }
        return result;
      } finally {
        await unlock();
      }
    });
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(fn, fn);
    this.#chain = run.catch(() => {});
    return run;
  }

  async #statVersion(): Promise<string> {
    try {
      const s = await stat(this.file, { bigint: true });
      return `${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
      throw err;
    }
  }
}

/** Creates path exclusively (O_EXCL); waits while another process holds it; breaks a lock left by a dead one. */
async function lockFile(path: string): Promise<() => Promise<void>> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let wait = 5; ; wait = Math.min(wait * 2, 100)) {
    try {
      const handle = await open(path, 'wx');
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return () => rm(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const held = await stat(path).catch(() => undefined);
    if (held && Date.now() - held.mtimeMs > STALE_LOCK_MS) {
      await rm(path, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new Error(`the suppression list is locked by another process (${path}); if no smarthost command is running, remove that file`);
    }
    await new Promise((r) => setTimeout(r, wait));
  }
}
