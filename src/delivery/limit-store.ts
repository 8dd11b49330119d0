import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Low } from 'lowdb';
import { DurableJsonFile } from '../state/durable-json-file.js';
import type { LimitsConfig, LimiterSnapshot } from './limits.js';
import { LocalSendLimits, SendLimiter } from './limits.js';
import { configuredLimits, type LimitsSetting } from './limits-config.js';

/**
 * Send-limit counters kept with lowdb in <state.dir>/limits.json, so a restart does not hand out a fresh
 * budget: { "savedAt": ISO time, "limits": { upstream: LimitsConfig }, "snapshot": LimiterSnapshot }.
 * The daemon owns the file: it writes it at most every `intervalMs` when counters changed, and at stop.
 * The limits in force are saved with the counters, so `smarthost limits show` needs only the file.
 */
export const LIMITS_FILE = 'limits.json';

export interface LimitsFileData {
  savedAt: string;
  limits: Record<string, LimitsConfig>;
  snapshot: LimiterSnapshot;
}

export function limitsFile(stateDir: string): string {
  return join(resolve(stateDir), LIMITS_FILE);
}

/**
 * The file exists but cannot be read; the daemon refuses to start on it (and `limits show` says so). Starting
 * with empty counters would hand out a fresh budget, and the provider's own limits (10,000 recipients a day at
 * Microsoft 365) could be exceeded, so moving the file aside is left to an administrator.
 */
export class LimitsFileError extends Error {
  constructor(
    readonly file: string,
    detail: string,
  ) {
    super(`cannot use the send-limit counters ${file}: ${detail}; move it aside to start with empty counters (what was sent in the current limit windows is then not counted)`);
    this.name = 'LimitsFileError';
  }
}

/** Reads the file; undefined when there is none yet. Throws LimitsFileError for one that cannot be read. */
export async function readLimitsFile(file: string): Promise<LimitsFileData | undefined> {
  const db = new Low<LimitsFileData | null>(new DurableJsonFile<LimitsFileData | null>(file), null);
  try {
    await db.read();
  } catch (err) {
    throw new LimitsFileError(file, (err as Error).message);
  }
  const data = db.data;
  if (!data || typeof data !== 'object' || !data.snapshot || data.snapshot.version !== 1) return undefined;
  return data;
}

/** A limiter restored from the file: for `limits show`, with the limits that were in force when it was saved. */
export function limiterFromFile(data: LimitsFileData): SendLimiter {
  const limiter = new SendLimiter(new Map(Object.entries(data.limits)));
  limiter.restore(data.snapshot);
  return limiter;
}

/** The embedded counters (no Redis): this process's SendLimiter, saved to the file. */
export class LimitStore extends LocalSendLimits {
  readonly #db: Low<LimitsFileData | null>;
  #savedVersion = -1;
  #timer: NodeJS.Timeout | undefined;
  #writing: Promise<void> = Promise.resolve();

  constructor(
    readonly file: string,
    limiter: SendLimiter,
    private readonly limits: ReadonlyMap<string, LimitsConfig>,
    private readonly now: () => number = Date.now,
  ) {
    super(limiter);
    this.#db = new Low<LimitsFileData | null>(new DurableJsonFile<LimitsFileData | null>(file), null);
  }

  /** Takes over the counters of the last run (if any), then saves every intervalMs while they change. */
  async open(intervalMs = 5000): Promise<void> {
    await mkdir(resolve(this.file, '..'), { recursive: true });
    const saved = await readLimitsFile(this.file);
    if (saved) this.limiter.restore(saved.snapshot);
    this.#savedVersion = this.limiter.version;
    this.#timer = setInterval(() => void this.save().catch(() => {}), intervalMs);
    this.#timer.unref();
  }

  /** Writes the counters if they changed since the last write (writes never overlap). */
  save(): Promise<void> {
    this.#writing = this.#writing.catch(() => {}).then(async () => {
      const version = this.limiter.version;
      if (version === this.#savedVersion) return;
      this.#db.data = { savedAt: new Date(this.now()).toISOString(), limits: Object.fromEntries(this.limits), snapshot: this.limiter.snapshot(this.now()) };
      await this.#db.write();
      this.#savedVersion = version;
    });
    return this.#writing;
  }

  /** A reset is written at once: `limits show` must not show counters an administrator cleared. */
  override async reset(upstream?: string): Promise<number> {
    const cleared = this.limiter.reset(upstream);
    await this.save();
    return cleared;
  }

  /** Stops the timer and writes the last counters. */
  override async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.save();
  }
}

/** The daemon's limiter: the configured limits (presets included), with the counters of the last run. */
export async function openLimitStore(
  upstreams: Readonly<Record<string, { type: string; limits?: LimitsSetting | undefined }>>,
  stateDir: string,
  now: () => number,
): Promise<LimitStore> {
  const limits = configuredLimits(upstreams);
  const store = new LimitStore(limitsFile(stateDir), new SendLimiter(limits), limits, now);
  await store.open();
  return store;
}
