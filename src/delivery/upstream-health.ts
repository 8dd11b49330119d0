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
  lastError?: string;
}

export class UpstreamHealth {
  readonly #states = new Map<string, UpstreamState>();

  constructor(
    names: Iterable<string>,
    private readonly downAfter = 3,
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
  }

  answered(name: string): void {
    const s = this.#state(name);
    s.up = true;
    s.consecutiveFailures = 0;
    delete s.downSince;
    delete s.lastError;
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
