/**
 * Counts failed AUTH attempts per client address in a sliding window, so password guessing is cut
 * off after a few tries. Bounded: the oldest addresses are forgotten first when the table is full.
 */
export class AuthFailureGuard {
  readonly #failures = new Map<string, number[]>();

  constructor(
    private readonly maxFailures: number,
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
    private readonly maxTracked = 10_000,
  ) {}

  isBlocked(address: string): boolean {
    return this.#recent(address).length >= this.maxFailures;
  }

  recordFailure(address: string): void {
    const recent = this.#recent(address);
    recent.push(this.now());
    this.#failures.delete(address);
    this.#failures.set(address, recent);
    if (this.#failures.size > this.maxTracked) this.#failures.delete(this.#failures.keys().next().value!);
  }

  /** Takes back the latest failure, for an attempt counted before it was checked that then succeeded. */
  forgive(address: string): void {
    const recent = this.#recent(address);
    recent.pop();
    if (recent.length === 0) this.#failures.delete(address);
    else this.#failures.set(address, recent);
  }

  #recent(address: string): number[] {
    const since = this.now() - this.windowMs;
    return (this.#failures.get(address) ?? []).filter((t) => t > since);
  }
}
