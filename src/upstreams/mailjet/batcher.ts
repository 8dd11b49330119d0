/**
 * Collects concurrent deliveries into one Send API call. The Upstream interface hands over one message per
 * deliver() call; the scheduler runs several at once, so calls that arrive within a short window (or until
 * the call is full) share one HTTP request, and each caller gets back its own slice of the answer.
 */
export interface BatchLimits {
  /** Slots per call (Mailjet: messages per Send API call). */
  maxItems: number;
  /** Bytes per call; an entry bigger than this alone still goes, alone. */
  maxBytes: number;
  /** How long the first entry waits for company; 0 sends at the next turn of the event loop. */
  windowMs: number;
}

interface Entry<T, R> {
  item: T;
  slots: number;
  bytes: number;
  resolve(result: R): void;
  reject(err: unknown): void;
}

export class Batcher<T, R> {
  #pending: Entry<T, R>[] = [];
  #slots = 0;
  #bytes = 0;
  #timer: NodeJS.Timeout | undefined;
  readonly #inFlight = new Set<Promise<void>>();

  /** `send` answers one result per item, in order; if it throws, every item of that call gets the error. */
  constructor(
    private readonly limits: BatchLimits,
    private readonly send: (items: T[]) => Promise<R[]>,
  ) {}

  /** Queues one entry taking `slots` slots and `bytes` bytes of a call; resolves with its own result. */
  add(item: T, slots: number, bytes: number): Promise<R> {
    if (this.#pending.length > 0 && (this.#slots + slots > this.limits.maxItems || this.#bytes + bytes > this.limits.maxBytes)) this.flush();
    return new Promise<R>((resolve, reject) => {
      this.#pending.push({ item, slots, bytes, resolve, reject });
      this.#slots += slots;
      this.#bytes += bytes;
      if (this.#slots >= this.limits.maxItems || this.#bytes >= this.limits.maxBytes) this.flush();
      else this.#timer ??= setTimeout(() => this.flush(), this.limits.windowMs);
    });
  }

  /** Sends what is waiting now. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#pending;
    this.#pending = [];
    this.#slots = 0;
    this.#bytes = 0;
    if (batch.length === 0) return;
    const call = this.#call(batch);
    this.#inFlight.add(call);
    void call.finally(() => this.#inFlight.delete(call));
  }

  /** Sends what is waiting and resolves once every call has been answered. */
  async drain(): Promise<void> {
    this.flush();
    await Promise.all([...this.#inFlight]);
  }

  async #call(batch: Entry<T, R>[]): Promise<void> {
    try {
      const results = await this.send(batch.map((e) => e.item));
      if (results.length !== batch.length) throw new Error(`batch answered ${results.length} results for ${batch.length} entries`);
      batch.forEach((e, i) => e.resolve(results[i]!));
    } catch (err) {
      for (const e of batch) e.reject(err);
    }
  }
}
