/**
 * Whether each upstream is reachable, judged from delivery attempts: an attempt whose every recipient failed
 * at the connection level (4.4.x: refused, timed out, lost) counts against the upstream; any other answer
 * (delivered, or a reply from the upstream itself) shows it is there. After `downAfter` failures in a row
 * the upstream is down until it answers again.
 *
 * With several instances (Redis), a mirror shares the down and up transitions (src/state/redis-health.ts):
 * it takes over other instances' marks with adopt(), and while it can reach Redis, a down upstream is probed
 * only by the instance that holds the shared probe lease (grantProbe), so one instance probes at a time.
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
  /** Shared probes: until when this instance holds the lease to probe it. */
  probeLeaseUntil?: number;
  /** Shared probes: a delivery wanted to probe it without a lease; the mirror asks for one. */
  probeWanted?: boolean;
}

/** A down upstream as instances share it. */
export interface SharedDownMark {
  downSince: number;
  probeAt: number;
  lastError?: string | undefined;
}

/** Told of every transition, to share it; called synchronously, so it must not throw. */
export interface HealthMirror {
  /** Went down, or a probe failed (probeAt moved on). */
  marked(state: Readonly<UpstreamState>): void;
  /** Answered again after being down. */
  cleared(name: string): void;
}

export class UpstreamHealth {
  readonly #states = new Map<string, UpstreamState>();
  mirror: HealthMirror | undefined;
  /** Set by the mirror while it reaches the shared state: probes then need a lease. */
  sharedProbes = false;

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
      delete s.probeLeaseUntil;
      this.mirror?.marked({ ...s });
    }
  }

  /**
   * Whether a delivery that could go elsewhere should go here: yes while up; while down only once its backoff
   * has passed and no probe is under way (and, with shared probes, this instance holds the lease). Claim the
   * probe with attempt() when the delivery is sent; the only thing this changes is the wish for a lease.
   */
  usable(name: string, now: number): boolean {
    const s = this.#states.get(name);
    if (!s || s.up) return true;
    if (s.probing || now < (s.probeAt ?? 0)) return false;
    if (!this.sharedProbes || (s.probeLeaseUntil !== undefined && now < s.probeLeaseUntil)) return true;
    // Only a flag for the mirror, which asks for the lease; this delivery goes elsewhere meanwhile.
    s.probeWanted = true;
    return false;
  }

  /** A delivery is sent to the upstream now; if it is down, this delivery is its probe. */
  attempt(name: string): void {
    const s = this.#states.get(name);
    if (s && !s.up) {
      s.probing = true;
      delete s.probeLeaseUntil;
    }
  }

  /**
   * A delivery ended in smarthost's own failure (the message could not be read): nothing learnt about the
   * upstream. If the delivery was its probe, the probe is given up, so the next delivery probes instead.
   */
  unjudged(name: string): void {
    const s = this.#states.get(name);
    if (s && !s.up) delete s.probing;
  }

  answered(name: string): void {
    const s = this.#state(name);
    const wasDown = !s.up;
    this.#up(s);
    if (wasDown) this.mirror?.cleared(name);
  }

  /**
   * Takes over what the instances share: a down mark (possibly set by another instance) or none (it answered
   * another instance, or the mark expired). Answers the transition, if any; transitions taken over are not
   * mirrored back.
   */
  adopt(name: string, mark: SharedDownMark | undefined): 'down' | 'up' | undefined {
    const s = this.#state(name);
    if (!mark) {
      if (s.up) return undefined;
      this.#up(s);
      return 'up';
    }
    if (s.up) {
      s.up = false;
      s.consecutiveFailures = Math.max(s.consecutiveFailures, this.downAfter);
      s.downSince = mark.downSince;
      s.probeAt = mark.probeAt;
      if (mark.lastError !== undefined) s.lastError = mark.lastError;
      return 'down';
    }
    // Another instance's failed probe pushes the next one back for everybody.
    if (!s.probing) s.probeAt = Math.max(s.probeAt ?? 0, mark.probeAt);
    return undefined;
  }

  /** Down upstreams whose probe is due and wanted here but not leased: the mirror asks for their lease. */
  probesWanted(now: number): string[] {
    return [...this.#states.values()].filter((s) => !s.up && s.probeWanted && !s.probing && now >= (s.probeAt ?? 0)).map((s) => s.name);
  }

  /** This instance holds the shared lease to probe `name` until `until`. */
  grantProbe(name: string, until: number): void {
    const s = this.#states.get(name);
    if (!s || s.up) return;
    s.probeLeaseUntil = until;
    delete s.probeWanted;
  }

  #up(s: UpstreamState): void {
    s.up = true;
    s.consecutiveFailures = 0;
    delete s.downSince;
    delete s.lastError;
    delete s.probeAt;
    delete s.probing;
    delete s.probeLeaseUntil;
    delete s.probeWanted;
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
