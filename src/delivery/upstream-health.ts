/**
 * Whether each upstream is reachable, judged from delivery attempts: an attempt whose every recipient failed
 * at the connection level (4.4.x: refused, timed out, lost) counts against the upstream; any other answer
 * (delivered, or a reply from the upstream itself) shows it is there. After `downAfter` failures in a row
 * the upstream is down until it answers again.
 */
export interface UpstreamState {
  name: string;
  up: boolean;
  consecutiveFailures: number;
  /** Epoch ms of the failure that made it count as down. */
  downSince?: number;
  /** While down: when one delivery may probe it again (each failed probe restarts the backoff). */
  probeAt?: number;
  /** While down: a probe delivery is under way, so no other delivery is sent to it. */
  probing?: boolean;
  lastError?: string;
}

export class UpstreamHealth {
  readonly #states = new Map<string, UpstreamState>();

  constructor(
    names: Iterable<string>,
    private readonly downAfter = 3,
    /** How long a down upstream is skipped by routes with a fallback before one delivery probes it. */
    private readonly backoffMs = 60_000,
  ) {
    for (const name of names) this.#states.set(name, { name, up: true, consecutiveFailures: 0 });
  }

  /** A connection-level failure: the enhanced code of every recipient's reply was 4.4.x. */
  static isConnectionFailure(enhancedCodes: readonly string[]): boolean {
    return enhancedCodes.length > 0 && enhancedCodes.every((c) => c.startsWith('4.4.'));
  }

  failed(name: string, now: number, error: string): void {
    const s = this.#state(name);
    s.consecutiveFailures++;
    s.lastError = error;
    if (s.up && s.consecutiveFailures >= this.downAfter) {
      s.up = false;
      s.downSince = now;
    }
    if (!s.up) {
      s.probeAt = now + this.backoffMs;
      delete s.probing;
    }
  }

  /**
   * Whether a delivery that could go elsewhere should go here: yes while up; while down only once its backoff
   * has passed and no probe is under way. Pure: claim the probe with attempt() when the delivery is sent.
   */
  usable(name: string, now: number): boolean {
    const s = this.#states.get(name);
    return !s || s.up || (!s.probing && now >= (s.probeAt ?? 0));
  }

  /** A delivery is sent to the upstream now; if it is down, this delivery is its probe. */
  attempt(name: string): void {
    const s = this.#states.get(name);
    if (s && !s.up) s.probing = true;
  }

  answered(name: string): void {
    const s = this.#state(name);
    s.up = true;
    s.consecutiveFailures = 0;
    delete s.downSince;
    delete s.lastError;
    delete s.probeAt;
    delete s.probing;
  }

  states(): UpstreamState[] {
    return [...this.#states.values()].map((s) => ({ ...s }));
  }

  /** Upstreams down for longer than maxMs at `now`. */
  downLongerThan(maxMs: number, now: number): UpstreamState[] {
    return this.states().filter((s) => !s.up && s.downSince !== undefined && now - s.downSince > maxMs);
  }

  #state(name: string): UpstreamState {
    let s = this.#states.get(name);
    if (!s) this.#states.set(name, (s = { name, up: true, consecutiveFailures: 0 }));
    return s;
  }
}
